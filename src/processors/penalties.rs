//! [`Penalties`]: per request, repetition, frequency and presence penalties.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::kernels::{PenaltySpec, IN_PROMPT};
use crate::ledger::RowLedger;
use crate::output::{for_changes, OutputChange, OutputCursor, StepOutputs};
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::id_index::IdIndex as Index;
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
/// Token counts live on the device and are updated from the **new** output tokens of each step
/// (and the tokens rolled back), read through an [`OutputCursor`](crate::OutputCursor) — never
/// recounted from the whole history. Output tokens outside the vocabulary are ignored (as
/// vLLM's padding id is). The prompt is read from
/// [`AddedRequest::prompt_token_ids`](crate::AddedRequest) when the request joins.
///
/// # State and cost
///
/// Per request, a list of the distinct tokens seen (prompt and output) with their output counts,
/// on the device; a host index from token to entry. `update_state`: O(new tokens) per row, one
/// asynchronous scatter of the changed words for the whole batch. `apply`: reads and writes only
/// the listed logits (no dense pass, no `[batch, vocab]` count tensor).
///
/// # Errors
///
/// A repetition penalty that is not positive and finite, or a non-finite frequency or presence
/// penalty ([`ParamsError::OutOfRange`]).
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
    entries: RowTable,
    params: RowTable,
    /// Rows touched by the current update (reused).
    marks: Vec<bool>,
    /// In a pipeline: output changes come from the pipeline.
    fed: bool,
}

#[derive(Debug)]
struct Row {
    params: [f32; 3],
    /// The request's output (standalone only).
    cursor: Option<OutputCursor>,
    index: Index,
    /// `[token, packed]` pairs, flat.
    entries: Vec<u32>,
}

impl Penalties {
    /// A Penalties for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        let rows = config.max_batch_size();
        let neutral = 0u32; // overwritten per row; rows without a request have n = 0
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(rows),
            entries: RowTable::new(rows, 1 + 2 * 16, 0, config.device())?,
            params: RowTable::new(rows, 3, neutral, config.device())?,
            marks: vec![false; rows],
            fed: false,
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    /// The output count of `token` in the request at `row` (as of the last `update_state`).
    pub fn output_count(&self, row: usize, token: u32) -> Option<u32> {
        let r = self.ledger.get(row)?;
        let i = r.index.get(token)? as usize;
        Some(r.entries[2 * i + 1] & !IN_PROMPT)
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

/// Counts one output change into a row's entries, writing the changed words to the table.
fn count(
    table: &mut RowTable,
    vocab: usize,
    row: usize,
    index: &mut Index,
    entries: &mut Vec<u32>,
    change: OutputChange,
    write: bool,
) -> candle_core::Result<()> {
    let (t, delta) = match change {
        OutputChange::Appended(t) => (t, 1i64),
        OutputChange::Removed(t) => (t, -1),
    };
    if t as usize >= vocab {
        return Ok(());
    }
    let i = match index.get(t) {
        Some(i) => i as usize,
        None => {
            let i = entries.len() / 2;
            index.insert_new(t, i as u32);
            entries.extend([t, 0]);
            if write {
                table.ensure_width(1 + entries.len(), 0)?;
                table.set(row, 1 + 2 * i, t);
                table.set(row, 0, (i + 1) as u32);
            }
            i
        }
    };
    let packed = &mut entries[2 * i + 1];
    *packed = (i64::from(*packed) + delta) as u32;
    if write {
        table.set(row, 2 + 2 * i, *packed);
    }
    Ok(())
}

/// Loads, for the first change of every row with output changes, the index slot, the entry and
/// the table word it will update, in tight loops whose loads overlap: the update then finds them
/// in cache instead of missing on each row in turn (the rows' state is scattered over a few
/// megabytes at batch 256). Reads only; costs a few loads per changed row.
fn warm(ledger: &RowLedger<Row>, table: &RowTable, outputs: &StepOutputs) {
    let first = |row: usize| {
        let t = match outputs.row(row).first()? {
            OutputChange::Appended(t) | OutputChange::Removed(t) => *t,
        };
        Some((ledger.get(row)?, t))
    };
    let mut acc = 0u64;
    for row in outputs.rows() {
        if let Some((r, t)) = first(row) {
            acc ^= r.index.slot_hint(t);
        }
    }
    for row in outputs.rows() {
        if let Some((r, t)) = first(row) {
            if let Some(i) = r.index.get(t) {
                let i = i as usize;
                let word = table.row(row).get(2 + 2 * i).copied().unwrap_or(0);
                acc ^= u64::from(r.entries.get(2 * i + 1).copied().unwrap_or(0) ^ word);
            }
        }
    }
    std::hint::black_box(acc);
}

/// Empties `row`: neutral parameters, no entries.
fn reset(params: &mut RowTable, entries: &mut RowTable, row: usize) {
    for (k, p) in [1f32, 0.0, 0.0].iter().enumerate() {
        params.set(row, k, p.to_bits());
    }
    entries.set(row, 0, 0);
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
        self.ledger.apply(update, |a| {
            let Some(params) = penalties(&a.params)? else {
                return Ok(None);
            };
            let prompt = a.prompt_token_ids.as_deref().unwrap_or(&[]);
            let mut index = Index::with_capacity(prompt.len());
            let mut entries = Vec::new();
            if params[0] != 1.0 {
                for &t in a.prompt_token_ids.as_deref().unwrap_or(&[]) {
                    if t as usize >= vocab || index.contains(t) {
                        continue;
                    }
                    index.insert_new(t, (entries.len() / 2) as u32);
                    entries.extend([t, IN_PROMPT]);
                }
            }
            Ok(Some(Row {
                params,
                cursor: own.then(|| a.output_token_ids.cursor()),
                index,
                entries,
            }))
        })?;
        for &row in self.ledger.touched() {
            self.marks[row] = true;
        }
        let batch = self.ledger.batch_size();
        if let Some(o) = fed {
            warm(&self.ledger, &self.entries, o);
        }
        let (table, params_t, marks) = (&mut self.entries, &mut self.params, &mut self.marks);
        let mut result = Ok(());
        let mut step = |row: usize, state: Option<&mut Row>, touched: bool| {
            let Some(r) = state else {
                if touched {
                    reset(params_t, table, row);
                }
                return;
            };
            // A request new at this row is written whole below; others word by word.
            let (index, entries) = (&mut r.index, &mut r.entries);
            for_changes(fed, row, r.cursor.as_mut(), |c| {
                if result.is_ok() {
                    result = count(table, vocab, row, index, entries, c, !touched);
                }
            });
            if touched {
                for (k, p) in r.params.iter().enumerate() {
                    params_t.set(row, k, p.to_bits());
                }
                if result.is_ok() {
                    result = crate::processors::write_list(table, row, 2, &r.entries);
                }
            }
        };
        crate::processors::visit_step_rows(&mut self.ledger, fed, marks, batch, &mut step);
        // Rows past the batch that an update emptied.
        for &row in self.ledger.touched() {
            if std::mem::take(&mut marks[row]) && row >= batch {
                reset(params_t, table, row);
            }
        }
        result?;
        self.params.sync()?;
        Ok(self.entries.sync()?)
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

    fn update_fed(&mut self, update: Option<&BatchUpdate>, outputs: &StepOutputs) -> Result<()> {
        self.update(update, Some(outputs))
    }

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Penalties(PenaltySpec {
            entries: &self.entries,
            params: &self.params,
        }))
    }
}
