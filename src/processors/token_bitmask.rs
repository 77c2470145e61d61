//! [`TokenBitmask`]: a grammar engine's per-step allowed-token bitmask.

use candle_core::{DType, Tensor};

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{LogitsError, Result};
use crate::kernels::table::RowTable;
use crate::kernels::StepMask;
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics};

/// A grammar engine's per-step mask (structured output: llguidance, xgrammar, outlines), in
/// their layout: `u32` words `[batch_size, ceil(vocab / 32)]`, bit `i` of word `w` allows token
/// `32·w + i`. Every token whose bit is 0 becomes −inf in the rows the mask is given for; other
/// rows are untouched.
///
/// The engine hands the mask over each step, before `apply`, as a host slice
/// ([`set_host`](Self::set_host): one upload) or a `u32` tensor already on the logits' device
/// ([`set_tensor`](Self::set_tensor): read in place by the kernel, no copy). A mask is used by
/// the next `apply` only, then dropped. In a [`Pipeline`](crate::Pipeline), reach the stage with
/// [`Pipeline::token_bitmask_mut`](crate::Pipeline::token_bitmask_mut). A complete engine loop
/// fed by llguidance matchers (JSON schema, Lark, regex) is `examples/grammar.rs` in the
/// repository; `docs/processors.md` says what to get right (rows after the update, the model's
/// vocabulary width, llguidance's spare word).
///
/// # Cost
///
/// `set_host`: on CUDA, one copy of the rows from the lowest to the highest masked one;
/// `set_tensor`: no copy. `apply`: masked-out tokens are written without being read where a
/// whole group is masked (16 bytes on CUDA, a 32-token word on the CPU); on CUDA a group that
/// allows everything is not touched (unless temperature or min-p rewrite the row), on the CPU
/// allowed words are read and written back.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(2).vocab_size(4).build()?;
/// let mut mask = TokenBitmask::new(&config)?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new()));
/// b.add(1, Arc::new(RequestParams::new()));
/// mask.update_state(b.build(2))?;
/// // row 0 allows tokens 1 and 2 (bits 0b0110); row 1 has no grammar.
/// mask.set_host(&[0b0110, 0], &[0])?;
/// let logits = Tensor::new(&[[0f32, 1., 2., 3.], [0., 1., 2., 3.]], &Device::Cpu)?;
/// mask.apply(&logits)?;
/// let neg = f32::NEG_INFINITY;
/// assert_eq!(logits.to_vec2::<f32>()?, [[neg, 1., 2., neg], [0., 1., 2., 3.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct TokenBitmask {
    config: ProcessorConfig,
    ledger: RowLedger<()>,
    words: RowTable,
    active: RowTable,
    active_rows: Vec<usize>,
    /// Per row, the `stamp` of the last `activate` that listed it.
    marks: Vec<u32>,
    stamp: u32,
    tensor: Option<Tensor>,
    set: bool,
}

impl TokenBitmask {
    /// A TokenBitmask for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating (`max_batch_size × ceil(vocab / 32)` words).
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        let rows = config.max_batch_size();
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(rows),
            words: RowTable::new(rows, config.vocab_size().div_ceil(32), 0, config.device())?,
            active: RowTable::new(rows, 1, 0, config.device())?,
            active_rows: Vec::new(),
            marks: vec![0; rows],
            stamp: 0,
            tensor: None,
            set: false,
        })
    }

    /// Words per row: `ceil(vocab / 32)`.
    pub fn words_per_row(&self) -> usize {
        self.config.vocab_size().div_ceil(32)
    }

    fn check_rows(&self, rows: &[usize]) -> Result<()> {
        let batch_size = self.ledger.batch_size();
        match rows.iter().find(|&&r| r >= batch_size) {
            Some(&row) => Err(LogitsError::BitmaskRow { row, batch_size }.into()),
            None => Ok(()),
        }
    }

    /// Flags `rows` as the rows with a mask, clearing the previous step's others. Only flags
    /// that change are written, so a step that masks the same rows as the last one queues no
    /// device write (no copy, no scatter launch). No allocation once warm.
    fn activate(&mut self, rows: &[usize]) -> Result<()> {
        self.stamp = self.stamp.wrapping_add(1);
        for &r in rows {
            self.marks[r] = self.stamp;
            self.active.set(r, 0, 1);
        }
        for &r in &self.active_rows {
            if self.marks[r] != self.stamp {
                self.active.set(r, 0, 0);
            }
        }
        self.active_rows.clear();
        self.active_rows.extend_from_slice(rows);
        Ok(self.active.sync()?)
    }

    /// Sets the next `apply`'s mask from host words `[batch_size, words_per_row]` (row-major),
    /// applied to `rows` only.
    ///
    /// # Errors
    ///
    /// [`LogitsError::BitmaskShape`] if `words` is not `batch_size × words_per_row` long,
    /// [`LogitsError::BitmaskRow`] for a row not below the batch size; a device error.
    ///
    /// # Cost
    ///
    /// A host copy of the listed rows' words; on CUDA, one asynchronous upload of the table's
    /// rows from the lowest to the highest listed one, and a flag write per row whose masked
    /// state differs from the last mask's (none for the same rows), sent with the step's queued
    /// writes. No allocation once warm, no synchronisation.
    pub fn set_host(&mut self, words: &[u32], rows: &[usize]) -> Result<()> {
        let (batch, wpr) = (self.ledger.batch_size(), self.words_per_row());
        if words.len() != batch * wpr {
            return Err(LogitsError::BitmaskShape {
                shape: vec![words.len()],
                batch_size: batch,
                words_per_row: wpr,
            }
            .into());
        }
        self.check_rows(rows)?;
        for &r in rows {
            self.words
                .row_mut(r)
                .copy_from_slice(&words[r * wpr..(r + 1) * wpr]);
        }
        self.words.sync()?;
        self.activate(rows)?;
        self.tensor = None;
        self.set = true;
        Ok(())
    }

    /// Sets the next `apply`'s mask from a contiguous `u32` tensor `[batch_size, words_per_row]`
    /// on the logits' device (read in place), applied to `rows` only.
    ///
    /// # Errors
    ///
    /// [`LogitsError::BitmaskShape`], [`LogitsError::BitmaskDtype`], [`LogitsError::NotContiguous`],
    /// [`LogitsError::DeviceMismatch`] or [`LogitsError::BitmaskRow`]; a device error.
    ///
    /// # Cost
    ///
    /// No copy of the mask (the tensor is kept, one reference count): O(listed rows + the last
    /// mask's rows) on the host, and a device flag write only for rows whose masked state
    /// differs from the last mask's, sent with the step's queued writes (none for the same
    /// rows). No allocation once warm, no synchronisation.
    pub fn set_tensor(&mut self, words: &Tensor, rows: &[usize]) -> Result<()> {
        let (batch, wpr) = (self.ledger.batch_size(), self.words_per_row());
        if words.dims() != [batch, wpr] {
            return Err(LogitsError::BitmaskShape {
                shape: words.dims().to_vec(),
                batch_size: batch,
                words_per_row: wpr,
            }
            .into());
        }
        if words.dtype() != DType::U32 {
            return Err(LogitsError::BitmaskDtype {
                dtype: words.dtype(),
            }
            .into());
        }
        if !words.is_contiguous() {
            return Err(LogitsError::NotContiguous.into());
        }
        if !words.device().same_device(self.config.device()) {
            return Err(LogitsError::DeviceMismatch {
                expected: self.config.device().location(),
                got: words.device().location(),
            }
            .into());
        }
        self.check_rows(rows)?;
        self.activate(rows)?;
        self.tensor = Some(words.clone());
        self.set = true;
        Ok(())
    }

    /// Drops the mask set for the next `apply`, if any.
    pub fn clear(&mut self) {
        self.tensor = None;
        self.set = false;
    }
}

impl LogitsProcessor for TokenBitmask {
    fn name(&self) -> &'static str {
        "TokenBitmask"
    }

    /// Reads no request parameters: always `Ok`.
    fn validate_params(&self, _params: &RequestParams) -> Result<()> {
        Ok(())
    }

    /// Follows the batch size; a mask set before the update is dropped (its rows may have
    /// moved).
    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.ledger.apply(update, |_| Ok(None))?;
        if update.is_some() {
            self.clear();
        }
        Ok(())
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Builtin for TokenBitmask {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        if !self.set {
            return None;
        }
        Some(Part::StepMask(match &self.tensor {
            Some(t) => StepMask::Tensor {
                words: t,
                active: &self.active,
            },
            None => StepMask::Table {
                words: &self.words,
                active: &self.active,
            },
        }))
    }

    fn finish_step(&mut self) {
        self.clear();
    }

    fn as_token_bitmask(&mut self) -> Option<&mut TokenBitmask> {
        Some(self)
    }
}
