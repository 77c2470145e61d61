//! The bottom layer: device-resident tables and the fused in-place pass over the logits.
//!
//! This layer imports nothing above it: it knows tables of `u32`, logits of f32/f16/bf16 and
//! [`FusedOp`], not processors, requests or pipelines.
//!
//! A [`FusedOp`] applies any mix of the built-in effects to rows `0..batch` of contiguous
//! `[batch, vocab]` logits, in place, in two phases:
//!
//! 1. **sparse**: per row, only listed tokens are touched, in this order: bans (−inf), the
//!    global boost, the per-row bias, the penalties (whose token counts the phase first brings
//!    up to date from the step's logged output changes, see [`counts`]); each effect reads the
//!    logit, computes in f32 and stores it rounded to the logits' dtype;
//! 2. **dense**: keep-masks (a per-row id list or bitmask, a global id mask, the step's
//!    grammar bitmask) send every token outside their intersection to −inf, written without
//!    reading; then temperature (`x / T`, rounded) and min-p (`x < max + ln(min_p)` → −inf,
//!    on the tempered, rounded values; the row maximum is the maximum over the row's kept,
//!    tempered values, NaN ignored).
//!
//! Masks commute with the sparse effects and with temperature, so this order is the order of
//! vLLM's sampler (allowed ids, bad words, min tokens, logit bias, penalties, temperature,
//! min-p) for every mix of them.
//!
//! On the CPU the op runs in [`cpu`]; on CUDA (`cuda`, behind the `cuda` feature) as at most
//! two launches (sparse, dense: with min-p, one launch whose blocks exchange their chunks'
//! maxima, so kept logits are read once), with no host synchronisation.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor};

pub(crate) mod counts;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod table;

use counts::CountTable;
use table::RowTable;

/// Header of a per-row keep table row stored as a bitmask (the words follow).
pub(crate) const KEEP_BITMASK: u32 = u32::MAX;
/// Keep sets up to this size are stored as sorted id lists; larger ones as bitmasks.
pub(crate) const KEEP_LIST_MAX: usize = 64;
/// The penalty slot of a row without one.
pub(crate) const NO_SLOT: u32 = u32::MAX;
/// `ln(min_p)` of a row without min-p.
pub(crate) const NO_MIN_P: f32 = f32::NEG_INFINITY;

/// What the global id set does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum IdsMode {
    /// Add this value to the listed ids' logits.
    Boost(f32),
    /// Send every logit not listed to −inf.
    Mask,
}

/// A global id set: the sorted distinct `ids`, the same set as a `bits` mask over the
/// vocabulary (bit `t % 32` of word `t / 32`), and the mode.
#[derive(Clone, Copy)]
pub(crate) struct IdsSpec<'a> {
    pub(crate) ids: &'a RowTable,
    pub(crate) n_ids: usize,
    pub(crate) bits: &'a RowTable,
    pub(crate) mode: IdsMode,
}

impl<'a> IdsSpec<'a> {
    pub(crate) fn ids(&self) -> &'a [u32] {
        &self.ids.host()[..self.n_ids]
    }
}

/// The step's grammar bitmask: `[batch, ceil(vocab / 32)]` words (a host table or a `u32`
/// tensor on the logits' device), applied to the rows whose `active` word is non-zero.
#[derive(Clone, Copy)]
pub(crate) enum StepMask<'a> {
    Table {
        words: &'a RowTable,
        active: &'a RowTable,
    },
    Tensor {
        words: &'a Tensor,
        active: &'a RowTable,
    },
}

impl<'a> StepMask<'a> {
    pub(crate) fn active(self) -> &'a RowTable {
        match self {
            StepMask::Table { active, .. } | StepMask::Tensor { active, .. } => active,
        }
    }
}

/// Penalties: `params` rows are `[repetition, frequency, presence]` as f32 bits and the row's
/// slot in `counts` ([`NO_SLOT`] for none); `counts` holds each slot's token counts and the log
/// of changes that the sparse phase applies before the penalties (see [`counts`]).
#[derive(Clone, Copy)]
pub(crate) struct PenaltySpec<'a> {
    pub(crate) counts: &'a CountTable,
    pub(crate) params: &'a RowTable,
}

/// The fused effect of the built-ins on rows `0..batch`. Every part is optional.
///
/// Table layouts (one row per batch row):
/// - `keep`: `[n, id_0, …]` (sorted, distinct; `n == 0` leaves the row alone) or
///   `[KEEP_BITMASK, word_0, …]`;
/// - `bans[i]`: `[n, id_0, …]`;
/// - `bias`: `[n, id_0, bias_0 (f32 bits), …]`;
/// - `temperature`: `[T (f32 bits)]`, 1.0 leaves the row alone;
/// - `min_p`: `[ln(min_p) (f32 bits)]`, [`NO_MIN_P`] leaves the row alone.
#[derive(Clone, Copy)]
pub(crate) struct FusedOp<'a> {
    pub(crate) batch: usize,
    pub(crate) vocab: usize,
    pub(crate) keep: Option<&'a RowTable>,
    pub(crate) ids: Option<IdsSpec<'a>>,
    pub(crate) step_mask: Option<StepMask<'a>>,
    pub(crate) bans: [Option<&'a RowTable>; 2],
    pub(crate) bias: Option<&'a RowTable>,
    pub(crate) penalties: Option<PenaltySpec<'a>>,
    pub(crate) temperature: Option<&'a RowTable>,
    pub(crate) min_p: Option<&'a RowTable>,
}

impl<'a> FusedOp<'a> {
    /// An op that does nothing to rows `0..batch` of `[batch, vocab]` logits.
    pub(crate) fn new(batch: usize, vocab: usize) -> Self {
        Self {
            batch,
            vocab,
            keep: None,
            ids: None,
            step_mask: None,
            bans: [None, None],
            bias: None,
            penalties: None,
            temperature: None,
            min_p: None,
        }
    }

    /// Whether the op has no part.
    pub(crate) fn is_empty(&self) -> bool {
        self.keep.is_none()
            && self.ids.is_none()
            && self.step_mask.is_none()
            && self.bans.iter().all(Option::is_none)
            && self.bias.is_none()
            && self.penalties.is_none()
            && self.temperature.is_none()
            && self.min_p.is_none()
    }

    /// Applies the op to `logits` in place. The caller has checked shape, dtype, contiguity and
    /// device.
    pub(crate) fn run(&self, logits: &Tensor) -> Result<()> {
        if self.batch == 0 || self.is_empty() {
            return Ok(());
        }
        match self.step_mask {
            Some(StepMask::Tensor { words, .. }) => logits.inplace_op2(words, self),
            _ => logits.inplace_op1(self),
        }
    }
}

fn contiguous(layout: &Layout) -> Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("logits must be contiguous".into()))
}

impl InplaceOp1 for FusedOp<'_> {
    fn name(&self) -> &'static str {
        "logits-processors-fused"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (start, end) = contiguous(layout)?;
        cpu::run_storage(self, storage, start, end, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        cuda::run(self, storage, layout, None)
    }
}

impl InplaceOp2 for FusedOp<'_> {
    fn name(&self) -> &'static str {
        "logits-processors-fused-mask"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        mask: &CpuStorage,
        mask_layout: &Layout,
    ) -> Result<()> {
        let (start, end) = contiguous(layout)?;
        let (ms, me) = mask_layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("the bitmask must be contiguous".into()))?;
        let CpuStorage::U32(words) = mask else {
            candle_core::bail!("the bitmask must be a u32 tensor");
        };
        cpu::run_storage(self, storage, start, end, Some(&words[ms..me]))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
        mask: &candle_core::CudaStorage,
        mask_layout: &Layout,
    ) -> Result<()> {
        cuda::run(self, storage, layout, Some((mask, mask_layout)))
    }
}
