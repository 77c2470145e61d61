//! A linear layer without bias, whatever its storage: the one place that knows how weights are
//! held and multiplied.
//!
//! Safetensors floats and AWQ (dequantized at load) are [`Linear::Dense`]; GGUF's block-quantized
//! layers (Q4_K, Q6_K, Q8_0, …) are [`Linear::Quantized`] and multiply through candle's
//! `QMatMul` without being dequantized. Callers only use [`Linear::forward`] and
//! [`Linear::stack`].

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor, D};

use crate::error::{ensure, Error, Result};

/// A linear map `y = x · Wᵀ` (no bias; Qwen2's q/k/v biases are added by the layer).
#[derive(Debug, Clone)]
pub enum Linear {
    /// A dense weight in candle's linear layout `[out_features, in_features]`, in the compute
    /// dtype.
    Dense(Tensor),
    /// A GGUF block-quantized weight `[out_features, in_features]`, multiplied by candle's
    /// quantized matmul in f32 (the input is cast to f32 and the output back).
    Quantized(QMatMul),
    /// Several layers over the same input, outputs concatenated along the last dimension (what
    /// [`Linear::stack`] makes of layers that cannot be concatenated into one weight).
    Stacked(Vec<Linear>),
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
            Linear::Quantized(q) => {
                let y = q.forward(&x.to_dtype(DType::F32)?)?;
                Ok(y.to_dtype(x.dtype())?)
            }
            Linear::Stacked(parts) => {
                let outs = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&outs, D::Minus1)?)
            }
        }
    }

    /// The dense `[out_features, in_features]` weight, if the layer is stored dense (the fused
    /// CUDA path multiplies such weights with cuBLAS directly).
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(w) => Some(w),
            Linear::Quantized(_) | Linear::Stacked(_) => None,
        }
    }

    /// `(out_features, in_features)`.
    ///
    /// # Errors
    /// Only if the weight is not a matrix (never for layers built by this crate).
    pub fn shape(&self) -> Result<(usize, usize)> {
        match self {
            Linear::Dense(w) => Ok(w.dims2()?),
            Linear::Quantized(QMatMul::QTensor(q)) => Ok(q.shape().dims2()?),
            Linear::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => Ok(w.dims2()?),
            Linear::Stacked(parts) => {
                let mut out = 0;
                let mut inputs = 0;
                for p in parts {
                    let (o, i) = p.shape()?;
                    out += o;
                    inputs = i;
                }
                Ok((out, inputs))
            }
        }
    }

    /// One layer computing all of `parts` at once: their outputs concatenated in order (used for
    /// the q/k/v projections). Dense parts become one weight (one GEMM instead of three); other
    /// parts are kept side by side ([`Linear::Stacked`]).
    ///
    /// # Errors
    /// `parts` is empty or its layers have different `in_features`.
    pub fn stack(parts: &[Linear]) -> Result<Linear> {
        ensure!(
            !parts.is_empty(),
            Error::InvalidInput("cannot stack zero linear layers".into())
        );
        let inputs = parts[0].shape()?.1;
        let mut dense = Vec::with_capacity(parts.len());
        for p in parts {
            ensure!(
                p.shape()?.1 == inputs,
                Error::InvalidInput(
                    "cannot stack linear layers with different input widths".into()
                )
            );
            if let Linear::Dense(w) = p {
                dense.push(w);
            }
        }
        if dense.len() == parts.len() {
            Ok(Linear::Dense(Tensor::cat(&dense, 0)?))
        } else {
            Ok(Linear::Stacked(parts.to_vec()))
        }
    }
}
