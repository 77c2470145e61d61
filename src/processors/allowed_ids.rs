//! [`AllowedIds`]: one global list of token ids, boosted or kept alone.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ConfigError, Result};
use crate::kernels::table::RowTable;
use crate::kernels::{IdsMode, IdsSpec};
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics};

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
/// `AllowedIds` reads no request parameters. In boost mode it is a **global logit bias** (the
/// same `{id: boost}` for every request; per-request biases are vLLM's `logit_bias`). In mask
/// mode it is a global allow-list; the per-request allow-list, vLLM's `allowed_token_ids`, is
/// [`ForceToken`](crate::ForceToken).
///
/// # State and cost
///
/// The sorted ids and a vocabulary bitmask live on the configured device, uploaded once at
/// construction; [`update_state`](LogitsProcessor::update_state) only tracks the batch size
/// (O(changes), no device work). In boost mode [`apply`](LogitsProcessor::apply) touches
/// `batch × ids` elements; in mask mode it writes −inf over every row's unlisted logits,
/// without reading them where a whole group of them is unlisted.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::{AllowedIds, AllowedMode, BatchUpdate, LogitsProcessor, ProcessorConfig};
///
/// let config = ProcessorConfig::builder().max_batch_size(4).vocab_size(4).build()?;
/// let mut boost = AllowedIds::new(&config, [2], AllowedMode::Boost(100.0))?;
/// let mut b = logits_processors::BatchUpdateBuilder::new();
/// b.add(0, Arc::new(Default::default()));
/// boost.update_state(b.build(1))?;
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
    /// [`ConfigError::TokenOutOfVocab`] for an id outside the vocabulary;
    /// [`ConfigError::EmptyTokenSet`] for an empty list in mask mode (it would mask everything);
    /// [`ConfigError::NotFinite`] for a non-finite boost; a device error while uploading.
    pub fn new(
        config: &ProcessorConfig,
        ids: impl IntoIterator<Item = u32>,
        mode: AllowedMode,
    ) -> Result<Self> {
        let mut ids: Vec<u32> = ids.into_iter().collect();
        for &t in &ids {
            if t as usize >= config.vocab_size() {
                return Err(ConfigError::TokenOutOfVocab {
                    what: "AllowedIds",
                    token: t,
                    vocab_size: config.vocab_size(),
                }
                .into());
            }
        }
        ids.sort_unstable();
        ids.dedup();
        match mode {
            AllowedMode::Mask if ids.is_empty() => {
                return Err(ConfigError::EmptyTokenSet {
                    what: "AllowedIds in mask mode",
                }
                .into())
            }
            AllowedMode::Boost(b) if !b.is_finite() => {
                return Err(ConfigError::NotFinite {
                    what: "AllowedIds boost",
                    value: b,
                }
                .into())
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

    fn spec(&self) -> IdsSpec<'_> {
        IdsSpec {
            ids: &self.ids,
            n_ids: self.n_ids,
            bits: &self.bits,
            mode: match self.mode {
                AllowedMode::Boost(b) => IdsMode::Boost(b),
                AllowedMode::Mask => IdsMode::Mask,
            },
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

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Builtin for AllowedIds {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        match self.mode {
            AllowedMode::Boost(_) if self.n_ids == 0 => None,
            _ => Some(Part::Ids(self.spec())),
        }
    }
}
