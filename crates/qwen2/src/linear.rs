//! A linear layer without bias, whatever its storage: the one place that knows how weights are
//! held and multiplied.
//!
//! Today every checkpoint format ends up [`Linear::Dense`] (safetensors floats as stored, AWQ
//! dequantized at load). A block-quantized variant that multiplies without dequantizing (GGUF's
//! k-quants through candle's `QMatMul`) is one more arm of the enum; callers only use
//! [`Linear::forward`] and [`Linear::stack`].

use anyhow::{ensure, Result};
use candle_core::{Module, Tensor};

/// A linear map `y = x · Wᵀ` (no bias; Qwen2's q/k/v biases are added by the layer).
#[derive(Debug, Clone)]
pub enum Linear {
    /// A dense weight in candle's linear layout `[out_features, in_features]`, in the compute
    /// dtype.
    Dense(Tensor),
}

impl Linear {
    /// Applies the layer to `x` of shape `[.., in_features]`; returns `[.., out_features]`.
    ///
    /// # Errors
    /// The last dimension of `x` is not `in_features`, or its dtype or device differ from the
    /// weight's.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => Ok(candle_nn::Linear::new(w.clone(), None).forward(x)?),
        }
    }

    /// The dense `[out_features, in_features]` weight, if the layer is stored dense (the fused
    /// CUDA path multiplies such weights with cuBLAS directly).
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(w) => Some(w),
        }
    }

    /// `(out_features, in_features)`.
    ///
    /// # Errors
    /// Only if the weight is not a matrix (never for layers built by this crate).
    pub fn shape(&self) -> Result<(usize, usize)> {
        match self {
            Linear::Dense(w) => Ok(w.dims2()?),
        }
    }

    /// One layer computing all of `parts` at once: their outputs concatenated in order (used for
    /// the q/k/v projections, which then take one GEMM instead of three).
    ///
    /// # Errors
    /// `parts` is empty or its layers have different `in_features`.
    pub fn stack(parts: &[Linear]) -> Result<Linear> {
        ensure!(!parts.is_empty(), "cannot stack zero linear layers");
        let inputs = parts[0].shape()?.1;
        let mut dense = Vec::with_capacity(parts.len());
        for p in parts {
            ensure!(
                p.shape()?.1 == inputs,
                "cannot stack linear layers with different input widths"
            );
            match p {
                Linear::Dense(w) => dense.push(w),
            }
        }
        Ok(Linear::Dense(Tensor::cat(&dense, 0)?))
    }
}
