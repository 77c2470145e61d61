//! [`ProcessorConfig`]: what every processor is built for, and the checks on the logits it
//! receives.

use candle_core::{DType, Device, Tensor};

use crate::error::{ConfigError, LogitsError, ParamsError, Result};

/// What every processor is built for: the most rows a batch can have, the vocabulary size and
/// the device its state lives on (the device of the logits it will receive).
///
/// Build one with named setters, so the two sizes cannot be swapped by accident:
///
/// ```
/// use candle_core::Device;
/// use logits_processors::ProcessorConfig;
///
/// let config = ProcessorConfig::builder()
///     .max_batch_size(256)
///     .vocab_size(151_936)
///     .device(Device::Cpu) // the default
///     .build()?;
/// assert_eq!(config.max_batch_size(), 256);
/// assert_eq!(config.vocab_size(), 151_936);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    max_batch_size: usize,
    vocab_size: usize,
    device: Device,
}

/// Builder of a [`ProcessorConfig`]: see [`ProcessorConfig::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProcessorConfigBuilder {
    max_batch_size: Option<usize>,
    vocab_size: Option<usize>,
    device: Option<Device>,
}

impl ProcessorConfigBuilder {
    /// The most rows a batch can have (the processors' capacity). Required.
    pub fn max_batch_size(mut self, rows: usize) -> Self {
        self.max_batch_size = Some(rows);
        self
    }

    /// The number of logits per row. Required.
    pub fn vocab_size(mut self, vocab_size: usize) -> Self {
        self.vocab_size = Some(vocab_size);
        self
    }

    /// The device of the processors' state and of the logits; the CPU if not set.
    pub fn device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    /// The configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] if a size was not set, [`ConfigError::Zero`] if one is zero,
    /// [`ConfigError::VocabTooLarge`] if `vocab_size` does not fit in a `u32`.
    pub fn build(self) -> Result<ProcessorConfig> {
        let max_batch_size = self.max_batch_size.ok_or(ConfigError::Missing {
            what: "max_batch_size",
        })?;
        let vocab_size = self
            .vocab_size
            .ok_or(ConfigError::Missing { what: "vocab_size" })?;
        if max_batch_size == 0 {
            return Err(ConfigError::Zero {
                what: "max_batch_size",
            }
            .into());
        }
        if vocab_size == 0 {
            return Err(ConfigError::Zero { what: "vocab_size" }.into());
        }
        if u32::try_from(vocab_size).is_err() {
            return Err(ConfigError::VocabTooLarge { vocab_size }.into());
        }
        Ok(ProcessorConfig {
            max_batch_size,
            vocab_size,
            device: self.device.unwrap_or(Device::Cpu),
        })
    }
}

impl ProcessorConfig {
    /// A builder; set [`max_batch_size`](ProcessorConfigBuilder::max_batch_size) and
    /// [`vocab_size`](ProcessorConfigBuilder::vocab_size), optionally the
    /// [`device`](ProcessorConfigBuilder::device).
    pub fn builder() -> ProcessorConfigBuilder {
        ProcessorConfigBuilder::default()
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

    /// Whether `other` has the same capacity, vocabulary and device.
    pub fn same_as(&self, other: &ProcessorConfig) -> bool {
        self.max_batch_size == other.max_batch_size
            && self.vocab_size == other.vocab_size
            && self.device.same_device(&other.device)
    }

    /// Checks that `token`, from request parameter `param`, is a valid id for this vocabulary.
    ///
    /// # Errors
    ///
    /// [`ParamsError::TokenOutOfVocab`].
    pub fn check_token(&self, param: &'static str, token: u32) -> Result<(), ParamsError> {
        if (token as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(ParamsError::TokenOutOfVocab {
                param,
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
    /// A [`LogitsError`] naming what is wrong.
    ///
    /// # Example
    ///
    /// ```
    /// use candle_core::{Device, Tensor, DType};
    /// use logits_processors::{Error, LogitsError, ProcessorConfig};
    ///
    /// let config = ProcessorConfig::builder().max_batch_size(4).vocab_size(8).build()?;
    /// let logits = Tensor::zeros((2, 8), DType::F32, &Device::Cpu)?;
    /// config.check_logits(&logits, 2)?;
    /// assert!(matches!(
    ///     config.check_logits(&logits, 3),
    ///     Err(Error::Logits(LogitsError::Shape { rows: 2, .. }))
    /// ));
    /// # Ok::<(), logits_processors::Error>(())
    /// ```
    pub fn check_logits(&self, logits: &Tensor, batch_size: usize) -> Result<()> {
        let dims = logits.dims();
        let &[rows, width] = dims else {
            return Err(LogitsError::Rank {
                shape: dims.to_vec(),
            }
            .into());
        };
        if rows != batch_size || width != self.vocab_size {
            return Err(LogitsError::Shape {
                rows,
                width,
                batch_size,
                vocab_size: self.vocab_size,
            }
            .into());
        }
        if !matches!(logits.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(LogitsError::Dtype {
                dtype: logits.dtype(),
            }
            .into());
        }
        if !logits.is_contiguous() {
            return Err(LogitsError::NotContiguous.into());
        }
        if !logits.device().same_device(&self.device) {
            return Err(LogitsError::DeviceMismatch {
                expected: self.device.location(),
                got: logits.device().location(),
            }
            .into());
        }
        Ok(())
    }

    /// A [`ConfigError::StageMismatch`] unless `stage`'s configuration equals this one.
    pub(crate) fn check_stage(&self, name: &'static str, stage: &ProcessorConfig) -> Result<()> {
        if self.same_as(stage) {
            return Ok(());
        }
        Err(ConfigError::StageMismatch {
            stage: name,
            stage_rows: stage.max_batch_size,
            stage_vocab: stage.vocab_size,
            stage_device: stage.device.location(),
            rows: self.max_batch_size,
            vocab: self.vocab_size,
            device: self.device.location(),
        }
        .into())
    }
}
