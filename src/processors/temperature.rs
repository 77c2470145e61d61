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
/// [`RequestParams::temperature`] (f32 division, rounded to the logits' dtype). 0 (greedy, as in
/// vLLM) and 1 leave the row unchanged.
///
/// Argmax-invariant: [`Pipeline::apply_greedy`](crate::Pipeline::apply_greedy) skips it.
///
/// # State and cost
///
/// One f32 per row on the device. `update_state`: O(changes). `apply`: one read and write of
/// each tempered row; other rows untouched.
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
/// let config = ProcessorConfig::builder().max_batch_size(2).vocab_size(3).build()?;
/// let mut temp = Temperature::new(&config)?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_temperature(0.5)));
/// b.add(1, Arc::new(RequestParams::new()));
/// temp.update_state(b.build(2))?;
/// let logits = Tensor::new(&[[1f32, 2., 3.], [1., 2., 3.]], &Device::Cpu)?;
/// temp.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[2., 4., 6.], [1., 2., 3.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct Temperature {
    config: ProcessorConfig,
    ledger: RowLedger<f32>,
    table: RowTable,
}

impl Temperature {
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
    Ok((t != 0.0 && t != 1.0).then_some(t))
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
