//! The bottom layer: device-resident tables and the in-place kernels over the logits.
//!
//! This layer imports nothing above it: it knows tables of `u32`, logits of f32/f16/bf16 and
//! the ops below, not processors, requests or pipelines.
//!
//! [`MaskOp`] is "per row, send every logit outside a keep-set to −inf, and optionally add a
//! boost to some ids", for a per-row keep-set table and a global id set, in one pass over the
//! logits, in place: on the CPU with [`cpu`], on CUDA with one fused kernel launch (`cuda`,
//! behind the `cuda` feature). The two effects commute, so their order does not matter.

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod table;

use table::RowTable;

/// What the global id set does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum IdsMode {
    /// Add this value to the listed ids' logits.
    Boost(f32),
    /// Send every logit not listed to −inf.
    Mask,
}

/// A per-row keep-set: `table` rows are `[count, id_0, …, id_{count-1}, …]`, ids sorted and
/// distinct; `count == 0` leaves the row untouched.
#[derive(Clone, Copy)]
pub(crate) struct ForceSpec<'a> {
    pub(crate) table: &'a RowTable,
}

/// A global id set: the sorted distinct `ids`, the same set as a `bits` mask over the
/// vocabulary (bit `t % 32` of word `t / 32`), and the mode.
#[derive(Clone, Copy)]
pub(crate) struct AllowedSpec<'a> {
    pub(crate) ids: &'a RowTable,
    pub(crate) n_ids: usize,
    pub(crate) bits: &'a RowTable,
    pub(crate) mode: IdsMode,
}

impl<'a> AllowedSpec<'a> {
    pub(crate) fn ids(&self) -> &'a [u32] {
        &self.ids.host()[..self.n_ids]
    }

    pub(crate) fn contains(&self, token: u32) -> bool {
        let words = self.bits.host();
        words[(token / 32) as usize] >> (token % 32) & 1 == 1
    }
}

/// The fused effect of at most one keep-set table and one global id set on rows `0..batch`.
#[derive(Clone, Copy)]
pub(crate) struct MaskOp<'a> {
    pub(crate) batch: usize,
    pub(crate) vocab: usize,
    pub(crate) force: Option<ForceSpec<'a>>,
    pub(crate) allowed: Option<AllowedSpec<'a>>,
}

impl MaskOp<'_> {
    /// Applies the op to `logits` in place. The caller has checked shape, dtype, contiguity and
    /// device.
    pub(crate) fn run(&self, logits: &Tensor) -> Result<()> {
        if self.batch == 0 || (self.force.is_none() && self.allowed.is_none()) {
            return Ok(());
        }
        logits.inplace_op1(self)
    }
}

impl InplaceOp1 for MaskOp<'_> {
    fn name(&self) -> &'static str {
        "logits-processors-mask"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("logits must be contiguous");
        };
        match storage {
            CpuStorage::F32(v) => cpu::mask(self, &mut v[start..end]),
            CpuStorage::F16(v) => cpu::mask(self, &mut v[start..end]),
            CpuStorage::BF16(v) => cpu::mask(self, &mut v[start..end]),
            _ => candle_core::bail!("unsupported logits dtype (f32, f16 or bf16 only)"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        cuda::mask(self, storage, layout)
    }
}
