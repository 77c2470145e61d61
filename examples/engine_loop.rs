//! A continuous-batching engine loop on the CPU, over a toy "model" whose next-token logits
//! depend only on a request's last token: requests arrive over time with their own sampling
//! parameters, join a `PersistentBatch`, are reordered, decoded greedily through a `Pipeline`,
//! and leave when they emit EOS or reach their token budget.
//!
//! Run: `cargo run --release --example engine_loop`. Its tests (`cargo test --example engine_loop`,
//! part of `cargo test`) run the same loop and check every request's tokens against decoding it
//! alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use logits_processors::{
    BatchUpdate, ForceToken, LogitBias, LogitsProcessor, MinTokens, MoveDirectionality,
    OutputTokens, Penalties, PersistentBatch, Pipeline, ProcessorConfig, RequestParams, Result,
};

/// The toy vocabulary size and its end-of-sequence token.
pub const VOCAB: usize = 32;
/// End of sequence.
pub const EOS: u32 = 0;

/// A request as the engine receives it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The engine's id.
    pub id: u64,
    /// The step at which it arrives.
    pub arrives_at: usize,
    /// Its prompt (never empty).
    pub prompt: Vec<u32>,
    /// Its sampling parameters.
    pub params: RequestParams,
    /// Its output budget.
    pub max_tokens: usize,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each request's output tokens.
    pub outputs: BTreeMap<u64, Vec<u32>>,
    /// Steps run, and the moves and swaps the batch reported.
    pub steps: usize,
    /// One-way moves reported.
    pub moves: usize,
    /// Swaps reported.
    pub swaps: usize,
}

impl Outcome {
    fn count(&mut self, update: Option<&BatchUpdate>) {
        for m in update.iter().flat_map(|u| &u.moved) {
            match m.direction {
                MoveDirectionality::Unidirectional => self.moves += 1,
                MoveDirectionality::Swap => self.swaps += 1,
            }
        }
    }
}

/// The model: logits `[batch, VOCAB]` from each row's last token (a fixed table lookup).
struct ToyModel(Tensor);

impl ToyModel {
    fn new() -> Result<Self> {
        let table: Vec<f32> = (0..VOCAB * VOCAB)
            .map(|i| ((i * 7 + i / VOCAB * 13) % 17) as f32 / 4.0)
            .collect();
        Ok(Self(Tensor::from_vec(table, (VOCAB, VOCAB), &Device::Cpu)?))
    }

    fn forward(&self, last_tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(last_tokens, &Device::Cpu)?;
        Ok(self.0.index_select(&ids, 0)?)
    }
}

/// A running request's engine-side state.
struct Running {
    output: OutputTokens,
    last: u32,
    max_tokens: usize,
}

impl Running {
    fn new(req: &Request, output: OutputTokens) -> Self {
        let last = *req.prompt.last().unwrap_or(&EOS);
        let max_tokens = req.max_tokens;
        Self {
            output,
            last,
            max_tokens,
        }
    }
}

/// Serves `requests` with at most `max_batch_size` running at once.
pub fn run(requests: Vec<Request>, max_batch_size: usize) -> Result<Outcome> {
    let config = ProcessorConfig::builder()
        .max_batch_size(max_batch_size)
        .vocab_size(VOCAB)
        .build()?;
    let mut processors = Pipeline::builder(&config)
        .with(ForceToken::new(&config)?) // allowed_token_ids
        .with(MinTokens::new(&config, [EOS])?) // min_tokens
        .with(LogitBias::new(&config)?) // logit_bias
        .with(Penalties::new(&config)?) // repetition/frequency/presence penalties
        .build()?;
    let model = ToyModel::new()?;
    let mut batch = PersistentBatch::<u64>::new(max_batch_size);
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut waiting: VecDeque<Request> = requests.into();
    waiting.make_contiguous().sort_by_key(|r| r.arrives_at);
    let mut out = Outcome::default();
    let mut last_tokens = Vec::with_capacity(max_batch_size);

    while !waiting.is_empty() || !batch.is_empty() {
        // Admit the requests that have arrived, while there is room.
        while waiting.front().is_some_and(|r| r.arrives_at <= out.steps) && !batch.is_full() {
            let Some(req) = waiting.pop_front() else {
                break;
            };
            if let Err(e) = processors.validate_params(&req.params) {
                // reject bad requests before admitting them
                eprintln!("request {} rejected: {e}", req.id);
                continue;
            }
            let output = OutputTokens::new(); // the engine pushes (and truncates) it
            running.insert(req.id, Running::new(&req, output.clone()));
            batch
                .add(req.id, Arc::new(req.params))? // lowest freed row, or appended
                .with_prompt(req.prompt)
                .with_output_tokens(output);
        }
        // Reorder: requests with output first, new ones last (vLLM puts decodes before
        // prefills); every swap is reported.
        batch.sort_by_key(|id| running[id].output.is_empty())?;

        // The processors follow the batch (an update they refuse is undone); rows 0..len().
        batch.step_with(|update| {
            out.count(update);
            processors.update_state(update) // update is None when nothing changed
        })?;
        if batch.is_empty() {
            out.steps += 1; // idle until the next arrival
            continue;
        }
        last_tokens.clear();
        last_tokens.extend(batch.iter().map(|(_, id)| running[id].last));
        let logits = model.forward(&last_tokens)?;
        processors.apply(&logits)?; // in place
        let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;

        // Append each row's token; finished requests leave the batch.
        for (row, &token) in next.iter().enumerate() {
            let id = *batch.id_at(row).expect("rows 0..len hold requests");
            let r = running.get_mut(&id).expect("a running request");
            r.output.push(token);
            r.last = token;
            if token == EOS || r.output.len() >= r.max_tokens {
                batch.remove(&id)?; // its row is reused or condensed at the next step
                let r = running.remove(&id).expect("a running request");
                out.outputs.insert(id, r.output.to_vec());
            }
        }
        out.steps += 1;
    }
    Ok(out)
}

/// A mix of requests: forced token sets, minimum lengths, biases, penalties.
pub fn demo_requests(n: u64) -> Vec<Request> {
    (0..n)
        .map(|id| {
            let k = id as u32;
            let params = match id % 5 {
                0 => RequestParams::new().with_allowed_token_ids([EOS, 3 + k % 7, 11, 20 + k % 5]),
                1 => RequestParams::new().with_min_tokens(4 + id as usize % 3),
                2 => RequestParams::new().with_logit_bias([(5 + k % 9, 3.0), (EOS, -1.0)]),
                3 => RequestParams::new()
                    .with_repetition_penalty(1.5)
                    .with_frequency_penalty(0.5),
                _ => RequestParams::new()
                    .with_presence_penalty(2.0)
                    .with_min_tokens(2),
            };
            Request {
                id,
                arrives_at: (id as usize * 7) % 13,
                prompt: vec![1 + k % 30, 1 + (k * 11) % 30],
                params,
                max_tokens: 3 + id as usize % 9,
            }
        })
        .collect()
}

#[cfg_attr(test, allow(dead_code))] // the test harness replaces `main` under `cargo test`
fn main() -> Result<()> {
    let out = run(demo_requests(24), 8)?;
    for (id, tokens) in &out.outputs {
        println!("request {id:>2}: {tokens:?}");
    }
    println!(
        "{} requests in {} steps; the batch reported {} moves and {} swaps",
        out.outputs.len(),
        out.steps,
        out.moves,
        out.swaps
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The README's engine loop, run for real: every request's tokens, decoded in a continuously
    //! batched, reordered batch, equal decoding it alone, and obey its parameters.

    use super::{demo_requests, run, EOS};

    #[test]
    fn batched_decoding_equals_decoding_each_request_alone() {
        let requests = demo_requests(40);
        let batched = run(requests.clone(), 8).unwrap();
        assert_eq!(batched.outputs.len(), requests.len());
        // The stream exercised what the helper is for.
        assert!(batched.moves > 0 && batched.swaps > 0, "{batched:?}");

        for req in &requests {
            let alone = run(vec![req.clone()], 1).unwrap();
            let tokens = &batched.outputs[&req.id];
            assert_eq!(tokens, &alone.outputs[&req.id], "request {}", req.id);

            assert!(!tokens.is_empty() && tokens.len() <= req.max_tokens);
            if let Some(allowed) = &req.params.allowed_token_ids {
                assert!(
                    tokens.iter().all(|t| allowed.contains(t)),
                    "request {}",
                    req.id
                );
            }
            let first_eos = tokens.iter().position(|&t| t == EOS);
            assert!(
                first_eos.is_none_or(|i| i >= req.params.min_tokens),
                "request {}",
                req.id
            );
        }
    }

    /// The README's engine loop is the example's code: every code line of the README block appears
    /// in `examples/engine_loop.rs`, in the same order (the README may leave lines out).
    #[test]
    fn the_readme_loop_is_the_example() {
        let root = env!("CARGO_MANIFEST_DIR");
        let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
        let example = std::fs::read_to_string(format!("{root}/examples/engine_loop.rs")).unwrap();
        let section = &readme[readme
            .find("## An engine loop")
            .expect("the README section")..];
        let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let code = |l: &&str| !l.trim().is_empty();
        let block: Vec<&str> = block.lines().filter(code).map(str::trim).collect();
        assert!(
            block.len() > 40,
            "the README block has {} lines",
            block.len()
        );
        let mut example_lines = example.lines().map(str::trim);
        for line in &block {
            assert!(
                example_lines.any(|l| l == *line),
                "README line not in the example (or out of order): {line}"
            );
        }
    }
}
