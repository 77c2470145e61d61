//! The [`LogitsProcessor`] trait: what every processor does each engine step.

use candle_core::Tensor;

use crate::batch::BatchUpdate;
use crate::error::Result;
use crate::params::RequestParams;

/// A processor that shapes next-token logits for a whole persistent batch at once.
///
/// # The step protocol
///
/// Each engine step, for every processor:
/// 1. [`update_state`](Self::update_state) with the step's [`BatchUpdate`] (or `None` when the
///    batch did not change), following the rules in [`crate::ledger`];
/// 2. [`apply`](Self::apply) on the logits `[batch_size, vocab]`, which it changes **in place**.
///
/// Before a request is admitted, an engine may call
/// [`validate_params`](Self::validate_params) to reject bad parameters up front.
///
/// # Contract for implementors
///
/// - `update_state` is transactional: on error the state is exactly as before the call.
///   [`RowLedger`](crate::RowLedger) gives this for free.
/// - `apply` must not change rows it has no business with, must work in place (no new logits
///   tensor), and should not synchronise with the device or allocate per step.
/// - Neither method may panic on caller input.
/// - `validate_params` must report every parameter `update_state` would reject, so that a
///   [`Pipeline`](crate::Pipeline) can check a whole update before any processor applies it.
///
/// # Feeding several processors
///
/// Use a [`Pipeline`](crate::Pipeline). Fed one by one, processors can drift apart: an
/// update that the first processor accepts and the second rejects leaves the first one a step
/// ahead. An engine that does feed processors separately must call `validate_params` of
/// *every* processor on each added request before calling `update_state` on any of them.
///
/// # Example: a custom processor
///
/// ```
/// use candle_core::{Device, Tensor};
/// use logits_processors::{
///     for_each_row_mut, BatchUpdate, ExtraArg, LogitsProcessor, ParamsError, ProcessorConfig,
///     RequestParams, Result, RowLedger,
/// };
///
/// /// Scales each opted-in request's row by a factor from `extra["scale"]`.
/// struct Scale {
///     config: ProcessorConfig,
///     ledger: RowLedger<f64>,
/// }
///
/// impl Scale {
///     /// The request's factor, if it asks for one; a non-finite factor is rejected.
///     fn factor(params: &RequestParams) -> Result<Option<f64>> {
///         match params.extra.get("scale") {
///             Some(ExtraArg::Float(f)) if !f.is_finite() => Err(ParamsError::Rejected {
///                 processor: "Scale",
///                 reason: format!("scale {f} is not finite"),
///             }
///             .into()),
///             Some(ExtraArg::Float(f)) => Ok(Some(*f)),
///             _ => Ok(None),
///         }
///     }
/// }
///
/// impl LogitsProcessor for Scale {
///     fn name(&self) -> &'static str { "Scale" }
///     fn validate_params(&self, params: &RequestParams) -> Result<()> {
///         Self::factor(params).map(|_| ())
///     }
///     fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
///         self.ledger.apply(update, |added| Self::factor(&added.params))
///     }
///     /// CPU only: each row as a plain slice (a GPU version would be a candle `InplaceOp1`).
///     fn apply(&mut self, logits: &Tensor) -> Result<()> {
///         self.config.check_logits(logits, self.ledger.batch_size())?;
///         let ledger = &self.ledger;
///         for_each_row_mut(logits, |row, mut logits| {
///             if let Some(f) = ledger.get(row) {
///                 logits.map(|_token, x| (x as f64 * f) as f32);
///             }
///         })
///     }
///     fn is_argmax_invariant(&self) -> bool { false }
/// }
///
/// let config = ProcessorConfig::builder().max_batch_size(4).vocab_size(3).build()?;
/// let mut p = Scale { ledger: RowLedger::new(4), config };
/// let mut b = logits_processors::BatchUpdateBuilder::new();
/// let params = RequestParams::new().with_extra("scale", ExtraArg::Float(2.0));
/// b.add(0, std::sync::Arc::new(params));
/// p.update_state(b.build(1))?;
/// let logits = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu)?;
/// p.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[2., 4., 6.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
pub trait LogitsProcessor: Send {
    /// A short name for messages.
    fn name(&self) -> &'static str;

    /// Rejects parameters this processor cannot serve (a token id outside the vocabulary, …)
    /// before the request is admitted. `update_state` applies the same checks to added requests.
    ///
    /// # Errors
    ///
    /// Why the parameters are unusable.
    fn validate_params(&self, params: &RequestParams) -> Result<()>;

    /// Follows the persistent batch: applies `update` (`None` = unchanged) to the per-row state.
    ///
    /// # Errors
    ///
    /// A broken rule of [`crate::ledger`] or invalid parameters of an added request; the
    /// state is then unchanged.
    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()>;

    /// Shapes `logits` (`[batch_size, vocab]`, contiguous) in place.
    ///
    /// # Aliases see the change
    ///
    /// "In place" means in the tensor's *storage*, which candle shares between a tensor and
    /// every clone or view of it: `logits.clone()`, `logits.contiguous()` of a contiguous
    /// tensor, `logits.to_dtype(d)` to its own dtype, `narrow`/`get`/`i` views. A clone kept to
    /// compute raw logprobs after `apply` is therefore changed too. To keep the raw logits, take
    /// a real copy first: `let raw = logits.copy()?;` (one device-to-device copy; or any op
    /// that writes a new tensor, such as `log_softmax`), then `apply` to `logits`.
    ///
    /// # Errors
    ///
    /// A [`LogitsError`](crate::LogitsError) for logits of the wrong rank, shape, dtype or
    /// device, or that are not contiguous
    /// ([`LogitsError::NotContiguous`](crate::LogitsError::NotContiguous): a strided view
    /// cannot be changed in place; call `.contiguous()` first, which copies it); a device
    /// error.
    fn apply(&mut self, logits: &Tensor) -> Result<()>;

    /// Whether `apply` never changes which token has the largest logit (a temperature, say, up
    /// to ties its rounding can create). A [`Pipeline`](crate::Pipeline) skips such processors
    /// in [`apply_greedy`](crate::Pipeline::apply_greedy).
    fn is_argmax_invariant(&self) -> bool;
}
