//! [`LogitBias`]: per request, `{token: bias}` added to the logits (vLLM's `logit_bias`).

use std::sync::Arc;

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics, write_list};

const PARAM: &str = "logit_bias";

/// vLLM's `logit_bias` (OpenAI's, HF's `sequence_bias` for one-token sequences): adds each
/// request's [`RequestParams::logit_bias`] to its row, any number of entries (vLLM caps the
/// size; this does not). Computed in f32 and rounded to the logits' dtype.
///
/// # State and cost
///
/// A per-row list table on the device, widened when a request brings more entries than any
/// before. `update_state`: O(entries of the changed requests). `apply`: reads and writes only
/// the listed logits.
///
/// # Errors
///
/// A token outside the vocabulary ([`ParamsError::TokenOutOfVocab`]) or a non-finite bias
/// ([`ParamsError::OutOfRange`]).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(2).vocab_size(4).build()?;
/// let mut bias = LogitBias::new(&config)?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_logit_bias([(1, 5.0), (3, -1.0)])));
/// bias.update_state(b.build(1))?;
/// let logits = Tensor::new(&[[0f32, 1., 2., 3.]], &Device::Cpu)?;
/// bias.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[0., 6., 2., 2.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct LogitBias {
    config: ProcessorConfig,
    ledger: RowLedger<Arc<[u32]>>,
    table: RowTable,
}

impl LogitBias {
    /// A LogitBias for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(config.max_batch_size(), 1 + 2 * 4, 0, config.device())?,
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }
}

/// `[token, bias bits]` pairs, or `None` when the request sets no bias.
fn entries(config: &ProcessorConfig, params: &RequestParams) -> Result<Option<Arc<[u32]>>> {
    if params.logit_bias.is_empty() {
        return Ok(None);
    }
    let mut words = Vec::with_capacity(2 * params.logit_bias.len());
    for (&t, &b) in &params.logit_bias {
        config.check_token(PARAM, t)?;
        if !b.is_finite() {
            return Err(ParamsError::OutOfRange {
                param: PARAM,
                value: b.into(),
                expected: "a finite bias",
            }
            .into());
        }
        words.extend([t, b.to_bits()]);
    }
    Ok(Some(words.into()))
}

impl LogitsProcessor for LogitBias {
    fn name(&self) -> &'static str {
        "LogitBias"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        entries(&self.config, params).map(|_| ())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        let config = &self.config;
        self.ledger.apply(update, |a| entries(config, &a.params))?;
        for &row in self.ledger.touched() {
            let words = self.ledger.get(row).map_or(&[][..], |w| &w[..]);
            write_list(&mut self.table, row, 2, words)?;
        }
        Ok(self.table.sync()?)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Builtin for LogitBias {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Bias(&self.table))
    }
}
