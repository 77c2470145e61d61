//! Where a model's weights come from: a Hugging Face directory ([`crate::weights`]) or a GGUF
//! file ([`crate::gguf`]), both read under Hugging Face tensor names.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::linear::Linear;

/// Tensors of a checkpoint, by Hugging Face name (`model.layers.3.mlp.up_proj`).
pub(crate) trait WeightSource {
    /// A float tensor of `shape` on `device` in `dtype` (embeddings, norms, biases).
    fn dense(&self, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor>;

    /// The linear layer `prefix` with `out_f` outputs and `in_f` inputs.
    fn linear(
        &self,
        prefix: &str,
        out_f: usize,
        in_f: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Linear>;
}
