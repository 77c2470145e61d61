//! A continuous-batching engine loop on the CPU, over a toy "model" whose next-token logits
//! depend only on a request's last token: requests arrive over time with their own sampling
//! parameters, join a `PersistentBatch`, are reordered, decoded greedily through a `Pipeline`,
//! and leave when they emit EOS or reach their token budget.
//!
//! Run: `cargo run --release --example engine_loop`. `tests/engine_loop.rs` runs the same loop
//! and checks every request's tokens against decoding it alone.

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

#[allow(dead_code)] // `tests/engine_loop.rs` includes this file as a module
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
