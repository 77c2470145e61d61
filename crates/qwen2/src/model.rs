//! [`Qwen2`]: loading a checkpoint into layers, and the batched prefill forward pass that
//! returns each row's last-position logits.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::attention::{Dims, Masks, DEFAULT_QUERY_CHUNK, SCORE_BUDGET};
use crate::awq::AwqConfig;
use crate::config::Config;
use crate::error::{ensure, Error, Result};
use crate::gguf::{is_gguf, Gguf, GgufLinears};
use crate::layer::Layer;
use crate::linear::Linear;
use crate::rope::rope_tables;
use crate::source::WeightSource;
use crate::weights::Weights;

pub struct Qwen2 {
    /// The fused CUDA forward pass, when it runs this model (then `layers` is empty).
    #[cfg(feature = "cuda")]
    fused: Option<crate::fused::Fused>,
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

/// Which implementation runs a model's forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPath {
    /// candle ops on right-padded rows: the CPU, f32, or shapes the fused kernels do not take.
    Candle,
    /// The fused CUDA kernels on packed rows (feature `cuda`; f16/bf16 on a GPU of compute
    /// capability 8.0 or newer, head_dim 64 or 128, dense weights): see the `fused` module.
    Fused,
}

impl std::fmt::Debug for Qwen2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen2")
            .field("layers", &self.cfg.num_hidden_layers)
            .field("vocab_size", &self.cfg.vocab_size)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl Qwen2 {
    /// Loads a Qwen2 model onto `device`, computing in `dtype` (f16/bf16 on GPU, f32 or f16 on
    /// CPU: candle's CPU matmul has no bf16): a Hugging Face checkpoint directory (AWQ GEMM 4-bit
    /// layers are dequantized to `dtype` while loading) or a GGUF file of the `qwen2`
    /// architecture (its quantized layers dequantized at load, see [`GgufLinears`]).
    ///
    /// The forward pass is the fused CUDA one when the device, dtype and shapes allow it
    /// ([`ForwardPath::Fused`]), else candle's ([`Qwen2::forward_path`] says which).
    ///
    /// # Errors
    /// Errors name the file or tensor at fault: a path that is neither, missing `config.json` or
    /// weights, a model that is not Qwen2, an unsupported quantization, a missing tensor or one of
    /// the wrong shape.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::open(
            path,
            device,
            dtype,
            ForwardPath::Fused,
            GgufLinears::default(),
        )
    }

    /// [`Qwen2::load`] with the choice of how a GGUF's quantized layers are held (ignored for a
    /// Hugging Face directory).
    ///
    /// # Errors
    /// As [`Qwen2::load`].
    pub fn load_with(
        path: &Path,
        device: &Device,
        dtype: DType,
        linears: GgufLinears,
    ) -> Result<Self> {
        Self::open(path, device, dtype, ForwardPath::Fused, linears)
    }

    /// Like [`Qwen2::load`], choosing the forward pass: [`ForwardPath::Fused`] is taken when
    /// possible (else the candle path), [`ForwardPath::Candle`] always gives the candle path (the
    /// reference the fused path is tested against).
    ///
    /// # Errors
    /// As [`Qwen2::load`]; with the fused path, also when its kernels cannot be compiled or its
    /// weights do not fit on the device.
    pub fn load_with_path(
        dir: &Path,
        device: &Device,
        dtype: DType,
        path: ForwardPath,
    ) -> Result<Self> {
        Self::open(dir, device, dtype, path, GgufLinears::default())
    }

    fn open(
        model: &Path,
        device: &Device,
        dtype: DType,
        path: ForwardPath,
        linears: GgufLinears,
    ) -> Result<Self> {
        ensure!(
            matches!(dtype, DType::F16 | DType::BF16 | DType::F32),
            Error::Unsupported(format!(
                "model dtype {dtype:?} is not supported (use F16, BF16 or F32)"
            ))
        );
        ensure!(
            !device.is_cuda() || cfg!(feature = "cuda"),
            Error::Unsupported(
                "qwen2-prefill was built without its `cuda` feature, so it has no CUDA kernels: \
                 build with `--features cuda,qwen2-prefill/cuda` (the example) or `--features \
                 cuda` (this crate)"
                    .into()
            )
        );
        ensure!(
            !(device.is_cpu() && dtype == DType::BF16),
            Error::Unsupported(
                "BF16 is not supported on the CPU (candle's CPU matmul has no bf16); use F32 or F16"
                    .into()
            )
        );
        if model.is_file() {
            ensure!(
                is_gguf(model),
                Error::ModelPath {
                    path: model.to_path_buf(),
                    reason: "is a file but not a GGUF file (pass a .gguf file or a Hugging Face \
                             checkpoint directory)",
                }
            );
            let gguf = Gguf::open(model, linears)?;
            let cfg = gguf.config()?;
            return Self::build(cfg, &gguf, device, dtype, path);
        }
        ensure!(
            model.is_dir(),
            Error::ModelPath {
                path: model.to_path_buf(),
                reason: "does not exist (pass a .gguf file or a Hugging Face checkpoint directory)",
            }
        );
        let dir = model;
        let cfg_path = dir.join("config.json");
        let cfg = Config::from_file(&cfg_path)?;
        let awq = cfg
            .quantization_config
            .as_ref()
            .map(AwqConfig::from_json)
            .transpose()
            .map_err(|e| match e {
                Error::UnsupportedModel { path: None, reason } => Error::UnsupportedModel {
                    path: Some(cfg_path.clone()),
                    reason: format!("quantization_config: {reason}"),
                },
                e => e,
            })?;
        let weights = Weights::open(dir, awq)?;
        Self::build(cfg, &weights, device, dtype, path)
    }

    /// Builds the model from `cfg` and the tensors of `weights`.
    fn build(
        cfg: Config,
        weights: &dyn WeightSource,
        device: &Device,
        dtype: DType,
        path: ForwardPath,
    ) -> Result<Self> {
        let (hidden, inter, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let embed = weights.dense("model.embed_tokens.weight", &[vocab, hidden], device, dtype)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        #[cfg(feature = "cuda")]
        let fused_shape = crate::fused::Shape {
            hidden,
            intermediate: inter,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            vocab,
            eps: cfg.rms_norm_eps as f32,
        };
        #[cfg(feature = "cuda")]
        let use_fused = path == ForwardPath::Fused
            && crate::fused::supported(&fused_shape, device, dtype).is_ok();
        #[cfg(feature = "cuda")]
        let mut fused_layers = Vec::new();
        #[cfg(not(feature = "cuda"))]
        let _ = path;
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let lin = |name: &str, out_f: usize, in_f: usize| {
                weights.linear(&format!("{p}.{name}"), out_f, in_f, device, dtype)
            };
            let vec =
                |name: &str, n: usize| weights.dense(&format!("{p}.{name}"), &[n], device, dtype);
            let qkv = Linear::stack(&[
                lin("self_attn.q_proj", nh * hd, hidden)?,
                lin("self_attn.k_proj", nkv * hd, hidden)?,
                lin("self_attn.v_proj", nkv * hd, hidden)?,
            ])?;
            let qkv_bias = Tensor::cat(
                &[
                    &vec("self_attn.q_proj.bias", nh * hd)?,
                    &vec("self_attn.k_proj.bias", nkv * hd)?,
                    &vec("self_attn.v_proj.bias", nkv * hd)?,
                ],
                0,
            )?;
            let layer = Layer {
                input_norm: vec("input_layernorm.weight", hidden)?,
                post_attention_norm: vec("post_attention_layernorm.weight", hidden)?,
                qkv,
                qkv_bias,
                o_proj: lin("self_attn.o_proj", hidden, nh * hd)?,
                gate_proj: lin("mlp.gate_proj", inter, hidden)?,
                up_proj: lin("mlp.up_proj", inter, hidden)?,
                down_proj: lin("mlp.down_proj", hidden, inter)?,
            };
            #[cfg(feature = "cuda")]
            if use_fused {
                if let Some(f) = crate::fused::FusedLayer::from_layer(&layer, dtype)? {
                    // The layer's own tensors are dropped here (gate and up are now stacked), so
                    // the weights are held once.
                    fused_layers.push(f);
                    continue;
                }
                return Err(Error::Unsupported(format!(
                    "layer {l}: its weights are not dense, which the fused path needs"
                )));
            }
            layers.push(layer);
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
        #[cfg(feature = "cuda")]
        let fused = if use_fused {
            Some(crate::fused::Fused::new(
                device,
                dtype,
                fused_shape,
                &embed,
                &lm_head,
                &norm,
                (&cos, &sin),
                fused_layers,
            )?)
        } else {
            None
        };
        Ok(Self {
            #[cfg(feature = "cuda")]
            fused,
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

    /// Which implementation runs the forward pass.
    pub fn forward_path(&self) -> ForwardPath {
        #[cfg(feature = "cuda")]
        if self.fused.is_some() {
            return ForwardPath::Fused;
        }
        ForwardPath::Candle
    }

    /// Whether a batch costs its rows' real tokens ([`ForwardPath::Fused`], rows packed back to
    /// back) rather than rows × longest row (the candle path pads every row to the longest).
    pub fn packs_rows(&self) -> bool {
        self.forward_path() == ForwardPath::Fused
    }

    /// Gets ready for batches of up to `tokens` tokens in `rows` rows, so that the first real
    /// batch runs at full speed: on the fused path, sizes the buffers once and runs two
    /// throw-away batches (kernel compilation, module loading, cuBLAS's first calls); on the
    /// candle path, one one-token batch. Costs about one batch's time; waits for the device.
    ///
    /// # Errors
    /// Device memory runs out, or a kernel cannot be compiled.
    pub fn prepare(&self, tokens: usize, rows: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(f) = &self.fused {
            let (tokens, rows) = (tokens.max(1), rows.max(1));
            f.reserve(tokens, rows)?;
            let len = (tokens / rows).clamp(1, self.cfg.max_position_embeddings);
            let row = vec![0u32; len];
            let batch: Vec<&[u32]> = vec![row.as_slice(); rows.min(tokens / len).max(1)];
            f.last_logits(&batch)?;
            f.last_logits(&[&row[..1]])?;
            self.device.synchronize()?;
            return Ok(());
        }
        let _ = (tokens, rows); // the candle path allocates per batch
        self.last_logits(&[&[0u32]])?;
        self.device.synchronize()?;
        Ok(())
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
    /// On the candle path rows are right-padded to the longest one; padded keys are never
    /// attended and each row's positions run `0..len`, so a row's logits do not depend on the
    /// other rows of the batch. On the fused path rows are packed back to back (no padding) and
    /// the call only queues work on the device: no host synchronisation, no device allocation but
    /// the logits (after [`Qwen2::prepare`] or an earlier batch as large).
    pub fn last_logits(&self, rows: &[&[u32]]) -> Result<Tensor> {
        ensure!(
            !rows.is_empty(),
            Error::InvalidInput("last_logits needs at least one row".into())
        );
        let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let seq = *lens.iter().max().expect("non-empty");
        let batch = rows.len();
        let vocab = self.cfg.vocab_size;
        for (i, row) in rows.iter().enumerate() {
            ensure!(
                !row.is_empty(),
                Error::InvalidInput(format!("row {i} is empty (every row needs ≥1 token)"))
            );
            if let Some(&bad) = row.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::InvalidInput(format!(
                    "row {i} has token id {bad}, outside the vocabulary (size {vocab})"
                )));
            }
        }
        ensure!(
            seq <= self.cfg.max_position_embeddings,
            Error::InvalidInput(format!(
                "a row has {seq} tokens, more than max_position_embeddings {}",
                self.cfg.max_position_embeddings
            ))
        );

        #[cfg(feature = "cuda")]
        if let Some(f) = &self.fused {
            return f.last_logits(rows);
        }
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
