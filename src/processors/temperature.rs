//! [`Temperature`]: per request, logits divided by a temperature.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics};

/// vLLM's / HF's / OpenAI's `temperature`: divides each request's row by its
/// [`RequestParams::temperature`] (f32 division, rounded to the logits' dtype), as vLLM's
/// `SamplingParams` reads it: 0 is greedy and 1 neutral (the row is left unchanged), and a
/// temperature in (0, [`Temperature::MIN`]) is raised to `MIN` = 0.01 (vLLM does the same, with
/// a warning: below it, ordinary logits overflow to ±inf). A greedy request is not cut by
/// [`MinP`](crate::MinP) either.
///
/// Argmax-invariant up to ties: the rounded division is monotone, but can round neighbouring
/// values to one (a temperature above 1, most often in f16/bf16) or, in f16, overflow large
/// logits to +inf. [`Pipeline::apply_greedy`](crate::Pipeline::apply_greedy) skips it.
///
/// # State and cost
///
/// One f32 per row on the device. `update_state`: O(changes). `apply`: one read and write of
/// each tempered row (on CUDA a multiplication by a reciprocal computed once per row, corrected
/// to the quotient's bits; on the CPU a division); other rows untouched.
///
/// # Errors
///
/// A negative or non-finite temperature ([`ParamsError::OutOfRange`]).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(3).vocab_size(3).build()?;
/// let mut temp = Temperature::new(&config)?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_temperature(0.5)));
/// b.add(1, Arc::new(RequestParams::new()));
/// b.add(2, Arc::new(RequestParams::new().with_temperature(1e-6))); // raised to 0.01
/// temp.update_state(b.build(3))?;
/// let logits = Tensor::new(&[[1f32, 2., 3.], [1., 2., 3.], [1., 2., 3.]], &Device::Cpu)?;
/// temp.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[2., 4., 6.], [1., 2., 3.], [100., 200., 300.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct Temperature {
    config: ProcessorConfig,
    ledger: RowLedger<f32>,
    table: RowTable,
}

impl Temperature {
    /// The least temperature that divides: one in (0, `MIN`) is raised to it, as vLLM's
    /// `SamplingParams` raises it (its `_MAX_TEMP`).
    pub const MIN: f32 = 0.01;

    /// A Temperature for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(config.max_batch_size(), 1, 1f32.to_bits(), config.device())?,
        })
    }
}

fn temperature(params: &RequestParams) -> Result<Option<f32>> {
    let t = params.temperature;
    if !(t.is_finite() && t >= 0.0) {
        return Err(ParamsError::OutOfRange {
            param: "temperature",
            value: t.into(),
            expected: "a finite temperature >= 0",
        }
        .into());
    }
    Ok((t != 0.0 && t != 1.0).then_some(t.max(Temperature::MIN)))
}

impl LogitsProcessor for Temperature {
    fn name(&self) -> &'static str {
        "Temperature"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        temperature(params).map(|_| ())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.ledger.apply(update, |a| temperature(&a.params))?;
        for &row in self.ledger.touched() {
            let t = self.ledger.get(row).copied().unwrap_or(1.0);
            self.table.set(row, 0, t.to_bits());
        }
        Ok(self.table.sync()?)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        true
    }
}

impl Builtin for Temperature {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Temperature(&self.table))
    }
}
