//! [`MinTokens`]: per request, stop tokens are banned until enough tokens were generated.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ConfigError, Result};
use crate::kernels::table::RowTable;
use crate::ledger::RowLedger;
use crate::output::{OutputTokens, StepOutputs};
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics, sorted_set, write_list};

/// vLLM's / HF's `min_tokens` (`min_new_tokens`): while a request has fewer than
/// [`RequestParams::min_tokens`] output tokens, its stop tokens — the model's EOS ids given to
/// [`MinTokens::new`] and the request's [`RequestParams::stop_token_ids`] — are −inf.
///
/// The output length is read from the request's [`OutputTokens`] at every `update_state`
/// (call it every step, with `None` when the batch did not change), so rollbacks re-arm the
/// ban.
///
/// # State and cost
///
/// A per-row ban list on the device. `update_state`: used alone, a walk over every row of the
/// batch each step with one length read (under the list's lock) per request with
/// `min_tokens > 0`; in a pipeline, one length read per such request whose output changed, and
/// none at all when no request is still banning and no output was rolled back, since appends
/// alone cannot start a ban; a device write only when a request crosses its threshold.
/// `apply`: writes −inf over the banned ids only.
///
/// # Errors
///
/// A stop id outside the vocabulary ([`ParamsError::TokenOutOfVocab`](crate::ParamsError)).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(1).vocab_size(4).build()?;
/// let mut min = MinTokens::new(&config, [3])?; // EOS = 3
/// let out = OutputTokens::new();
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_min_tokens(1)))
///     .with_output_tokens(out.clone());
/// min.update_state(b.build(1))?;
/// let logits = Tensor::new(&[[0f32, 1., 2., 3.]], &Device::Cpu)?;
/// min.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[0., 1., 2., f32::NEG_INFINITY]]);
///
/// out.push(1); // one token generated: EOS allowed again
/// min.update_state(None)?;
/// let logits = Tensor::new(&[[0f32, 1., 2., 3.]], &Device::Cpu)?;
/// min.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[0., 1., 2., 3.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct MinTokens {
    config: ProcessorConfig,
    eos: Vec<u32>,
    ledger: RowLedger<Row>,
    table: RowTable,
    /// In a pipeline: output lengths come from the pipeline.
    fed: bool,
    /// Per row of the batch: its request's `min_tokens` (0 without one), and whether its stop
    /// tokens are banned now: a step reads these flat arrays, not the rows' state.
    mins: Vec<usize>,
    banning: Vec<bool>,
    /// The rows with `mins[row] > 0` and `banning[row]`: when none and no output was rolled
    /// back, a step's appends cannot start or end a ban, and the step reads no row.
    banning_rows: usize,
}

/// Sets `row`'s entries of the flat arrays, keeping `count` (the rows with a minimum that ban)
/// up to date.
fn set_row(
    (mins, banning, count): (&mut [usize], &mut [bool], &mut usize),
    row: usize,
    min: usize,
    ban: bool,
) {
    let was = mins[row] > 0 && banning[row];
    let now = min > 0 && ban;
    mins[row] = min;
    banning[row] = ban;
    *count = *count + usize::from(now) - usize::from(was);
}

#[derive(Debug)]
struct Row {
    min: usize,
    stops: Vec<u32>,
    /// The output handle (standalone only).
    out: Option<OutputTokens>,
    banning: bool,
}

const PARAM: &str = "stop_token_ids";

impl MinTokens {
    /// A MinTokens for `config` whose stop tokens always include `eos_token_ids`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::TokenOutOfVocab`] for an EOS id outside the vocabulary; a device error
    /// while allocating.
    pub fn new(
        config: &ProcessorConfig,
        eos_token_ids: impl IntoIterator<Item = u32>,
    ) -> Result<Self> {
        let eos: Vec<u32> = eos_token_ids.into_iter().collect();
        for &t in &eos {
            if t as usize >= config.vocab_size() {
                return Err(ConfigError::TokenOutOfVocab {
                    what: "MinTokens EOS",
                    token: t,
                    vocab_size: config.vocab_size(),
                }
                .into());
            }
        }
        Ok(Self {
            config: config.clone(),
            eos,
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(config.max_batch_size(), 1 + 4, 0, config.device())?,
            fed: false,
            mins: vec![0; config.max_batch_size()],
            banning: vec![false; config.max_batch_size()],
            banning_rows: 0,
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }
}

fn stops(config: &ProcessorConfig, eos: &[u32], params: &RequestParams) -> Result<Vec<u32>> {
    for &t in &params.stop_token_ids {
        config.check_token(PARAM, t)?;
    }
    let mut all = eos.to_vec();
    all.extend_from_slice(&params.stop_token_ids);
    Ok(sorted_set(&all))
}

impl LogitsProcessor for MinTokens {
    fn name(&self) -> &'static str {
        "MinTokens"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        stops(&self.config, &self.eos, params).map(|_| ())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.update(update, None)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl MinTokens {
    fn update(&mut self, update: Option<&BatchUpdate>, fed: Option<&StepOutputs>) -> Result<()> {
        let (config, eos, own) = (&self.config, &self.eos, !self.fed);
        self.ledger.apply(update, |a| {
            let stops = stops(config, eos, &a.params)?;
            Ok((a.params.min_tokens > 0 && !stops.is_empty()).then(|| Row {
                min: a.params.min_tokens,
                stops,
                out: own.then(|| a.output_token_ids.clone()),
                banning: false,
            }))
        })?;
        // Fed: every touched or changed row has an entry; a row without one did not change.
        let len_of = |row: usize, r: &Row| match (fed, &r.out) {
            (Some(o), _) => o.len(row).unwrap_or(0),
            (None, Some(out)) => out.len(),
            (None, None) => 0,
        };
        // Rows whose request changed: rewrite their list from scratch.
        for i in 0..self.ledger.touched().len() {
            let row = self.ledger.touched()[i];
            let flat = (
                &mut self.mins[..],
                &mut self.banning[..],
                &mut self.banning_rows,
            );
            let words = match self.ledger.get_mut(row) {
                Some(r) => {
                    r.banning = len_of(row, r) < r.min;
                    set_row(flat, row, r.min, r.banning);
                    if r.banning {
                        &r.stops[..]
                    } else {
                        &[][..]
                    }
                }
                None => {
                    set_row(flat, row, 0, false);
                    &[][..]
                }
            };
            write_list(&mut self.table, row, 1, words)?;
        }
        // Every request whose output changed (fed: the rows with an entry; alone: all): the ban
        // flips when its output crosses `min` (either way: rollback).
        match fed {
            // Appends only and no row banning: no ban starts (outputs only grew) or ends.
            Some(o) if self.banning_rows == 0 && !o.rolled_back() => {}
            Some(o) => {
                for (row, len, _) in o.entries() {
                    let min = self.mins[row];
                    if min == 0 || (len < min) == self.banning[row] {
                        continue;
                    }
                    let banning = len < min;
                    let flat = (
                        &mut self.mins[..],
                        &mut self.banning[..],
                        &mut self.banning_rows,
                    );
                    set_row(flat, row, min, banning);
                    if let Some(r) = self.ledger.get_mut(row) {
                        r.banning = banning;
                        let words = if banning { &r.stops[..] } else { &[][..] };
                        write_list(&mut self.table, row, 1, words)?;
                    }
                }
            }
            None => {
                for (row, state) in self.ledger.rows_mut() {
                    let Some(r) = state else {
                        continue;
                    };
                    let banning = len_of(row, r) < r.min;
                    if banning != r.banning {
                        r.banning = banning;
                        let flat = (
                            &mut self.mins[..],
                            &mut self.banning[..],
                            &mut self.banning_rows,
                        );
                        set_row(flat, row, r.min, banning);
                        let words = if banning { &r.stops[..] } else { &[][..] };
                        write_list(&mut self.table, row, 1, words)?;
                    }
                }
            }
        }
        Ok(self.table.sync()?)
    }
}

impl Builtin for MinTokens {
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

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Bans(1, &self.table))
    }
}
