//! A Qwen2 decoder (Hugging Face `Qwen2ForCausalLM`) for batched prefill that returns the logits
//! of each row's last token.
//!
//! Written for judging: one forward pass per batch, no KV cache, no generation. It loads a Hugging
//! Face checkpoint directory (`config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`), with AWQ GEMM 4-bit linear layers dequantized at load (see
//! [`crate::awq`]) or plain f16/bf16/f32 weights.
//!
//! The forward pass follows Hugging Face's Qwen2: RMSNorm before attention and MLP, q/k/v
//! projections with bias and o_proj without, rotate-half RoPE with positions `0..len` per row,
//! grouped-query attention, SiLU-gated MLP, final RMSNorm and an lm_head that may be tied to the
//! embeddings. Rows are right-padded to the longest; attention uses a causal mask plus a key
//! padding mask (see `Masks` for where each applies), is computed in query chunks (so the score
//! matrix never holds more than `chunk × keys` per head; see [`SCORE_BUDGET`]) and does its
//! softmax in f32. The lm_head runs only on each row's last real position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::awq::{AwqConfig, AwqLayer};

/// Default number of queries per attention chunk.
pub const DEFAULT_QUERY_CHUNK: usize = 512;

/// Most f32 attention scores one query chunk may hold (`batch × heads × chunk × keys`); the
/// chunk shrinks below the configured size when a batch would exceed it (2^29 values: about
/// 2 GiB per f32 buffer, two of which are alive at a time).
pub const SCORE_BUDGET: usize = 1 << 29;

/// Large finite value used for masked attention scores (added as `-MASK_VALUE`).
const MASK_VALUE: f64 = 1e30;

/// The fields of a Qwen2 `config.json` this implementation reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's gated projection.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); the query head count when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base frequency (`rope_parameters.rope_theta` in newer configs; 10000 when absent).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Newer Transformers' RoPE settings (`rope_type` must be `default`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Scaled RoPE settings; only `null` is supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Vocabulary size (rows of the embedding and of the lm_head).
    pub vocab_size: usize,
    /// Whether the lm_head reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Longest supported sequence (size of the RoPE tables).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Storage dtype of the checkpoint (`float16`, `bfloat16`, …), informational.
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Newer Transformers' name for `torch_dtype`.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Must be `qwen2` when present.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Must contain `Qwen2ForCausalLM` when present.
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// MLP activation; only `silu` is supported.
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Sliding-window attention; only `false` is supported.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The checkpoint's quantization, if any (only AWQ GEMM 4-bit is supported).
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,
}

fn default_max_positions() -> usize {
    32768
}

impl Config {
    /// Reads and checks `config.json` (the path is named in every error).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read model config {} (a Hugging Face checkpoint directory needs a config.json)",
                path.display()
            )
        })?;
        let cfg: Config = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse model config {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("unsupported model config {}", path.display()))?;
        Ok(cfg)
    }

    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base frequency.
    pub fn rope_base(&self) -> f64 {
        self.rope_theta
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10000.0)
    }

    /// The checkpoint's declared storage dtype, if any.
    pub fn declared_dtype(&self) -> Option<&str> {
        self.torch_dtype.as_deref().or(self.dtype.as_deref())
    }

    fn validate(&self) -> Result<()> {
        match (&self.model_type, &self.architectures) {
            (None, None) => bail!("neither `model_type` nor `architectures` is set"),
            (Some(mt), _) if mt != "qwen2" => {
                bail!("model_type {mt:?} is not supported (only \"qwen2\", Qwen2ForCausalLM)")
            }
            (_, Some(archs)) if !archs.iter().any(|a| a == "Qwen2ForCausalLM") => {
                bail!("architectures {archs:?} are not supported (only Qwen2ForCausalLM)")
            }
            _ => {}
        }
        if let Some(act) = &self.hidden_act {
            ensure!(
                act == "silu",
                "hidden_act {act:?} is not supported (only silu)"
            );
        }
        ensure!(
            !self.use_sliding_window,
            "use_sliding_window=true is not supported"
        );
        if let Some(s) = &self.rope_scaling {
            ensure!(
                s.is_null(),
                "rope_scaling {s} is not supported (only plain RoPE)"
            );
        }
        if let Some(p) = &self.rope_parameters {
            let ty = p
                .get("rope_type")
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            ensure!(
                ty == "default",
                "rope_parameters.rope_type {ty:?} is not supported (only default)"
            );
        }
        let (h, kv) = (self.num_attention_heads, self.num_kv_heads());
        ensure!(
            self.hidden_size > 0 && self.intermediate_size > 0 && self.vocab_size > 0,
            "hidden_size, intermediate_size and vocab_size must be positive"
        );
        ensure!(
            h > 0 && kv > 0 && h % kv == 0,
            "num_attention_heads {h} is not a multiple of num_key_value_heads {kv}"
        );
        ensure!(
            self.head_dim() > 0 && self.head_dim() % 2 == 0,
            "head_dim {} must be even",
            self.head_dim()
        );
        ensure!(
            self.max_position_embeddings > 0,
            "max_position_embeddings must be positive"
        );
        Ok(())
    }
}

/// The safetensors files of a checkpoint, with the file that holds each tensor.
struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
}

impl Weights {
    /// Opens `model.safetensors.index.json` (every shard it names) or else `model.safetensors`.
    fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("cannot parse {}", index_path.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{} has no `weight_map` object", index_path.display()))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            ensure!(
                !names.is_empty(),
                "{} names no weight files",
                index_path.display()
            );
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            bail!(
                "no weights in {}: expected model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            ensure!(
                path.is_file(),
                "weight file {} (listed in the shard index) does not exist",
                path.display()
            );
            // SAFETY: the file is mapped read-only and only read while `Weights` lives; as with any
            // memory map, it must not be modified by another process during loading.
            let st = unsafe { MmapedSafetensors::new(&path) }
                .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
            for (name, _) in st.tensors() {
                index.entry(name).or_insert(i);
            }
            files.push((path, st));
        }
        Ok(Self { files, index })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn file_list(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        names.join(", ")
    }

    /// The raw bytes, dtype and shape of `name`, checked against `shape`.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(&[u8], DType, &Path)> {
        let &i = self
            .index
            .get(name)
            .with_context(|| format!("tensor `{name}` not found in {}", self.file_list()))?;
        let (path, st) = &self.files[i];
        let view = st
            .get(name)
            .with_context(|| format!("cannot read tensor `{name}` in {}", path.display()))?;
        ensure!(
            view.shape() == shape,
            "tensor `{name}` in {} has shape {:?}, expected {:?}",
            path.display(),
            view.shape(),
            shape
        );
        let dtype = DType::try_from(view.dtype()).map_err(|e| {
            anyhow::anyhow!(
                "tensor `{name}` in {} has an unsupported dtype: {e}",
                path.display()
            )
        })?;
        Ok((view.data(), dtype, path.as_path()))
    }

    /// A float tensor of the given shape, on `device` in `dtype`.
    fn dense(&self, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let (data, src_dtype, path) = self.raw(name, shape)?;
        ensure!(
            matches!(src_dtype, DType::F16 | DType::BF16 | DType::F32),
            "tensor `{name}` in {} has dtype {src_dtype:?}, expected a float dtype",
            path.display()
        );
        let t = Tensor::from_raw_buffer(data, src_dtype, shape, &Device::Cpu)
            .with_context(|| format!("cannot load tensor `{name}` from {}", path.display()))?;
        Ok(t.to_device(device)?.to_dtype(dtype)?)
    }

    /// Packed 32-bit words (i32 or u32) of the given shape.
    fn words(&self, name: &str, shape: &[usize]) -> Result<Vec<u32>> {
        let (data, dtype, path) = self.raw(name, shape)?;
        ensure!(
            matches!(dtype, DType::I32 | DType::U32),
            "tensor `{name}` in {} has dtype {dtype:?}, expected I32 packed words",
            path.display()
        );
        Ok(data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// A float tensor of the given shape widened to f32 on the host.
    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (data, dtype, path) = self.raw(name, shape)?;
        Ok(match dtype {
            DType::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            other => bail!(
                "tensor `{name}` in {} has dtype {other:?}, expected a float dtype",
                path.display()
            ),
        })
    }

    /// The `[out, in]` weight of linear layer `prefix`: `prefix.weight`, or AWQ
    /// `prefix.qweight/qzeros/scales` dequantized.
    fn linear(
        &self,
        prefix: &str,
        out_f: usize,
        in_f: usize,
        awq: Option<&AwqConfig>,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let dense_name = format!("{prefix}.weight");
        let qweight = format!("{prefix}.qweight");
        if self.has(&dense_name) {
            return self.dense(&dense_name, &[out_f, in_f], device, dtype);
        }
        if !self.has(&qweight) {
            bail!(
                "tensor `{dense_name}` (or AWQ `{qweight}`) not found in {}",
                self.file_list()
            );
        }
        let awq = awq.with_context(|| {
            format!("tensor `{qweight}` is AWQ-packed but config.json has no quantization_config")
        })?;
        let group = awq.group_for(in_f);
        ensure!(
            out_f % crate::awq::PACK_FACTOR == 0 && group > 0 && in_f % group == 0,
            "layer `{prefix}` [{out_f}, {in_f}] does not fit AWQ packing with group size {group}"
        );
        let words = out_f / crate::awq::PACK_FACTOR;
        let groups = in_f / group;
        let layer = AwqLayer {
            qweight: self.words(&qweight, &[in_f, words])?,
            qzeros: self.words(&format!("{prefix}.qzeros"), &[groups, words])?,
            scales: self.floats(&format!("{prefix}.scales"), &[groups, out_f])?,
            in_features: in_f,
            out_features: out_f,
            group,
        };
        layer
            .to_tensor(device, dtype)
            .with_context(|| format!("cannot dequantize AWQ layer `{prefix}`"))
    }
}

/// One decoder layer's weights, in candle's `[out, in]` linear layout.
struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// q, k and v projections stacked: `[(heads + 2·kv_heads)·head_dim, hidden]`.
    qkv_weight: Tensor,
    /// Their biases stacked the same way.
    qkv_bias: Tensor,
    o_weight: Tensor,
    gate_weight: Tensor,
    up_weight: Tensor,
    down_weight: Tensor,
}

/// Shapes shared by every layer of one forward pass.
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
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
struct Masks {
    /// `(q0, c, mask)` per query chunk; `mask` is `[b or 1, 1, 1, c, c]` f32 with 0 where a key
    /// may be attended and `-MASK_VALUE` where not (batch dimension 1 when no row is padded).
    chunks: Vec<(usize, usize, Tensor)>,
}

impl Masks {
    fn new(lens: &[usize], seq: usize, chunk: usize, device: &Device) -> Result<Self> {
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

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        d: &Dims,
        rope: (&Tensor, &Tensor),
        masks: &Masks,
    ) -> Result<Tensor> {
        let (b, t, nh, nkv, hd) = (d.batch, d.seq, d.heads, d.kv_heads, d.head_dim);
        let h = candle_nn::ops::rms_norm(x, &self.input_norm, d.eps)?;
        let qkv = h
            .matmul(&self.qkv_weight.t()?)?
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
        let x = (x + attn.matmul(&self.o_weight.t()?)?)?;

        let h = candle_nn::ops::rms_norm(&x, &self.post_attention_norm, d.eps)?;
        // Separate gate and up matmuls keep the element-wise ops on contiguous tensors.
        let gate = h.matmul(&self.gate_weight.t()?)?;
        let up = h.matmul(&self.up_weight.t()?)?;
        drop(h);
        let act = (gate.silu()? * up)?;
        drop(gate);
        Ok((x + act.matmul(&self.down_weight.t()?)?)?)
    }
}

/// Causal grouped-query attention over query chunks.
///
/// `q` is `[b, heads, t, hd]` (already scaled by `1/sqrt(hd)`), `k` and `v` are
/// `[b, kv_heads, t, hd]`; returns `[b·t, heads·hd]`. The query heads that share a key/value head
/// are folded into the matmul's row dimension, so keys and values are never repeated; each chunk
/// multiplies against only the keys up to its last query (later keys are all masked).
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, d: &Dims, masks: &Masks) -> Result<Tensor> {
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
            // One fused pass, in place: causal mask + f32 softmax + cast back (see `causal`).
            scores.inplace_op1(&causal::Softmax {
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

/// A Qwen2 causal language model for batched prefill (see the module docs).
pub struct Qwen2 {
    cfg: Config,
    device: Device,
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// RoPE tables `[max_position_embeddings, head_dim / 2]` in the model dtype.
    cos: Tensor,
    sin: Tensor,
    query_chunk: usize,
}

impl Qwen2 {
    /// Loads a Hugging Face Qwen2 checkpoint directory onto `device`, computing in `dtype`
    /// (f16/bf16 on GPU, f32 or f16 on CPU: candle's CPU matmul has no bf16).
    ///
    /// AWQ GEMM 4-bit layers are dequantized to `dtype` while loading. Errors name the file or
    /// tensor at fault: missing `config.json` or weights, a model that is not Qwen2, an
    /// unsupported quantization, a missing tensor or one of the wrong shape.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        ensure!(
            matches!(dtype, DType::F16 | DType::BF16 | DType::F32),
            "model dtype {dtype:?} is not supported (use F16, BF16 or F32)"
        );
        ensure!(
            !(device.is_cpu() && dtype == DType::BF16),
            "BF16 is not supported on the CPU (candle's CPU matmul has no bf16); use F32 or F16"
        );
        let cfg_path = dir.join("config.json");
        let cfg = Config::from_file(&cfg_path)?;
        let awq = cfg
            .quantization_config
            .as_ref()
            .map(AwqConfig::from_json)
            .transpose()
            .with_context(|| {
                format!("unsupported quantization_config in {}", cfg_path.display())
            })?;
        let weights = Weights::open(dir)?;

        let (hidden, inter, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let embed = weights.dense("model.embed_tokens.weight", &[vocab, hidden], device, dtype)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let lin = |name: &str, out_f: usize, in_f: usize| {
                weights.linear(
                    &format!("{p}.{name}"),
                    out_f,
                    in_f,
                    awq.as_ref(),
                    device,
                    dtype,
                )
            };
            let vec =
                |name: &str, n: usize| weights.dense(&format!("{p}.{name}"), &[n], device, dtype);
            let q = lin("self_attn.q_proj", nh * hd, hidden)?;
            let k = lin("self_attn.k_proj", nkv * hd, hidden)?;
            let v = lin("self_attn.v_proj", nkv * hd, hidden)?;
            let qkv_weight = Tensor::cat(&[&q, &k, &v], 0)?;
            drop((q, k, v));
            let qkv_bias = Tensor::cat(
                &[
                    &vec("self_attn.q_proj.bias", nh * hd)?,
                    &vec("self_attn.k_proj.bias", nkv * hd)?,
                    &vec("self_attn.v_proj.bias", nkv * hd)?,
                ],
                0,
            )?;
            let o_weight = lin("self_attn.o_proj", hidden, nh * hd)?;
            let gate_weight = lin("mlp.gate_proj", inter, hidden)?;
            let up_weight = lin("mlp.up_proj", inter, hidden)?;
            let down_weight = lin("mlp.down_proj", hidden, inter)?;
            layers.push(Layer {
                input_norm: vec("input_layernorm.weight", hidden)?,
                post_attention_norm: vec("post_attention_layernorm.weight", hidden)?,
                qkv_weight,
                qkv_bias,
                o_weight,
                gate_weight,
                up_weight,
                down_weight,
            });
        }
        let norm = weights.dense("model.norm.weight", &[hidden], device, dtype)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            weights.dense("lm_head.weight", &[vocab, hidden], device, dtype)?
        };
        let (cos, sin) = rope_tables(
            cfg.rope_base(),
            hd,
            cfg.max_position_embeddings,
            device,
            dtype,
        )?;
        Ok(Self {
            cfg,
            device: device.clone(),
            dtype,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            query_chunk: DEFAULT_QUERY_CHUNK,
        })
    }

    /// The checkpoint's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Queries per attention chunk (default [`DEFAULT_QUERY_CHUNK`]).
    pub fn query_chunk(&self) -> usize {
        self.query_chunk
    }

    /// Sets the number of queries per attention chunk (at least 1). Smaller chunks use less
    /// memory for attention scores (`batch × heads × chunk × seq` f32 values at most) at the cost
    /// of more, smaller matmuls; the result does not depend on it beyond rounding. A forward pass
    /// uses fewer when the batch would exceed [`SCORE_BUDGET`] (but never fewer than 16).
    pub fn set_query_chunk(&mut self, chunk: usize) {
        self.query_chunk = chunk.max(1);
    }

    /// Runs one prefill pass and returns the logits at each row's last position.
    ///
    /// rows: token ids of each row (any lengths ≥1). Returns the logits at each row's LAST
    /// position, shape `[rows.len(), vocab]`, dtype f32, on the model's device.
    ///
    /// Rows are right-padded to the longest one; padded keys are never attended and each row's
    /// positions run `0..len`, so a row's logits do not depend on the other rows of the batch.
    pub fn last_logits(&self, rows: &[&[u32]]) -> Result<Tensor> {
        ensure!(!rows.is_empty(), "last_logits needs at least one row");
        let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let seq = *lens.iter().max().expect("non-empty");
        let batch = rows.len();
        let vocab = self.cfg.vocab_size;
        for (i, row) in rows.iter().enumerate() {
            ensure!(
                !row.is_empty(),
                "row {i} is empty (every row needs ≥1 token)"
            );
            if let Some(&bad) = row.iter().find(|&&id| id as usize >= vocab) {
                bail!("row {i} has token id {bad}, outside the vocabulary (size {vocab})");
            }
        }
        ensure!(
            seq <= self.cfg.max_position_embeddings,
            "a row has {seq} tokens, more than max_position_embeddings {}",
            self.cfg.max_position_embeddings
        );

        let mut ids = vec![0u32; batch * seq];
        for (i, row) in rows.iter().enumerate() {
            ids[i * seq..i * seq + row.len()].copy_from_slice(row);
        }
        let ids = Tensor::from_vec(ids, batch * seq, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        drop(ids);

        let dims = Dims {
            batch,
            seq,
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_kv_heads(),
            head_dim: self.cfg.head_dim(),
            eps: self.cfg.rms_norm_eps as f32,
        };
        let cos = self.cos.narrow(0, 0, seq)?;
        let sin = self.sin.narrow(0, 0, seq)?;
        let per_query = batch * dims.heads * seq;
        let chunk = self.query_chunk.min((SCORE_BUDGET / per_query).max(16));
        let masks = Masks::new(&lens, seq, chunk, &self.device)?;
        for layer in &self.layers {
            x = layer.forward(&x, &dims, (&cos, &sin), &masks)?;
        }

        let last: Vec<u32> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (i * seq + l - 1) as u32)
            .collect();
        let last = Tensor::from_vec(last, batch, &self.device)?;
        let h = x.index_select(&last, 0)?;
        drop(x);
        let h = candle_nn::ops::rms_norm(&h, &self.norm, dims.eps)?;
        let logits = h.matmul(&self.lm_head.t()?)?;
        Ok(logits.to_dtype(DType::F32)?)
    }
}

/// RoPE cosine and sine tables `[positions, head_dim / 2]` in `dtype`, computed in f32 as Hugging
/// Face does: `inv_freq[i] = 1 / base^(2i / head_dim)`, angle `= position · inv_freq[i]`.
fn rope_tables(
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

/// The attention softmax on CUDA as one fused, in-place kernel.
///
/// The unfused path (cast the scores to f32, add the mask, softmax, cast back) moves each score
/// through memory about five times; this kernel reads a row of scores and writes the
/// probabilities over it, computing in f32. The mask is causal only: with right padding a real
/// query `i < len` sees keys `j <= i`, all real, and padded queries' outputs are never read
/// (the reasoning of `Masks`).
#[cfg(feature = "cuda")]
mod causal {
    use std::sync::OnceLock;

    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CpuStorage, CudaStorage, InplaceOp1, Layout};

    const THREADS: u32 = 256;
    const SOURCE: &str = r#"
#define THREADS 256
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float ld_f32(float x) { return x; }
__device__ __forceinline__ float st_f32(float x) { return x; }
__device__ __forceinline__ float ld_bf16(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short st_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float ld_f16(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short st_f16(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }

__device__ float block_reduce(float v, bool is_max, float* sh) {
    for (int o = 16; o > 0; o >>= 1) { float w = __shfl_xor_sync(0xffffffffu, v, o); v = is_max ? fmaxf(v, w) : v + w; }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (THREADS >> 5) ? sh[lane] : (is_max ? neg_inf() : 0.f);
        for (int o = 16; o > 0; o >>= 1) { float w = __shfl_xor_sync(0xffffffffu, v, o); v = is_max ? fmaxf(v, w) : v + w; }
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

/* Row r of `rows` rows of `len` scores holds query q0 + r % chunk: it sees keys 0..=q0 + r % chunk. */
#define CAUSAL_SOFTMAX(NAME, T, LD, ST) \
extern "C" __global__ void __launch_bounds__(THREADS) NAME(T* s, unsigned int rows, unsigned int len, unsigned int chunk, unsigned int q0) { \
    __shared__ float sh[32]; \
    for (unsigned int row = blockIdx.x; row < rows; row += gridDim.x) { \
        T* p = s + (size_t)row * len; \
        unsigned int last = q0 + row % chunk; \
        float m = neg_inf(); \
        for (unsigned int j = threadIdx.x; j <= last; j += THREADS) m = fmaxf(m, LD(p[j])); \
        m = block_reduce(m, true, sh); \
        float sum = 0.f; \
        for (unsigned int j = threadIdx.x; j <= last; j += THREADS) sum += expf(LD(p[j]) - m); \
        sum = block_reduce(sum, false, sh); \
        float inv = 1.f / sum; \
        for (unsigned int j = threadIdx.x; j < len; j += THREADS) p[j] = ST(j <= last ? expf(LD(p[j]) - m) * inv : 0.f); \
    } \
}
CAUSAL_SOFTMAX(causal_softmax_f32, float, ld_f32, st_f32)
CAUSAL_SOFTMAX(causal_softmax_f16, unsigned short, ld_f16, st_f16)
CAUSAL_SOFTMAX(causal_softmax_bf16, unsigned short, ld_bf16, st_bf16)
"#;

    /// PTX of `SOURCE`, compiled by NVRTC on first use.
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();

    /// Softmax over each row of `[.., len]` scores whose row `r` is query `q0 + r % chunk`.
    pub(super) struct Softmax {
        pub(super) len: usize,
        pub(super) chunk: usize,
        pub(super) q0: usize,
    }

    impl InplaceOp1 for Softmax {
        fn name(&self) -> &'static str {
            "arena-judge-causal-softmax"
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
            let func = dev.get_or_load_custom_func(name, "arena_judge_causal_softmax", ptx)?;
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
}
