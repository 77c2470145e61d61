//! Matrix products on cuBLAS (candle's handle and stream) into buffers the caller owns.
//!
//! candle's `matmul` allocates its output on every call; the fused forward pass writes each
//! product into a buffer sized once, so it calls `cublasGemmEx` itself: 16-bit inputs, f32
//! accumulation (`CUBLAS_COMPUTE_32F`, as PyTorch), output in the model dtype or f32.

use std::ffi::c_void;

use candle_core::cuda_backend::cudarc::cublas::{result, sys, CudaBlas};

use crate::error::{Error, Result};

/// Element type of a matrix in device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F16,
    BF16,
    F32,
}

impl Elem {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Elem::F16 => sys::cudaDataType::CUDA_R_16F,
            Elem::BF16 => sys::cudaDataType::CUDA_R_16BF,
            Elem::F32 => sys::cudaDataType::CUDA_R_32F,
        }
    }
}

/// One row-major matrix operand: device address, element type and leading dimension (elements
/// between the starts of consecutive rows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat {
    pub(crate) ptr: u64,
    pub(crate) elem: Elem,
    pub(crate) ld: usize,
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (a linear layer without bias; `w` in candle's `[out, in]`
/// layout, contiguous), or with `accumulate` `y += x · wᵀ` (the residual add done by the
/// product's epilogue: `y + acc` in f32, rounded once), queued on the handle's stream.
///
/// # Safety
/// Every address must point to device memory holding the whole operand (`m` rows of `x` and `y`
/// at their leading dimensions, `n × k` of `w`) for as long as the stream runs the product, and
/// `y` must not overlap `x` or `w`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn linear(
    blas: &CudaBlas,
    m: usize,
    n: usize,
    k: usize,
    x: Mat,
    w: Mat,
    y: Mat,
    accumulate: bool,
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
    let int = |v: usize| {
        i32::try_from(v).map_err(|e| {
            Error::cuda(
                format!("cuBLAS GEMM {m}×{n}×{k}: matrix dimension over i32"),
                e,
            )
        })
    };
    // Column-major view: yᵀ[n, m] = w[k, n]ᵀ · xᵀ[k, m].
    result::gemm_ex(
        *blas.handle(),
        sys::cublasOperation_t::CUBLAS_OP_T,
        sys::cublasOperation_t::CUBLAS_OP_N,
        int(n)?,
        int(m)?,
        int(k)?,
        (&alpha as *const f32).cast::<c_void>(),
        w.ptr as *const c_void,
        w.elem.cuda(),
        int(w.ld)?,
        x.ptr as *const c_void,
        x.elem.cuda(),
        int(x.ld)?,
        (&beta as *const f32).cast::<c_void>(),
        y.ptr as *mut c_void,
        y.elem.cuda(),
        int(y.ld)?,
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    )
    .map_err(|e| Error::cuda(format!("cuBLAS GEMM {m}×{n}×{k}"), format!("{e:?}")))
}
