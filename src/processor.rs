//! The [`LogitsProcessor`] trait and what every processor shares: its
//! [`ProcessorConfig`] and the checks on the logits it receives.

use candle_core::{DType, Device, Tensor};

use crate::batch::BatchUpdate;
use crate::error::{Error, Result};
use crate::kernels::FusionPart;
use crate::params::RequestParams;

/// What every processor is built for: the most rows a batch can have, the vocabulary size and
/// the device its state lives on (the device of the logits it will receive).
///
/// # Example
///
/// ```
/// use candle_core::Device;
/// use logits_processors::ProcessorConfig;
///
/// let config = ProcessorConfig::new(256, 151_936, Device::Cpu)?;
/// assert_eq!(config.max_batch_size(), 256);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    max_batch_size: usize,
    vocab_size: usize,
    device: Device,
}

impl ProcessorConfig {
    /// A configuration for batches of up to `max_batch_size` rows of `vocab_size` logits on
    /// `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if either size is zero or `vocab_size` does not fit in a `u32`.
    pub fn new(max_batch_size: usize, vocab_size: usize, device: Device) -> Result<Self> {
        if max_batch_size == 0 || vocab_size == 0 {
            return Err(Error::Config(format!(
                "max_batch_size ({max_batch_size}) and vocab_size ({vocab_size}) must be positive"
            )));
        }
        if u32::try_from(vocab_size).is_err() {
            return Err(Error::Config(format!(
                "vocab_size {vocab_size} does not fit in a u32 token id"
            )));
        }
        Ok(Self {
            max_batch_size,
            vocab_size,
            device,
        })
    }

    /// The most rows a batch can have (the processors' capacity).
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// The number of logits per row.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The device of the processors' state and of the logits they accept.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks that `token` is a valid id for this vocabulary.
    ///
    /// # Errors
    ///
    /// [`Error::TokenOutOfVocab`].
    pub fn check_token(&self, token: u32) -> Result<()> {
        if (token as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(Error::TokenOutOfVocab {
                token,
                vocab_size: self.vocab_size,
            })
        }
    }

    /// Checks that `logits` can be processed in place for a batch of `batch_size` rows: rank 2,
    /// shape `[batch_size, vocab_size]`, dtype f32, f16 or bf16, contiguous, on this device.
    ///
    /// Costs no device work and no allocation.
    ///
    /// # Errors
    ///
    /// [`Error::LogitsRank`], [`Error::LogitsShape`], [`Error::LogitsDtype`],
    /// [`Error::LogitsNotContiguous`] or [`Error::DeviceMismatch`].
    pub fn check_logits(&self, logits: &Tensor, batch_size: usize) -> Result<()> {
        let dims = logits.dims();
        let &[rows, width] = dims else {
            return Err(Error::LogitsRank {
                shape: dims.to_vec(),
            });
        };
        if rows != batch_size || width != self.vocab_size {
            return Err(Error::LogitsShape {
                rows,
                width,
                batch_size,
                vocab_size: self.vocab_size,
            });
        }
        if !matches!(logits.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::LogitsDtype {
                dtype: logits.dtype(),
            });
        }
        if !logits.is_contiguous() {
            return Err(Error::LogitsNotContiguous);
        }
        if !logits.device().same_device(&self.device) {
            return Err(Error::DeviceMismatch {
                expected: self.device.location(),
                got: logits.device().location(),
            });
        }
        Ok(())
    }
}

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
///
/// # Example: a custom processor
///
/// ```
/// use candle_core::{Device, Tensor};
/// use logits_processors::{
///     BatchUpdate, ExtraArg, LogitsProcessor, ProcessorConfig, RequestParams, Result, RowLedger,
/// };
///
/// /// Scales each opted-in request's row by a factor from `extra["scale"]`.
/// struct Scale {
///     config: ProcessorConfig,
///     ledger: RowLedger<f64>,
/// }
///
/// impl Scale {
///     fn factor(params: &RequestParams) -> Option<f64> {
///         match params.extra.get("scale") {
///             Some(ExtraArg::Float(f)) => Some(*f),
///             _ => None,
///         }
///     }
/// }
///
/// impl LogitsProcessor for Scale {
///     fn name(&self) -> &'static str { "Scale" }
///     fn validate_params(&self, _params: &RequestParams) -> Result<()> { Ok(()) }
///     fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
///         self.ledger.apply(update, |added| Ok(Self::factor(&added.params)))
///     }
///     fn apply(&mut self, logits: &Tensor) -> Result<()> {
///         self.config.check_logits(logits, self.ledger.batch_size())?;
///         for (row, factor) in self.ledger.rows() {
///             if let Some(f) = factor {
///                 let scaled = (logits.get(row)? * *f)?.unsqueeze(0)?;
///                 logits.slice_set(&scaled, 0, row)?;
///             }
///         }
///         Ok(())
///     }
///     fn is_argmax_invariant(&self) -> bool { false }
/// }
///
/// let config = ProcessorConfig::new(4, 3, Device::Cpu)?;
/// let mut p = Scale { ledger: RowLedger::new(4), config };
/// let mut b = logits_processors::BatchUpdateBuilder::new();
/// let params = RequestParams::new().with_extra("scale", ExtraArg::Float(2.0));
/// b.add(0, std::sync::Arc::new(params), None, Default::default());
/// p.update_state(b.build(1).as_ref())?;
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
    /// # Errors
    ///
    /// Logits of the wrong rank, shape, dtype or device, or a device error.
    fn apply(&mut self, logits: &Tensor) -> Result<()>;

    /// Whether `apply` never changes which token has the largest logit (a temperature, say).
    /// A [`Pipeline`](crate::Pipeline) skips such processors for greedy decoding.
    fn is_argmax_invariant(&self) -> bool;

    /// Lets built-in processors fuse their kernels in a [`Pipeline`](crate::Pipeline). Custom
    /// processors keep the default (`None`); the returned type cannot be built outside this
    /// crate.
    #[doc(hidden)]
    fn fusion_part(&self) -> Option<FusionPart<'_>> {
        None
    }
}
