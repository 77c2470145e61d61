//! The model's CUDA kernels: the attention softmax as one fused, in-place pass
//! (`causal_softmax.cu`, compiled by NVRTC at first use).
//!
//! The unfused path (cast the scores to f32, add the mask, softmax, cast back) moves each score
//! through memory about five times; this kernel reads a row of scores and writes the
//! probabilities over it, computing in f32. The mask is causal only: with right padding a real
//! query `i < len` sees keys `j <= i`, all real, and padded queries' outputs are never read
//! (the reasoning of [`crate::attention`]).

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, InplaceOp1, Layout};

/// Threads per block (the kernel's `THREADS`).
const THREADS: u32 = 256;
/// CUDA C source of the kernels.
const SOURCE: &str = include_str!("causal_softmax.cu");

/// PTX of `SOURCE`, compiled by NVRTC on first use.
static PTX: OnceLock<Result<String, String>> = OnceLock::new();

/// Softmax over each row of `[.., len]` scores whose row `r` is query `q0 + r % chunk`.
pub(crate) struct CausalSoftmax {
    pub(crate) len: usize,
    pub(crate) chunk: usize,
    pub(crate) q0: usize,
}

impl InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "qwen2-prefill-causal-softmax"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the fused causal softmax runs on CUDA only")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("attention scores must be contiguous");
        };
        if self.len == 0 || (end - start) % self.len != 0 || self.q0 + self.chunk != self.len {
            candle_core::bail!("attention scores do not have the expected shape");
        }
        let rows = (end - start) / self.len;
        let ptx = PTX
            .get_or_init(|| {
                candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
                    .map(|p| p.to_src())
                    .map_err(|e| format!("compiling the causal softmax: {e}"))
            })
            .as_ref()
            .map_err(|e| candle_core::Error::Msg(e.clone()))?;
        let dev = storage.device.clone();
        let name = match &storage.slice {
            CudaStorageSlice::F32(_) => "causal_softmax_f32",
            CudaStorageSlice::F16(_) => "causal_softmax_f16",
            CudaStorageSlice::BF16(_) => "causal_softmax_bf16",
            _ => candle_core::bail!("attention scores must be f32, f16 or bf16"),
        };
        let func = dev.get_or_load_custom_func(name, "qwen2_prefill_causal_softmax", ptx)?;
        let (rows32, len32, chunk32, q032) = (
            rows as u32,
            self.len as u32,
            self.chunk as u32,
            self.q0 as u32,
        );
        let cfg = LaunchConfig {
            grid_dim: ((rows as u32).clamp(1, 1 << 20), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        macro_rules! launch {
            ($s:expr) => {{
                let mut view = $s.slice_mut(start..end);
                builder.arg(&mut view);
                builder.arg(&rows32);
                builder.arg(&len32);
                builder.arg(&chunk32);
                builder.arg(&q032);
                // SAFETY: the arguments match the kernel's signature and it stays inside
                // the `rows × len` view it is given.
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match &mut storage.slice {
            CudaStorageSlice::F32(s) => launch!(s),
            CudaStorageSlice::F16(s) => launch!(s),
            CudaStorageSlice::BF16(s) => launch!(s),
            _ => unreachable!("dtype checked above"),
        }
        Ok(())
    }
}
