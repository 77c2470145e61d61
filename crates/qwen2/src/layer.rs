//! One Qwen2 decoder layer: RMSNorm → q/k/v (with bias) → RoPE → attention → o_proj → residual,
//! then RMSNorm → SiLU-gated MLP → residual.

use candle_core::Tensor;

use crate::attention::{attention, Dims, Masks};
use crate::error::Result;
use crate::linear::Linear;

/// One decoder layer's weights.
pub(crate) struct Layer {
    pub(crate) input_norm: Tensor,
    pub(crate) post_attention_norm: Tensor,
    /// q, k and v projections stacked: `[(heads + 2·kv_heads)·head_dim, hidden]`.
    pub(crate) qkv: Linear,
    /// Their biases stacked the same way.
    pub(crate) qkv_bias: Tensor,
    pub(crate) o_proj: Linear,
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Layer {
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        d: &Dims,
        rope: (&Tensor, &Tensor),
        masks: &Masks,
    ) -> Result<Tensor> {
        let (b, t, nh, nkv, hd) = (d.batch, d.seq, d.heads, d.kv_heads, d.head_dim);
        let h = candle_nn::ops::rms_norm(x, &self.input_norm, d.eps)?;
        let qkv = self
            .qkv
            .forward(&h)?
            .broadcast_add(&self.qkv_bias)?
            .reshape((b, t, nh + 2 * nkv, hd))?;
        let q = qkv.narrow(2, 0, nh)?.transpose(1, 2)?.contiguous()?;
        let k = qkv.narrow(2, nh, nkv)?.transpose(1, 2)?.contiguous()?;
        let v = qkv
            .narrow(2, nh + nkv, nkv)?
            .transpose(1, 2)?
            .contiguous()?;
        drop(qkv);
        let (cos, sin) = rope;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let q = (q * (1.0 / (hd as f64).sqrt()))?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let attn = attention(&q, &k, &v, d, masks)?;
        let x = (x + self.o_proj.forward(&attn)?)?;

        let h = candle_nn::ops::rms_norm(&x, &self.post_attention_norm, d.eps)?;
        // Separate gate and up matmuls keep the element-wise ops on contiguous tensors.
        let gate = self.gate_proj.forward(&h)?;
        let up = self.up_proj.forward(&h)?;
        drop(h);
        let act = (gate.silu()? * up)?;
        drop(gate);
        Ok((x + self.down_proj.forward(&act)?)?)
    }
}
