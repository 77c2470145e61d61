//! The CUDA forward pass: packed variable-length rows, fused kernels, buffers sized once.
//!
//! The candle path ([`crate::Qwen2`] on the CPU, or in f32) pads every row of a batch to the
//! longest and runs one candle op per step, each allocating its output. On CUDA in f16/bf16 the
//! model takes this path instead:
//!
//! - **No padding.** A batch is its rows' tokens back to back (`cu_seqlens`), so every product and
//!   every kernel works on real tokens only.
//! - **Attention without stored scores** (`flash_attn.cu`): tensor cores, online softmax, causal,
//!   grouped-query heads read in place from the q/k/v projection's output.
//! - **One pass per element-wise step**: RMSNorm, bias + RoPE, SiLU · up (each a kernel of its own
//!   `.cu` file); the residual adds are the epilogues of the o_proj and down_proj products
//!   (`β = 1` into the residual stream); no `.contiguous()` copies, no casts.
//! - **Fewer, larger products**: q/k/v as one GEMM and gate/up as one (weights stacked at load);
//!   the MLP runs over the tokens in chunks of [`MLP_CHUNK`], bounding its buffer.
//! - **Buffers sized once** ([`Workspace`]), grown only for a batch larger than any before; one
//!   host-to-device copy of the batch's metadata per forward, no host synchronisation.
//!
//! Rounding follows Hugging Face's module by module (each op's result stored in the model dtype),
//! except where a fusion removes a store: the residual adds round `x + acc` once (Hugging Face
//! rounds the product, then the sum), and attention, like PyTorch's flash kernels, keeps scores in
//! f32 and rounds only the probabilities fed to the second product.

mod gemm;
mod kernels;
mod workspace;

use std::sync::Mutex;

use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};

use crate::error::{ensure, Error, Result};
use crate::layer::Layer;
use gemm::{Elem, Mat};
use kernels::{Half, Kernels};
use workspace::{BatchMeta, Workspace};

/// Most tokens per MLP chunk: the gate/up product's buffer holds `MLP_CHUNK × 2 · intermediate`
/// values (360 MB in f16 for Qwen2.5-3B) however large the batch.
pub(crate) const MLP_CHUNK: usize = 8192;

/// A tensor kept alive with its device address.
struct Weight {
    _tensor: Tensor,
    ptr: u64,
}

impl Weight {
    fn new(t: &Tensor, dtype: DType) -> Result<Self> {
        let t = t.to_dtype(dtype)?.contiguous()?;
        let ptr = device_ptr(&t)?;
        Ok(Self { _tensor: t, ptr })
    }
}

/// The device address of a contiguous CUDA tensor's first element.
fn device_ptr(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    ensure!(
        layout.is_contiguous(),
        Error::Unsupported("fused path: a weight is not contiguous".into())
    );
    let Storage::Cuda(cs) = &*storage else {
        return Err(Error::Unsupported(
            "fused path: a weight is not on a CUDA device".into(),
        ));
    };
    let stream = cs.device.cuda_stream();
    let (base, size) = match &cs.slice {
        CudaStorageSlice::F16(s) => (s.device_ptr(&stream).0, 2),
        CudaStorageSlice::BF16(s) => (s.device_ptr(&stream).0, 2),
        CudaStorageSlice::F32(s) => (s.device_ptr(&stream).0, 4),
        _ => {
            return Err(Error::Unsupported(
                "fused path: a weight is not f16, bf16 or f32".into(),
            ))
        }
    };
    Ok(base + (layout.start_offset() * size) as u64)
}

/// One decoder layer's weights for the fused path.
pub(crate) struct FusedLayer {
    input_norm: Weight,
    post_attention_norm: Weight,
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`.
    qkv: Weight,
    qkv_bias: Weight,
    /// `[hidden, heads·head_dim]`.
    o: Weight,
    /// gate then up, stacked: `[2·intermediate, hidden]`.
    gate_up: Weight,
    /// `[hidden, intermediate]`.
    down: Weight,
}

impl FusedLayer {
    /// The fused form of a loaded layer: its weights shared, gate and up stacked into one new
    /// tensor (the caller drops the layer, so they are held once). `None` when a projection is not
    /// dense.
    pub(crate) fn from_layer(layer: &Layer, dtype: DType) -> Result<Option<Self>> {
        let (Some(qkv), Some(o), Some(gate), Some(up), Some(down)) = (
            layer.qkv.dense(),
            layer.o_proj.dense(),
            layer.gate_proj.dense(),
            layer.up_proj.dense(),
            layer.down_proj.dense(),
        ) else {
            return Ok(None);
        };
        let gate_up = Tensor::cat(&[gate, up], 0)?;
        Ok(Some(Self {
            input_norm: Weight::new(&layer.input_norm, dtype)?,
            post_attention_norm: Weight::new(&layer.post_attention_norm, dtype)?,
            qkv: Weight::new(qkv, dtype)?,
            qkv_bias: Weight::new(&layer.qkv_bias, dtype)?,
            o: Weight::new(o, dtype)?,
            gate_up: Weight::new(&gate_up, dtype)?,
            down: Weight::new(down, dtype)?,
        }))
    }
}

/// Shapes of the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) hidden: usize,
    pub(crate) intermediate: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) vocab: usize,
    pub(crate) eps: f32,
}

impl Shape {
    /// Width of the q/k/v projection's output.
    fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Whether the fused path can run a model of this shape in `dtype` on `device`; `Err` says why
/// not (the caller then uses the candle path).
pub(crate) fn supported(shape: &Shape, device: &Device, dtype: DType) -> Result<()> {
    let unsupported = Error::Unsupported;
    let Device::Cuda(dev) = device else {
        return Err(unsupported("not on CUDA".into()));
    };
    ensure!(
        matches!(dtype, DType::F16 | DType::BF16),
        unsupported(format!("dtype {dtype:?} (f16 or bf16 only)"))
    );
    ensure!(
        matches!(shape.head_dim, 64 | 128),
        unsupported(format!("head_dim {} (64 or 128 only)", shape.head_dim))
    );
    ensure!(
        shape.hidden.is_multiple_of(8) && shape.intermediate.is_multiple_of(8),
        unsupported("hidden and intermediate sizes must be multiples of 8".into())
    );
    ensure!(
        shape.kv_heads > 0 && shape.heads.is_multiple_of(shape.kv_heads),
        unsupported("heads not a multiple of kv heads".into())
    );
    let cc = kernels::compute_cap(dev)?;
    ensure!(
        cc >= kernels::MIN_COMPUTE_CAP,
        unsupported(format!(
            "compute capability {cc} (needs {} or newer)",
            kernels::MIN_COMPUTE_CAP
        ))
    );
    Ok(())
}

/// The model on the fused CUDA path.
pub(crate) struct Fused {
    dev: CudaDevice,
    half: Half,
    shape: Shape,
    kernels: Kernels,
    embed: Weight,
    lm_head: Weight,
    norm: Weight,
    cos: Weight,
    sin: Weight,
    layers: Vec<FusedLayer>,
    work: Mutex<Workspace>,
}

impl Fused {
    /// Builds the fused model from its weights (the RoPE tables `cos`/`sin`:
    /// `[max_positions, head_dim / 2]`).
    ///
    /// # Errors
    /// [`supported`] fails, or the kernels cannot be compiled or loaded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device: &Device,
        dtype: DType,
        shape: Shape,
        embed: &Tensor,
        lm_head: &Tensor,
        norm: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        layers: Vec<FusedLayer>,
    ) -> Result<Self> {
        supported(&shape, device, dtype)?;
        let Device::Cuda(dev) = device else {
            unreachable!("checked by `supported`")
        };
        let half = if dtype == DType::F16 {
            Half::F16
        } else {
            Half::BF16
        };
        let kernels = Kernels::load(dev, half, shape.head_dim)?;
        Ok(Self {
            dev: dev.clone(),
            half,
            shape,
            kernels,
            embed: Weight::new(embed, dtype)?,
            lm_head: Weight::new(lm_head, dtype)?,
            norm: Weight::new(norm, dtype)?,
            cos: Weight::new(cos, dtype)?,
            sin: Weight::new(sin, dtype)?,
            layers,
            work: Mutex::new(Workspace::default()),
        })
    }

    fn elem(&self) -> Elem {
        match self.half {
            Half::F16 => Elem::F16,
            Half::BF16 => Elem::BF16,
        }
    }

    /// Sizes the buffers for batches of up to `tokens` tokens in `rows` rows (no allocation if
    /// they are already that large).
    ///
    /// # Errors
    /// Device memory runs out.
    pub(crate) fn reserve(&self, tokens: usize, rows: usize) -> Result<()> {
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        work.reserve(&self.dev, &self.shape, tokens, rows)
    }

    /// The logits at each row's last token, `[rows.len(), vocab]` f32 on the device. The rows are
    /// checked by the caller (non-empty, ids inside the vocabulary, not longer than the RoPE
    /// tables).
    ///
    /// # Errors
    /// Device memory runs out, or a launch or cuBLAS call fails.
    pub(crate) fn last_logits(&self, rows: &[&[u32]]) -> Result<Tensor> {
        let s = self.shape;
        let meta = BatchMeta::new(rows, kernels::ATTN_TILE);
        ensure!(
            meta.tiles <= 65_535,
            Error::InvalidInput(format!(
                "a batch of {} tokens has more attention tiles than one launch takes; split it",
                meta.tokens
            ))
        );
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        work.reserve(&self.dev, &s, meta.tokens, meta.rows)?;
        work.upload(&meta)?;
        let (t, b) = (meta.tokens, meta.rows);
        let k = &self.kernels;
        let e = self.elem();
        let blas = self.dev.cublas_handle();
        let (hidden, inter, hd) = (s.hidden, s.intermediate, s.head_dim);
        let attn_width = s.heads * hd;
        let qkv_width = s.qkv_width();
        let p = work.ptrs()?;
        let mat = |ptr: u64, ld: usize| Mat { ptr, elem: e, ld };
        // SAFETY: every buffer was sized by `reserve` for `t` tokens and `b` rows, the weights
        // live as long as `self`, and every launch and product is queued on candle's one stream,
        // so each reads what the previous one wrote.
        unsafe {
            k.embed(self.embed.ptr, p.ids, p.x, t, hidden)?;
            for layer in &self.layers {
                k.rms_norm(p.x, layer.input_norm.ptr, p.h, 0, t, hidden, s.eps)?;
                gemm::linear(
                    &blas,
                    t,
                    qkv_width,
                    hidden,
                    mat(p.h, hidden),
                    mat(layer.qkv.ptr, hidden),
                    mat(p.big, qkv_width),
                    false,
                )?;
                k.bias_rope(
                    p.big,
                    layer.qkv_bias.ptr,
                    self.cos.ptr,
                    self.sin.ptr,
                    p.pos,
                    t,
                    qkv_width,
                    s.heads + 2 * s.kv_heads,
                    s.heads + s.kv_heads,
                    hd,
                )?;
                k.attention(
                    p.big, p.h, p.tiles, p.cu, meta.tiles, s.heads, s.kv_heads, hd, qkv_width,
                    attn_width,
                )?;
                // x += o_proj(attention): the residual add is the product's epilogue.
                gemm::linear(
                    &blas,
                    t,
                    hidden,
                    attn_width,
                    mat(p.h, attn_width),
                    mat(layer.o.ptr, attn_width),
                    mat(p.x, hidden),
                    true,
                )?;
                k.rms_norm(p.x, layer.post_attention_norm.ptr, p.h, 0, t, hidden, s.eps)?;
                let mut c0 = 0;
                while c0 < t {
                    let c = MLP_CHUNK.min(t - c0);
                    let h_c = p.h + (c0 * hidden * 2) as u64;
                    let x_c = p.x + (c0 * hidden * 2) as u64;
                    gemm::linear(
                        &blas,
                        c,
                        2 * inter,
                        hidden,
                        mat(h_c, hidden),
                        mat(layer.gate_up.ptr, hidden),
                        mat(p.big, 2 * inter),
                        false,
                    )?;
                    k.silu_mul(p.big, c, inter)?;
                    // x += down(silu(gate) · up), again in the epilogue.
                    gemm::linear(
                        &blas,
                        c,
                        hidden,
                        inter,
                        mat(p.big, 2 * inter),
                        mat(layer.down.ptr, inter),
                        mat(x_c, hidden),
                        true,
                    )?;
                    c0 += c;
                }
            }
            k.rms_norm(p.x, self.norm.ptr, p.last_h, p.last, b, hidden, s.eps)?;
        }
        let stream = self.dev.cuda_stream();
        // SAFETY: fully written by the product below before anything reads it.
        let logits = unsafe { stream.alloc::<f32>(b * s.vocab) }
            .map_err(|e| Error::cuda("allocating the logits", e))?;
        let out = logits.device_ptr(&stream).0;
        // SAFETY: as above; `out` holds `b × vocab` f32 values.
        unsafe {
            gemm::linear(
                &blas,
                b,
                s.vocab,
                hidden,
                mat(p.last_h, hidden),
                mat(self.lm_head.ptr, hidden),
                Mat {
                    ptr: out,
                    elem: Elem::F32,
                    ld: s.vocab,
                },
                false,
            )?;
        }
        drop(work);
        let storage = CudaStorage::wrap_cuda_slice(logits, self.dev.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            (b, s.vocab),
            BackpropOp::none(),
            false,
        ))
    }
}
