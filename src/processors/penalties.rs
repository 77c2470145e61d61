//! [`Penalties`]: per request, repetition, frequency and presence penalties.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use std::sync::Arc;

use crate::kernels::counts::{CountTable, LogWriter, ADD, PROMPT, SUB};
use crate::kernels::table::RowTable;
use crate::kernels::{PenaltySpec, NO_SLOT};
use crate::ledger::RowLedger;
use crate::output::{for_changes, OutputChange, OutputCursor, OutputTokens, StepOutputs};
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics};

/// The penalties of vLLM's sampler:
/// - `repetition_penalty` (HF, vLLM; [`RequestParams::repetition_penalty`]): the logit of every
///   token that occurs in the prompt or the output is divided by it when positive and multiplied
///   by it otherwise;
/// - `frequency_penalty` (OpenAI, vLLM): subtracted once per occurrence in the output;
/// - `presence_penalty` (OpenAI, vLLM): subtracted once if the token occurs in the output.
///
/// In that order, in f32, rounded once to the logits' dtype:
/// `y = rep(x); y -= frequency × count; y -= presence` for tokens with `count > 0`.
///
/// Token counts live on the device and are updated there from the **new** output tokens of each
/// step (and the tokens rolled back), read through an [`OutputCursor`](crate::OutputCursor) —
/// never recounted from the whole history. Output tokens outside the vocabulary are ignored (as
/// vLLM's padding id is), and so are prompt tokens outside it. The prompt is read from
/// [`AddedRequest::prompt_token_ids`](crate::AddedRequest) when the request joins.
///
/// # State and cost
///
/// Per request, a *slot*: a small hash table from token to count (and an in-prompt flag) that
/// lives where the logits are (host memory on the CPU, device memory on CUDA) and that the
/// request keeps wherever its row moves. The host keeps no per-token state: `update_state`
/// logs each output change (an 8-byte entry per appended or rolled-back token, O(1) per row,
/// no lookup) and `apply`'s sparse pass applies the step's log to the tables before it
/// penalises the listed tokens (on CUDA the log travels in the same host-to-device copy as the
/// step's other table writes; no extra launch, no synchronisation). A request joining logs its
/// prompt the same way. When the log grows long between two applies (`update_state` called
/// many times without `apply`) it is processed on its own (one launch on CUDA). Used alone
/// (not in a [`Pipeline`](crate::Pipeline)), `update_state` also visits every row of the batch
/// each step (one atomic load for an unchanged output).
///
/// Memory: each table is kept at most half full for an upper bound of the request's distinct
/// tokens (its prompt plus the tokens appended since it joined, at most the vocabulary; on the
/// CPU re-read as the exact count whenever the log is processed). All slots share one size,
/// set by the largest bound `d`: `4 + 12·W` bytes, `W` the smallest power of two at least `2d`
/// (and 16), so 24 to 48 bytes per token of the largest bound, for every slot of the batch
/// capacity; the tables grow, never shrink, and growing rehashes every slot where the tables
/// live (amortised like a `Vec` doubling; one launch on CUDA). `apply`: reads and writes only
/// the listed logits (no dense pass, no `[batch, vocab]` count tensor).
///
/// # Errors
///
/// A repetition penalty that is not positive and finite, or a non-finite frequency or presence
/// penalty ([`ParamsError::OutOfRange`]). Any finite frequency and presence penalty is accepted
/// (vLLM rejects them outside `[-2, 2]`).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(1).vocab_size(4).build()?;
/// let mut pen = Penalties::new(&config)?;
/// let out = OutputTokens::new();
/// let mut b = BatchUpdateBuilder::new();
/// let params = RequestParams::new()
///     .with_repetition_penalty(2.0)
///     .with_frequency_penalty(0.5);
/// b.add(0, Arc::new(params)).with_prompt(vec![0]).with_output_tokens(out.clone());
/// pen.update_state(b.build(1))?;
/// out.extend(&[1, 1]); // the engine generated token 1 twice
/// pen.update_state(None)?;
/// let logits = Tensor::new(&[[4f32, -4., 4., 4.]], &Device::Cpu)?;
/// pen.apply(&logits)?;
/// // token 0 (prompt): 4 / 2; token 1 (output, twice): -4 * 2 - 0.5 * 2
/// assert_eq!(logits.to_vec2::<f32>()?, [[2., -9., 4., 4.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct Penalties {
    config: ProcessorConfig,
    ledger: RowLedger<Row>,
    counts: CountTable,
    /// Per row: `[repetition, frequency, presence, slot]`.
    params: RowTable,
    /// Rows touched by the current update (reused).
    marks: Vec<bool>,
    /// In a pipeline: output changes come from the pipeline.
    fed: bool,
    /// Slots held by no request.
    free: Vec<u32>,
    /// Per slot: an upper bound of the distinct tokens in its table.
    bound: Vec<u32>,
    /// Per row: the slot of its request (`NO_SLOT` for none), for the rows of the batch.
    slot_of: Vec<u32>,
    /// Scratch of an update: the slots held by the rows it names, and a stamp per slot.
    was: Vec<u32>,
    stamp: Vec<u32>,
    epoch: u32,
}

#[derive(Debug)]
struct Row {
    params: [f32; 3],
    /// The request's slot in the count tables (`NO_SLOT` until assigned after the update).
    slot: u32,
    /// The prompt, until it is logged into the slot.
    prompt: Option<Arc<[u32]>>,
    /// The request's output (for [`Penalties::output_count`]).
    out: OutputTokens,
    /// The request's output cursor (standalone only).
    cursor: Option<OutputCursor>,
}

/// Processed log entries above this many (per slot of capacity, at least 4096) are processed
/// on their own at the end of an update.
const DRAIN_PER_SLOT: usize = 64;

impl Penalties {
    /// A Penalties for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        let rows = config.max_batch_size();
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(rows),
            counts: CountTable::new(rows, config.device())?,
            params: RowTable::new(rows, 4, NO_SLOT, config.device())?,
            marks: vec![false; rows],
            fed: false,
            free: (0..rows as u32).rev().collect(),
            bound: vec![0; rows],
            slot_of: vec![NO_SLOT; rows],
            was: Vec::new(),
            stamp: vec![0; rows],
            epoch: 0,
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    /// The number of times `token` occurs in the output of the request at `row`, counted from
    /// the request's output list (as of now; O(output length), no device access); `None` for a
    /// row without a request that uses penalties. Tokens outside the vocabulary are not counted
    /// by the penalties (see [`read_count`](Self::read_count) for the count they use).
    pub fn output_count(&self, row: usize, token: u32) -> Option<u32> {
        let r = self.ledger.get(row)?;
        if token as usize >= self.config.vocab_size() {
            return Some(0);
        }
        Some(r.out.occurrences(token) as u32)
    }

    /// The output count of `token` that the penalties of the request at `row` use, read from
    /// its count table after processing every logged change (as of the last `update_state`);
    /// `None` for a row without a request that uses penalties.
    ///
    /// # Errors
    ///
    /// A device error.
    ///
    /// # Cost
    ///
    /// Processes the pending log (O(entries)) and looks the token up. On CUDA: one launch, one
    /// copy of the row's table to the host and a **synchronisation** — for tests and
    /// inspection, not for the decode loop.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use logits_processors::*;
    ///
    /// let config = ProcessorConfig::builder().max_batch_size(1).vocab_size(8).build()?;
    /// let mut pen = Penalties::new(&config)?;
    /// let out = OutputTokens::new();
    /// let mut b = BatchUpdateBuilder::new();
    /// b.add(0, Arc::new(RequestParams::new().with_frequency_penalty(0.5)))
    ///     .with_output_tokens(out.clone());
    /// pen.update_state(b.build(1))?;
    /// out.extend(&[3, 3, 5]);
    /// out.truncate(2); // speculative decoding rejected the 5
    /// pen.update_state(None)?;
    /// assert_eq!(pen.read_count(0, 3)?, Some(2));
    /// assert_eq!(pen.read_count(0, 5)?, Some(0));
    /// assert_eq!(pen.output_count(0, 3), Some(2)); // the same, counted in the list
    /// # Ok::<(), logits_processors::Error>(())
    /// ```
    pub fn read_count(&mut self, row: usize, token: u32) -> Result<Option<u32>> {
        let Some(r) = self.ledger.get(row) else {
            return Ok(None);
        };
        if r.slot == NO_SLOT || token as usize >= self.config.vocab_size() {
            return Ok(Some(0));
        }
        let slot = r.slot as usize;
        Ok(Some(self.counts.read(slot, token)?.0))
    }

    /// CPU: after the log was processed, the exact distinct counts replace the bounds.
    fn refresh_bounds(&mut self) {
        for (_, r) in self.ledger.rows() {
            if let Some(r) = r {
                let s = r.slot as usize;
                if let Some(used) = self.counts.used(s) {
                    self.bound[s] = used as u32;
                }
            }
        }
    }
}

fn penalties(params: &RequestParams) -> Result<Option<[f32; 3]>> {
    let (rep, freq, pres) = (
        params.repetition_penalty,
        params.frequency_penalty,
        params.presence_penalty,
    );
    let bad = |param, value: f32, expected| {
        Err(ParamsError::OutOfRange {
            param,
            value: value.into(),
            expected,
        }
        .into())
    };
    if !(rep.is_finite() && rep > 0.0) {
        return bad("repetition_penalty", rep, "a finite penalty > 0");
    }
    if !freq.is_finite() {
        return bad("frequency_penalty", freq, "a finite penalty");
    }
    if !pres.is_finite() {
        return bad("presence_penalty", pres, "a finite penalty");
    }
    Ok((rep != 1.0 || freq != 0.0 || pres != 0.0).then_some([rep, freq, pres]))
}

/// Logs the output changes of the step's rows into `w` (rows without a slot, or `marked` by
/// the update, skipped), counting each append into its slot's bound; returns the largest bound
/// reached (0 if none). A small function of slices, so that the loop keeps its state in
/// registers.
fn log_changes(
    o: &StepOutputs,
    slot_of: &[u32],
    marked: Option<&[bool]>,
    bound: &mut [u32],
    vocab: usize,
    w: &mut LogWriter<'_>,
) -> u32 {
    let mut top = 0u32;
    for (row, _, changes) in o.entries() {
        let s = slot_of[row];
        if s == NO_SLOT || marked.is_some_and(|m| m[row]) {
            continue;
        }
        let s = s as usize;
        for &c in changes {
            match c {
                OutputChange::Appended(t) if (t as usize) < vocab => {
                    w.log(s, ADD, t);
                    let b = bound[s] + 1;
                    bound[s] = b;
                    top = top.max(b);
                }
                OutputChange::Removed(t) if (t as usize) < vocab => w.log(s, SUB, t),
                _ => {}
            }
        }
    }
    top
}

/// Writes `row`'s parameters and slot.
fn write_params(table: &mut RowTable, row: usize, params: [f32; 3], slot: u32) {
    for (k, p) in params.iter().enumerate() {
        table.set(row, k, p.to_bits());
    }
    table.set(row, 3, slot);
}

impl LogitsProcessor for Penalties {
    fn name(&self) -> &'static str {
        "Penalties"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        penalties(params).map(|_| ())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.update(update, None)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Penalties {
    fn update(&mut self, update: Option<&BatchUpdate>, fed: Option<&StepOutputs>) -> Result<()> {
        let (vocab, own) = (self.config.vocab_size(), !self.fed);
        // The slots held by the rows the update names (freed below if no row holds them after).
        self.was.clear();
        if let Some(u) = update {
            let named = u.removed.iter().copied();
            let named = named.chain(u.added.iter().map(|a| a.row));
            let named = named.chain(u.moved.iter().flat_map(|m| [m.from, m.to]));
            for row in named {
                if let Some(r) = self.ledger.get(row) {
                    self.was.push(r.slot);
                }
            }
        }
        self.ledger.apply(update, |a| {
            let Some(params) = penalties(&a.params)? else {
                return Ok(None);
            };
            Ok(Some(Row {
                params,
                slot: NO_SLOT,
                prompt: (params[0] != 1.0)
                    .then(|| a.prompt_token_ids.clone())
                    .flatten(),
                out: a.output_token_ids.clone(),
                cursor: own.then(|| a.output_token_ids.cursor()),
            }))
        })?;
        let half = self.counts.w() / 2;
        let mut grow = 0usize;
        // Free the slots of the requests that left; give the new ones a slot, reset, with their
        // prompt logged.
        if !self.ledger.touched().is_empty() {
            self.epoch = self.epoch.wrapping_add(1);
            if self.epoch == 0 {
                self.stamp.fill(0);
                self.epoch = 1;
            }
            for &row in self.ledger.touched() {
                if let Some(r) = self.ledger.get(row) {
                    if r.slot != NO_SLOT {
                        self.stamp[r.slot as usize] = self.epoch;
                    }
                }
            }
            for &s in &self.was {
                if self.stamp[s as usize] != self.epoch {
                    self.stamp[s as usize] = self.epoch;
                    self.free.push(s);
                }
            }
            for i in 0..self.ledger.touched().len() {
                let row = self.ledger.touched()[i];
                let Some(r) = self.ledger.get_mut(row) else {
                    continue;
                };
                if r.slot != NO_SLOT {
                    continue;
                }
                // Every request holds one slot and there are as many slots as rows.
                let slot = self.free.pop().expect("a free penalty slot per request");
                r.slot = slot;
                let s = slot as usize;
                self.counts.reset(s);
                let mut n = 0u32;
                for &t in r.prompt.take().as_deref().unwrap_or(&[]) {
                    if (t as usize) < vocab {
                        self.counts.log(s, PROMPT, t);
                        n += 1;
                    }
                }
                self.bound[s] = n;
                if n as usize > half {
                    grow = grow.max(n as usize);
                }
            }
        }
        for &row in self.ledger.touched() {
            self.marks[row] = true;
        }
        let batch = self.ledger.batch_size();
        let (counts, params_t, bound) = (&mut self.counts, &mut self.params, &mut self.bound);
        let slot_of = &mut self.slot_of;
        let mut log = |s: usize, c: OutputChange, grow: &mut usize| {
            let (kind, t) = match c {
                OutputChange::Appended(t) => (ADD, t),
                OutputChange::Removed(t) => (SUB, t),
            };
            if t as usize >= vocab {
                return;
            }
            counts.log(s, kind, t);
            if kind == ADD {
                bound[s] += 1;
                if bound[s] as usize > half {
                    *grow = (*grow).max(bound[s] as usize);
                }
            }
        };
        let mut step = |row: usize, state: Option<&mut Row>, touched: bool| {
            let Some(r) = state else {
                if touched {
                    slot_of[row] = NO_SLOT;
                    write_params(params_t, row, [1.0, 0.0, 0.0], NO_SLOT);
                }
                return;
            };
            let s = r.slot as usize;
            for_changes(fed, row, r.cursor.as_mut(), |c| log(s, c, &mut grow));
            if touched {
                slot_of[row] = r.slot;
                write_params(params_t, row, r.params, r.slot);
            }
        };
        match fed {
            Some(o) => {
                // Touched rows through the ledger; the others from the flat slot array.
                for i in 0..self.ledger.touched().len() {
                    let row = self.ledger.touched()[i];
                    if row < batch {
                        step(row, self.ledger.get_mut(row), true);
                    }
                }
                // The step's other rows: one flat pass that logs their changes (the usual
                // step: one append per row).
                let touched = !self.ledger.touched().is_empty();
                let marks = touched.then_some(&self.marks[..]);
                let mut w = self.counts.writer(o.change_count());
                let top = log_changes(o, &self.slot_of, marks, &mut self.bound, vocab, &mut w);
                drop(w);
                if top as usize > half {
                    grow = grow.max(top as usize);
                }
            }
            None => {
                for (row, state) in self.ledger.rows_mut() {
                    step(row, state, self.marks[row]);
                }
            }
        }
        // Rows past the batch that an update emptied.
        for &row in self.ledger.touched() {
            if std::mem::take(&mut self.marks[row]) && row >= batch {
                self.slot_of[row] = NO_SLOT;
                write_params(&mut self.params, row, [1.0, 0.0, 0.0], NO_SLOT);
            }
        }
        if grow > 0 {
            // Before any processing: the logged entries must fit.
            self.counts.ensure(grow.min(vocab))?;
        }
        if self.counts.pending() > (DRAIN_PER_SLOT * self.counts.slots()).max(4096) {
            self.counts.drain()?;
            if self.counts.on_host() {
                self.refresh_bounds();
            }
        }
        Ok(self.params.sync()?)
    }
}

impl Builtin for Penalties {
    builtin_basics!();

    fn follows_outputs(&self) -> bool {
        true
    }

    fn set_fed(&mut self) {
        self.fed = true;
    }

    fn update_fed(
        &mut self,
        update: Option<&BatchUpdate>,
        outputs: &StepOutputs,
        _lists: &dyn crate::output::RowTokens,
    ) -> Result<()> {
        self.update(update, Some(outputs))
    }

    fn prepare_step(&mut self) -> Result<()> {
        // CPU: the sparse pass's count update runs here, on the host (on CUDA, in the kernel).
        if self.counts.on_host() && self.counts.payload().is_some() {
            self.counts.process_host();
            self.refresh_bounds();
        }
        Ok(())
    }

    fn finish_step(&mut self) {
        self.counts.finish_step();
    }

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Penalties(PenaltySpec {
            counts: &self.counts,
            params: &self.params,
        }))
    }
}
