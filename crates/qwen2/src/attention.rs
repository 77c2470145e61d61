//! Causal grouped-query attention over right-padded rows, in query chunks: the masks, and the
//! scores → softmax → values product (fused in place on CUDA by [`crate::cuda`]).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Default number of queries per attention chunk.
pub const DEFAULT_QUERY_CHUNK: usize = 512;

/// Most f32 attention scores one query chunk may hold (`batch × heads × chunk × keys`); the
/// chunk shrinks below the configured size when a batch would exceed it (2^29 values: about
/// 2 GiB per f32 buffer, two of which are alive at a time).
pub const SCORE_BUDGET: usize = 1 << 29;

/// Large finite value used for masked attention scores (added as `-MASK_VALUE`).
const MASK_VALUE: f64 = 1e30;

/// Shapes shared by every layer of one forward pass.
pub(crate) struct Dims {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) eps: f32,
}

/// Additive attention masks for one forward pass, built once and shared by all layers.
///
/// Queries are processed in chunks `[q0, q0 + c)` against keys `[0, q0 + c)`. Keys before `q0` are
/// causally visible to every query of the chunk, so only the chunk's diagonal `c × c` block needs
/// a mask: causal, plus key padding for keys at or past a row's length. With right padding that is
/// exact for every real query (all its visible keys are real); the only scores left unmasked are
/// those of padded queries against earlier padded keys, and padded queries are never read out nor
/// attended by real ones. Masking only the diagonal block keeps the mask add off the bulk of the
/// score matrix, which on CUDA is the expensive part of a broadcast add.
pub(crate) struct Masks {
    /// `(q0, c, mask)` per query chunk; `mask` is `[b or 1, 1, 1, c, c]` f32 with 0 where a key
    /// may be attended and `-MASK_VALUE` where not (batch dimension 1 when no row is padded).
    chunks: Vec<(usize, usize, Tensor)>,
}

impl Masks {
    pub(crate) fn new(lens: &[usize], seq: usize, chunk: usize, device: &Device) -> Result<Self> {
        let padded = lens.iter().any(|&l| l != seq);
        let lens_t = if padded {
            let lens_u32: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
            Some(Tensor::from_vec(lens_u32, (lens.len(), 1), device)?)
        } else {
            None
        };
        let causal_block = |c: usize| -> Result<Tensor> {
            let idx = Tensor::arange(0u32, c as u32, device)?;
            let allowed = idx.reshape((1, c))?.broadcast_le(&idx.reshape((c, 1))?)?;
            Ok(allowed
                .to_dtype(DType::F32)?
                .affine(MASK_VALUE, -MASK_VALUE)?)
        };
        let full = causal_block(chunk.min(seq))?;
        let mut chunks = Vec::new();
        let mut q0 = 0;
        while q0 < seq {
            let c = chunk.min(seq - q0);
            let causal = if c == full.dim(0)? {
                full.clone()
            } else {
                causal_block(c)?
            };
            let mask = match &lens_t {
                None => causal.reshape((1, 1, 1, c, c))?,
                Some(lens_t) => {
                    let keys = Tensor::arange(q0 as u32, (q0 + c) as u32, device)?;
                    let real = keys.reshape((1, c))?.broadcast_lt(lens_t)?;
                    let padding = real
                        .to_dtype(DType::F32)?
                        .affine(MASK_VALUE, -MASK_VALUE)?
                        .reshape((lens.len(), 1, c))?;
                    causal.unsqueeze(0)?.broadcast_add(&padding)?.reshape((
                        lens.len(),
                        1,
                        1,
                        c,
                        c,
                    ))?
                }
            };
            chunks.push((q0, c, mask));
            q0 += c;
        }
        Ok(Self { chunks })
    }
}

/// Causal grouped-query attention over query chunks.
///
/// `q` is `[b, heads, t, hd]` (already scaled by `1/sqrt(hd)`), `k` and `v` are
/// `[b, kv_heads, t, hd]`; returns `[b·t, heads·hd]`. The query heads that share a key/value head
/// are folded into the matmul's row dimension, so keys and values are never repeated; each chunk
/// multiplies against only the keys up to its last query (later keys are all masked).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d: &Dims,
    masks: &Masks,
) -> Result<Tensor> {
    let (b, t, nh, nkv, hd) = (d.batch, d.seq, d.heads, d.kv_heads, d.head_dim);
    let g = nh / nkv;
    let dtype = q.dtype();
    let q = q.reshape((b, nkv, g, t, hd))?;
    let mut outs = Vec::with_capacity(masks.chunks.len());
    for (q0, c, mask) in &masks.chunks {
        let (q0, c) = (*q0, *c);
        let q1 = q0 + c;
        let qc = q
            .narrow(3, q0, c)?
            .contiguous()?
            .reshape((b, nkv, g * c, hd))?;
        let kc = k.narrow(2, 0, q1)?;
        let vc = v.narrow(2, 0, q1)?;
        // Each step drops its input at once so at most two score-sized buffers are alive.
        let scores = qc.matmul(&kc.t()?)?;
        drop(qc);
        #[cfg(feature = "cuda")]
        if scores.device().is_cuda() {
            // One fused pass, in place: causal mask + f32 softmax + cast back (see `crate::cuda`).
            scores.inplace_op1(&crate::cuda::CausalSoftmax {
                len: q1,
                chunk: c,
                q0,
            })?;
            outs.push(scores.matmul(&vc)?.reshape((b, nkv, g, c, hd))?);
            continue;
        }
        let scores32 = scores.to_dtype(DType::F32)?.reshape((b, nkv, g, c, q1))?;
        drop(scores);
        // Only the diagonal block [q0, q1) of keys needs the mask (see `Masks`).
        let scores32 = if q0 == 0 {
            scores32.broadcast_add(mask)?
        } else {
            let diag = scores32.narrow(4, q0, c)?.broadcast_add(mask)?;
            scores32.slice_set(&diag, 4, q0)?;
            scores32
        };
        let probs32 = candle_nn::ops::softmax_last_dim(&scores32)?;
        drop(scores32);
        let probs = probs32.to_dtype(dtype)?.reshape((b, nkv, g * c, q1))?;
        drop(probs32);
        let out = probs.matmul(&vc)?.reshape((b, nkv, g, c, hd))?;
        outs.push(out);
    }
    let out = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 3)?
    };
    Ok(out
        .reshape((b, nh, t, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * t, nh * hd))?)
}
