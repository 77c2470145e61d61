//! Rotary position embeddings: the cosine and sine tables, computed once per model.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// RoPE cosine and sine tables `[positions, head_dim / 2]` in `dtype`, computed in f32 as Hugging
/// Face does: `inv_freq[i] = 1 / base^(2i / head_dim)`, angle `= position · inv_freq[i]`.
///
/// # Errors
/// Only on device allocation failures.
pub(crate) fn rope_tables(
    base: f64,
    head_dim: usize,
    positions: usize,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let to = |v: Vec<f32>| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, (positions, half), &Device::Cpu)?
            .to_device(device)?
            .to_dtype(dtype)?)
    };
    Ok((to(cos)?, to(sin)?))
}
