//! [`AllowedIds`]: one global list of token ids, boosted or kept alone.

use candle_core::Tensor;

use crate::batch::BatchUpdate;
use crate::error::{Error, Result};
use crate::kernels::{AllowedSpec, FusionPart, MaskOp, Part};
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::processor::{LogitsProcessor, ProcessorConfig};
use crate::table::RowTable;

/// What [`AllowedIds`] does to its ids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AllowedMode {
    /// Add this value to the listed ids' logits in every row (the Python original used +100).
    Boost(f32),
    /// Send every logit *not* listed to −inf in every row.
    Mask,
}

/// Applies one global list of token ids to every row of the batch: either a boost added to
/// their logits ([`AllowedMode::Boost`]) or a mask that leaves only them
/// ([`AllowedMode::Mask`]).
///
/// # State and cost
///
/// The sorted ids and a vocabulary bitmask live on the configured device, uploaded once at
/// construction; [`update_state`](LogitsProcessor::update_state) only tracks the batch size
/// (O(changes), no device work). In boost mode [`apply`](LogitsProcessor::apply) touches
/// `batch × ids` elements; in mask mode it writes −inf over every row without reading it.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::{AllowedIds, AllowedMode, BatchUpdate, LogitsProcessor, ProcessorConfig};
///
/// let config = ProcessorConfig::new(4, 4, Device::Cpu)?;
/// let mut boost = AllowedIds::new(&config, [2], AllowedMode::Boost(100.0))?;
/// let mut b = logits_processors::BatchUpdateBuilder::new();
/// b.add(0, Arc::new(Default::default()), None, Default::default());
/// boost.update_state(b.build(1).as_ref())?;
/// let logits = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu)?;
/// boost.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[1., 2., 103., 4.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct AllowedIds {
    config: ProcessorConfig,
    mode: AllowedMode,
    ids: RowTable,
    n_ids: usize,
    bits: RowTable,
    ledger: RowLedger<()>,
}

impl AllowedIds {
    /// An AllowedIds for `config` with the given ids (any order; duplicates ignored).
    ///
    /// # Errors
    ///
    /// [`Error::TokenOutOfVocab`] for an id outside the vocabulary; [`Error::EmptyTokenSet`] for
    /// an empty list in mask mode (it would mask everything); [`Error::Config`] for a
    /// non-finite boost; a device error while uploading the ids.
    pub fn new(
        config: &ProcessorConfig,
        ids: impl IntoIterator<Item = u32>,
        mode: AllowedMode,
    ) -> Result<Self> {
        let mut ids: Vec<u32> = ids.into_iter().collect();
        for &t in &ids {
            config.check_token(t)?;
        }
        ids.sort_unstable();
        ids.dedup();
        match mode {
            AllowedMode::Mask if ids.is_empty() => {
                return Err(Error::EmptyTokenSet {
                    what: "AllowedIds in mask mode",
                })
            }
            AllowedMode::Boost(b) if !b.is_finite() => {
                return Err(Error::Config(format!("AllowedIds boost {b} is not finite")))
            }
            _ => {}
        }
        let mut bits = vec![0u32; config.vocab_size().div_ceil(32)];
        for &t in &ids {
            bits[(t / 32) as usize] |= 1 << (t % 32);
        }
        Ok(Self {
            config: config.clone(),
            mode,
            n_ids: ids.len(),
            ids: RowTable::from_values(&ids, config.device())?,
            bits: RowTable::from_values(&bits, config.device())?,
            ledger: RowLedger::new(config.max_batch_size()),
        })
    }

    /// The ids, sorted and distinct.
    pub fn ids(&self) -> &[u32] {
        &self.ids.host()[..self.n_ids]
    }

    /// The mode.
    pub fn mode(&self) -> AllowedMode {
        self.mode
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    fn spec(&self) -> AllowedSpec<'_> {
        AllowedSpec {
            ids: &self.ids,
            n_ids: self.n_ids,
            bits: &self.bits,
            mode: self.mode,
        }
    }
}

impl LogitsProcessor for AllowedIds {
    fn name(&self) -> &'static str {
        "AllowedIds"
    }

    /// AllowedIds reads no per-request parameters: always `Ok`.
    fn validate_params(&self, _params: &RequestParams) -> Result<()> {
        Ok(())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.ledger.apply(update, |_| Ok(None))
    }

    fn apply(&mut self, logits: &Tensor) -> Result<()> {
        self.config.check_logits(logits, self.ledger.batch_size())?;
        MaskOp {
            batch: self.ledger.batch_size(),
            vocab: self.config.vocab_size(),
            force: None,
            allowed: Some(self.spec()),
        }
        .run(logits)
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn fusion_part(&self) -> Option<FusionPart<'_>> {
        Some(FusionPart(Part::Allowed(self.spec())))
    }
}
