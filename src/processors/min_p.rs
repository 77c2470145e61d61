//! [`MinP`]: per request, tokens far less likely than the most likely one are dropped.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::kernels::NO_MIN_P;
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics};

/// vLLM's / HF's `min_p`: in each request's row, tokens whose probability is below
/// `min_p × p_max` become −inf. Decided on the logits, without a softmax:
/// `p_t < min_p · p_max ⇔ x_t < x_max + ln(min_p)` (f32, `ln(min_p)` computed in f64 and
/// rounded), where the logits are those after every earlier processor (temperature included, as
/// in vLLM). vLLM compares probabilities, so a token within an f32 rounding of the threshold may
/// be decided differently there. As in vLLM, a greedy request (temperature 0) is not cut: its
/// `min_p` is ignored.
///
/// Argmax-invariant: [`Pipeline::apply_greedy`](crate::Pipeline::apply_greedy) skips it.
///
/// # State and cost
///
/// One f32 per row on the device. `update_state`: O(changes), plus a count of the batch's rows
/// with min-p (O(batch)) when the update touched a row. `apply`: the row maximum, then the
/// cut, over each row with min-p (on CUDA one read-write pass: each block holds its chunk while
/// the row's other chunks publish their maxima; on the CPU one read-write pass that masks,
/// tempers and finds the maximum, then one that only compares and writes what it cuts); other
/// rows untouched.
///
/// # Errors
///
/// `min_p` outside `[0, 1]` ([`ParamsError::OutOfRange`]).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(1).vocab_size(3).build()?;
/// let mut min_p = MinP::new(&config)?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_min_p(0.1)));
/// min_p.update_state(b.build(1))?;
/// // p ∝ e^x: e^-3 / e^0 ≈ 0.05 < 0.1 is dropped, e^-2 ≈ 0.135 stays.
/// let logits = Tensor::new(&[[0f32, -2., -3.]], &Device::Cpu)?;
/// min_p.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[0., -2., f32::NEG_INFINITY]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct MinP {
    config: ProcessorConfig,
    ledger: RowLedger<f32>,
    table: RowTable,
    active: usize,
}

impl MinP {
    /// A MinP for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(
                config.max_batch_size(),
                1,
                NO_MIN_P.to_bits(),
                config.device(),
            )?,
            active: 0,
        })
    }
}

/// `ln(min_p)`, or `None` when off.
fn ln_min_p(params: &RequestParams) -> Result<Option<f32>> {
    let p = params.min_p;
    if !(0.0..=1.0).contains(&p) {
        return Err(ParamsError::OutOfRange {
            param: "min_p",
            value: p.into(),
            expected: "a value in [0, 1]",
        }
        .into());
    }
    // vLLM's SamplingParams sets min_p to 0 for greedy requests.
    let greedy = params.temperature == 0.0;
    Ok((p > 0.0 && !greedy).then(|| f64::from(p).ln() as f32))
}

impl LogitsProcessor for MinP {
    fn name(&self) -> &'static str {
        "MinP"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        ln_min_p(params).map(|_| ())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.ledger.apply(update, |a| ln_min_p(&a.params))?;
        for &row in self.ledger.touched() {
            let v = self.ledger.get(row).copied().unwrap_or(NO_MIN_P);
            self.table.set(row, 0, v.to_bits());
        }
        if !self.ledger.touched().is_empty() {
            self.active = self.ledger.rows().filter(|(_, s)| s.is_some()).count();
        }
        Ok(self.table.sync()?)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        true
    }
}

impl Builtin for MinP {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        (self.active > 0).then_some(Part::MinP(&self.table))
    }
}
