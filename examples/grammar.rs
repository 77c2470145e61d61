//! Structured output in an engine loop: every request follows its own grammar — a JSON schema,
//! a Lark grammar, a regex, or none — compiled by [llguidance](https://crates.io/crates/llguidance)
//! against the real Qwen2.5 tokenizer. Each step, every request's matcher writes its allowed-token
//! mask into its row of one `[rows, ceil(vocab / 32)]` `u32` buffer (llguidance's own layout, no
//! conversion), the pipeline's `TokenBitmask` takes the buffer with the rows that have a grammar,
//! and one fused `apply` runs the mask with the requests' `LogitBias`, `Temperature` and `MinP`.
//! The engine samples, commits each token to its request's matcher, and a request leaves the
//! batch when its matcher stops (or, without a grammar, at its token budget).
//!
//! The "model" is a seeded random number generator: whatever the logits, the grammar decides.
//! Every request is also given a logit bias of +10 000 on `!`, a token none of the grammars ever
//! allows: the requests without a grammar write nothing else, those with one never write it.
//!
//! Run (the tokenizer comes from `bash scripts/setup.sh`):
//!
//! ```text
//! cargo run --release --example grammar
//! cargo run --release --features cuda --example grammar -- --cuda   # logits and masks on GPU 0
//! ```
//!
//! On CUDA the logits live on the device and each step's masks go to `TokenBitmask` as one
//! `[rows, words]` device tensor (`set_tensor`) instead of a host slice.
//!
//! Its tests (`cargo test --release --example grammar`, part of `cargo test`) run the same loop
//! and check every output against its grammar, independently of the loop; with the `cuda`
//! feature, one more runs it on the GPU and requires the CPU run's tokens, request for request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use logits_processors::{
    LogitBias, LogitsProcessor, MinP, MoveDirectionality, OutputTokens, PersistentBatch, Pipeline,
    ProcessorConfig, RequestParams, Temperature, TokenBitmask,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Qwen2.5's logits width (the tokenizer's 151,665 tokens, padded by the model).
pub const VOCAB: usize = 151_936;
/// `<|im_end|>`: the end of an assistant turn, the EOS of the instruct models.
pub const EOS: u32 = 151_645;
/// The first of the four ids the fetched (Qwen3) tokenizer adds past Qwen2.5's vocabulary.
const FIRST_QWEN3_ONLY: usize = 151_665;
/// The tokenizer fetched by `scripts/setup.sh`.
pub const TOKENIZER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/qwen2.5/tokenizer.json");

/// The tokenizer, seen by llguidance (its token trie) and by the engine (to decode).
pub struct Qwen {
    /// What llguidance compiles grammars against.
    pub env: TokEnv,
    /// The Hugging Face tokenizer, to decode outputs.
    pub tokenizer: tokenizers::Tokenizer,
}

/// llguidance's view of a Hugging Face tokenizer: the bytes of every token (its trie) and a
/// canonical tokenizer for the strings a grammar forces.
struct HfEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for HfEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        match self.tokenizer.encode_fast(text.as_ref(), false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

impl Qwen {
    /// Loads `tokenizer.json` at `path`: the token bytes (llguidance reads them from the JSON),
    /// padded to [`VOCAB`]; the four ids Qwen2.5 never trained are left out of the trie, so no
    /// grammar allows them.
    ///
    /// # Errors
    ///
    /// The file is missing (run `bash scripts/setup.sh`) or not a byte-level tokenizer.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            bail!(
                "tokenizer fixture {} is missing: run `bash scripts/setup.sh`",
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)?;
        if words.len() > VOCAB {
            bail!(
                "{}: {} tokens, more than {VOCAB}",
                path.display(),
                words.len()
            );
        }
        words.resize(VOCAB, Vec::new());
        words[FIRST_QWEN3_ONLY..].iter_mut().for_each(Vec::clear);
        let trie = TokTrie::from(&TokRxInfo::new(VOCAB as u32, EOS), &words);
        let tokenizer = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let env: TokEnv = Arc::new(HfEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        Ok(Self { env, tokenizer })
    }

    /// A grammar compiler for this tokenizer (compile once, then one parser per request).
    ///
    /// # Errors
    ///
    /// llguidance's.
    pub fn factory(&self) -> anyhow::Result<ParserFactory> {
        let mut factory = ParserFactory::new_simple(&self.env)?;
        factory.quiet();
        Ok(factory)
    }

    /// The id of a token spelled `text`.
    pub fn id(&self, text: &str) -> anyhow::Result<u32> {
        self.tokenizer
            .token_to_id(text)
            .with_context(|| format!("no token {text:?}"))
    }
}

/// A request as the engine receives it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The engine's id.
    pub id: u64,
    /// The step at which it arrives.
    pub arrives_at: usize,
    /// The grammar its output must follow, if any.
    pub grammar: Option<TopLevelGrammar>,
    /// Its sampling parameters.
    pub params: RequestParams,
    /// Its output budget.
    pub max_tokens: usize,
}

/// A finished request.
#[derive(Debug)]
pub struct Finished {
    /// Its output tokens.
    pub tokens: Vec<u32>,
    /// The tokens decoded, special tokens skipped.
    pub text: String,
    /// Why its matcher stopped (`NotStopped` for a request without a grammar).
    pub stop: StopReason,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each request's output.
    pub outputs: BTreeMap<u64, Finished>,
    /// Steps run.
    pub steps: usize,
    /// Rows masked, over all steps.
    pub masked_rows: usize,
    /// One-way moves the batch reported (the masks follow them: they are written by row, after
    /// the step's update).
    pub moves: usize,
}

/// The "model": logits `[rows, VOCAB]`, uniform in [0, 8), from a seeded generator.
struct RandomModel(StdRng);

impl RandomModel {
    /// The same draws whatever the device: made on the host, then moved.
    fn forward(&mut self, rows: usize, device: &Device) -> candle_core::Result<Tensor> {
        let logits: Vec<f32> = (0..rows * VOCAB)
            .map(|_| self.0.random_range(0.0..8.0))
            .collect();
        Tensor::from_vec(logits, (rows, VOCAB), &Device::Cpu)?.to_device(device)
    }
}

/// Draws a token from the softmax of `row` (−inf: never).
fn sample(row: &[f32], rng: &mut StdRng) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let mut u = rng.random_range(0.0..total);
    let mut last = 0;
    for (token, &x) in row.iter().enumerate() {
        if x == f32::NEG_INFINITY {
            continue;
        }
        let w = (x - max).exp();
        if u < w {
            return token as u32;
        }
        u -= w;
        last = token as u32;
    }
    last
}

/// A running request's engine-side state.
struct Running {
    output: OutputTokens,
    matcher: Option<Matcher>,
    max_tokens: usize,
}

/// Serves `requests`, at most `max_batch_size` at once, sampling with `seed`, the logits (and,
/// on CUDA, the masks) on `device`.
///
/// # Errors
///
/// A grammar that does not compile, a matcher error, or the library's errors.
pub fn run(
    qwen: &Qwen,
    requests: Vec<Request>,
    max_batch_size: usize,
    seed: u64,
    device: &Device,
) -> anyhow::Result<Outcome> {
    let config = ProcessorConfig::builder()
        .max_batch_size(max_batch_size)
        .vocab_size(VOCAB)
        .device(device.clone())
        .build()?;
    let mut processors = Pipeline::builder(&config)
        .with(TokenBitmask::new(&config)?) // the grammars' masks, handed over each step
        .with(LogitBias::new(&config)?) // logit_bias
        .with(Temperature::new(&config)?) // temperature
        .with(MinP::new(&config)?) // min_p
        .build()?;
    let words_per_row = VOCAB.div_ceil(32);
    // The step's masks, llguidance's layout: row r's words at [r * words_per_row..].
    let mut mask = vec![0u32; max_batch_size * words_per_row];
    let mut masked_rows = Vec::with_capacity(max_batch_size);
    let factory = qwen.factory()?;
    let mut model = RandomModel(StdRng::seed_from_u64(seed));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut batch = PersistentBatch::<u64>::new(max_batch_size);
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut waiting: VecDeque<Request> = requests.into();
    waiting.make_contiguous().sort_by_key(|r| r.arrives_at);
    let mut out = Outcome::default();
    let mut sampled = Vec::with_capacity(max_batch_size);

    while !waiting.is_empty() || !batch.is_empty() {
        // Admit the requests that have arrived, while there is room; compile their grammars.
        while waiting.front().is_some_and(|r| r.arrives_at <= out.steps) && !batch.is_full() {
            let Some(req) = waiting.pop_front() else {
                break;
            };
            processors.validate_params(&req.params)?;
            let matcher = match req.grammar {
                Some(grammar) => {
                    let matcher = Matcher::new(factory.create_parser(grammar));
                    if let Some(e) = matcher.get_error() {
                        bail!("request {}: grammar: {e}", req.id);
                    }
                    Some(matcher)
                }
                None => None,
            };
            let output = OutputTokens::new();
            running.insert(
                req.id,
                Running {
                    output: output.clone(),
                    matcher,
                    max_tokens: req.max_tokens,
                },
            );
            batch
                .add(req.id, Arc::new(req.params))?
                .with_output_tokens(output);
        }

        batch.step_with(|update| {
            for m in update.iter().flat_map(|u| &u.moved) {
                out.moves += matches!(m.direction, MoveDirectionality::Unidirectional) as usize;
            }
            processors.update_state(update)
        })?;
        if batch.is_empty() {
            out.steps += 1; // idle until the next arrival
            continue;
        }

        // Each grammar writes its row of the mask; rows without one are left alone.
        masked_rows.clear();
        for (row, id) in batch.iter() {
            if let Some(matcher) = running.get_mut(id).and_then(|r| r.matcher.as_mut()) {
                let allowed = matcher.compute_mask()?;
                // llguidance allocates room for one token past the vocabulary: a spare word
                // when the vocabulary is a multiple of 32. The first words_per_row are the mask.
                mask[row * words_per_row..(row + 1) * words_per_row]
                    .copy_from_slice(&allowed.as_slice()[..words_per_row]);
                masked_rows.push(row);
            }
        }
        let rows = batch.len();
        let bitmask = processors
            .token_bitmask_mut()
            .context("the pipeline has a TokenBitmask stage")?;
        if device.is_cuda() {
            // One upload of the step's words, applied on the device.
            let words =
                Tensor::from_slice(&mask[..rows * words_per_row], (rows, words_per_row), device)?;
            bitmask.set_tensor(&words, &masked_rows)?;
        } else {
            bitmask.set_host(&mask[..rows * words_per_row], &masked_rows)?;
        }
        out.masked_rows += masked_rows.len();

        let logits = model.forward(rows, device)?;
        processors.apply(&logits)?; // in place: mask, bias, temperature, min-p in one pass
        sampled.clear();
        for row in logits.to_vec2::<f32>()? {
            sampled.push(sample(&row, &mut rng));
        }
        processors.append_sampled(&sampled)?; // the requests' outputs grow by one token

        // Commit each token to its matcher; finished requests leave the batch.
        for (row, &token) in sampled.iter().enumerate() {
            let id = *batch.id_at(row).context("rows 0..len hold requests")?;
            let r = running.get_mut(&id).context("a running request")?;
            let done = match r.matcher.as_mut() {
                Some(matcher) => {
                    matcher
                        .consume_token(token)
                        .with_context(|| format!("request {id}: token {token}"))?;
                    matcher.is_stopped() || r.output.len() >= r.max_tokens
                }
                None => token == EOS || r.output.len() >= r.max_tokens,
            };
            if done {
                batch.remove(&id)?;
                let r = running.remove(&id).context("a running request")?;
                let tokens = r.output.to_vec();
                let text = qwen
                    .tokenizer
                    .decode(&tokens, true)
                    .map_err(|e| anyhow::anyhow!("request {id}: decoding: {e}"))?;
                let stop = r
                    .matcher
                    .map_or(StopReason::NotStopped, |m| m.stop_reason());
                out.outputs.insert(id, Finished { tokens, text, stop });
            }
        }
        out.steps += 1;
    }
    Ok(out)
}

/// A JSON schema: a name, an age and up to three colour tags, no whitespace between tokens.
pub const PERSON_SCHEMA: &str = r#"{
    "type": "object",
    "properties": {
        "name": { "type": "string", "pattern": "^[a-z]{1,8}$" },
        "age": { "type": "integer", "minimum": 0, "maximum": 120 },
        "tags": {
            "type": "array",
            "items": { "enum": ["red", "green", "blue"] },
            "minItems": 1,
            "maxItems": 3
        }
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": false,
    "x-guidance": { "whitespace_flexible": false }
}"#;

/// A Lark grammar: one to three tool calls separated by `; `.
pub const CALLS_LARK: &str = r#"
start: call ("; " call){0,2}
call: VERB "(" NUM ", " NUM ")"
VERB: "move" | "jump" | "turn"
NUM: /-?[0-9]{1,3}/
"#;

/// A regex: an ISO date.
pub const DATE_REGEX: &str = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])";

/// The grammar of request `id`: JSON, Lark, regex, or none, in turn.
pub fn grammar_of(id: u64) -> Option<TopLevelGrammar> {
    match id % 4 {
        0 => Some(TopLevelGrammar::from_json_schema(
            serde_json::from_str(PERSON_SCHEMA).expect("the schema is JSON"),
        )),
        1 => Some(TopLevelGrammar::from_lark(CALLS_LARK.to_string())),
        2 => Some(TopLevelGrammar::from_regex(DATE_REGEX)),
        _ => None,
    }
}

/// `n` requests arriving over time, each with its grammar (or none), a logit bias of +10 000 on
/// `banned` (a token no grammar allows), a temperature and a min-p.
pub fn demo_requests(n: u64, banned: u32) -> Vec<Request> {
    (0..n)
        .map(|id| Request {
            id,
            arrives_at: id as usize * 3,
            grammar: grammar_of(id),
            params: RequestParams::new()
                .with_logit_bias([(banned, 10_000.0)])
                .with_temperature(0.7 + 0.1 * (id % 3) as f32)
                .with_min_p(0.05),
            max_tokens: if id % 4 == 3 { 5 } else { 200 },
        })
        .collect()
}

#[cfg_attr(test, allow(dead_code))] // the test harness replaces `main` under `cargo test`
fn main() -> anyhow::Result<()> {
    let device = if std::env::args().any(|a| a == "--cuda") {
        Device::new_cuda(0)
            .context("--cuda: build with `--features cuda` on a machine with a GPU")?
    } else {
        Device::Cpu
    };
    let qwen = Qwen::load(TOKENIZER)?;
    let banned = qwen.id("!")?;
    let out = run(&qwen, demo_requests(8, banned), 4, 7, &device)?;
    for (id, f) in &out.outputs {
        println!(
            "request {id} ({} tokens, {:?}): {}",
            f.tokens.len(),
            f.stop,
            f.text
        );
    }
    println!(
        "{} requests in {} steps, {} rows masked, {} moves",
        out.outputs.len(),
        out.steps,
        out.masked_rows,
        out.moves
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The loop against the real tokenizer (a missing one fails the test: run
    //! `bash scripts/setup.sh`): every output is checked against its grammar by means that do
    //! not share the loop's code — `serde_json` and hand checks for the schema, the `regex`
    //! crate for the Lark grammar and the regex, and a fresh matcher replaying the tokens.

    use super::*;

    fn qwen() -> Qwen {
        // `LP_TOKENIZER` points a test binary run from another checkout at its fixture.
        let path = std::env::var("LP_TOKENIZER").unwrap_or_else(|_| TOKENIZER.to_string());
        Qwen::load(path).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn full_match(pattern: &str, text: &str) -> bool {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .unwrap()
            .is_match(text)
    }

    /// `text` is an instance of [`PERSON_SCHEMA`].
    fn check_person(text: &str) {
        let v: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let obj = v.as_object().unwrap_or_else(|| panic!("{text:?}"));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["age", "name", "tags"], "{text:?}");
        let name = obj["name"].as_str().unwrap_or_else(|| panic!("{text:?}"));
        assert!(full_match("[a-z]{1,8}", name), "{text:?}");
        let age = obj["age"].as_u64().unwrap_or_else(|| panic!("{text:?}"));
        assert!(age <= 120, "{text:?}");
        let tags = obj["tags"].as_array().unwrap_or_else(|| panic!("{text:?}"));
        assert!((1..=3).contains(&tags.len()), "{text:?}");
        for tag in tags {
            assert!(
                ["red", "green", "blue"].contains(&tag.as_str().unwrap_or_default()),
                "{text:?}"
            );
        }
        assert!(!text.contains(char::is_whitespace), "{text:?}");
    }

    #[test]
    fn every_output_follows_its_grammar_and_masked_tokens_are_never_sampled() {
        let qwen = qwen();
        let banned = qwen.id("!").unwrap();
        let requests = demo_requests(12, banned);
        let out = run(&qwen, requests.clone(), 4, 2024, &Device::Cpu).unwrap();
        assert_eq!(out.outputs.len(), requests.len());
        assert!(out.moves > 0, "rows moved while masks were in use: {out:?}");
        let factory = qwen.factory().unwrap();

        for req in &requests {
            let f = &out.outputs[&req.id];
            assert!(!f.tokens.is_empty(), "request {}", req.id);
            let Some(grammar) = &req.grammar else {
                // No mask: the +10 000 bias wins every step.
                assert!(
                    f.tokens.iter().all(|&t| t == banned),
                    "request {}: {f:?}",
                    req.id
                );
                assert_eq!(f.tokens.len(), req.max_tokens);
                continue;
            };
            // The grammar stopped the request, not its budget.
            assert!(
                matches!(f.stop, StopReason::EndOfSentence | StopReason::NoExtension),
                "request {}: {f:?}",
                req.id
            );
            assert!(f.tokens.len() < req.max_tokens, "request {}", req.id);
            assert!(!f.tokens.contains(&banned), "request {}: {f:?}", req.id);
            // A fresh matcher allows every token, step by step, and ends where the loop did.
            let mut m = Matcher::new(factory.create_parser(grammar.clone()));
            for &t in &f.tokens {
                let allowed = m.compute_mask().unwrap();
                assert!(allowed.is_allowed(t), "request {}: token {t}", req.id);
                assert!(!allowed.is_allowed(banned), "request {}", req.id);
                m.consume_token(t).unwrap();
            }
            assert!(m.is_stopped(), "request {}", req.id);

            let text = f.text.as_str();
            match req.id % 4 {
                0 => check_person(text),
                1 => {
                    let call = r"(move|jump|turn)\(-?[0-9]{1,3}, -?[0-9]{1,3}\)";
                    assert!(
                        full_match(&format!("{call}(; {call}){{0,2}}"), text),
                        "{text:?}"
                    );
                }
                2 => assert!(full_match(DATE_REGEX, text), "{text:?}"),
                _ => unreachable!("requests 3, 7, 11 have no grammar"),
            }
        }
    }

    /// The mask the loop hands over is the matcher's, bit for bit, and `apply` leaves exactly
    /// the allowed tokens finite (no bias, temperature or min-p here).
    #[test]
    fn the_pipeline_masks_exactly_the_matchers_disallowed_tokens() {
        let qwen = qwen();
        let factory = qwen.factory().unwrap();
        let config = ProcessorConfig::builder()
            .max_batch_size(2)
            .vocab_size(VOCAB)
            .build()
            .unwrap();
        let mut processors = Pipeline::builder(&config)
            .with(TokenBitmask::new(&config).unwrap())
            .build()
            .unwrap();
        let mut batch = PersistentBatch::<u64>::new(2);
        batch.add(0, Arc::new(RequestParams::new())).unwrap();
        batch.add(1, Arc::new(RequestParams::new())).unwrap();
        processors.update_state(batch.step()).unwrap();

        let mut m = Matcher::new(factory.create_parser(grammar_of(0).unwrap()));
        let prefix = qwen.tokenizer.encode_fast(r#"{"name":""#, false).unwrap();
        m.consume_tokens(prefix.get_ids()).unwrap();
        let allowed = m.compute_mask().unwrap();
        let wpr = VOCAB.div_ceil(32);
        let mut words = vec![0u32; 2 * wpr];
        words[..wpr].copy_from_slice(&allowed.as_slice()[..wpr]);
        processors
            .token_bitmask_mut()
            .unwrap()
            .set_host(&words, &[0])
            .unwrap();
        let logits = RandomModel(StdRng::seed_from_u64(1))
            .forward(2, &Device::Cpu)
            .unwrap();
        processors.apply(&logits).unwrap();
        let rows = logits.to_vec2::<f32>().unwrap();
        let finite = |t: usize| rows[0][t].is_finite();
        assert!((0..VOCAB).all(|t| finite(t) == allowed.is_allowed(t as u32)));
        // After `"name":"`, the pattern [a-z]{1,8} allows tokens of up to 8 lowercase letters
        // (and those that go on to close the string), nothing that starts otherwise.
        let trie = qwen.env.tok_trie();
        for t in 0..VOCAB {
            let bytes = trie.token(t as u32);
            let lower = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_lowercase);
            if lower(bytes) && bytes.len() <= 8 {
                assert!(finite(t), "token {t} {bytes:?}");
            }
            if finite(t) {
                assert!(lower(&bytes[..1]), "token {t} {bytes:?}");
            }
        }
        assert!(
            rows[1].iter().all(|x| x.is_finite()),
            "row 1 has no grammar"
        );
    }

    /// On the GPU (logits on the device, each step's masks one device tensor), the loop
    /// samples the CPU run's tokens, request for request: `apply` gives the same bits there.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_loop_on_cuda_samples_the_cpu_runs_tokens() {
        let qwen = qwen();
        let banned = qwen.id("!").unwrap();
        let requests = demo_requests(12, banned);
        let cpu = run(&qwen, requests.clone(), 4, 2024, &Device::Cpu).unwrap();
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cuda = run(&qwen, requests, 4, 2024, &gpu).unwrap();
        assert_eq!(cuda.steps, cpu.steps);
        assert_eq!(cuda.masked_rows, cpu.masked_rows);
        assert!(cuda.masked_rows > 0 && cuda.moves > 0, "{cuda:?}");
        assert_eq!(cuda.outputs.len(), cpu.outputs.len());
        for (id, f) in &cpu.outputs {
            assert_eq!(cuda.outputs[id].tokens, f.tokens, "request {id}");
        }
    }
}
