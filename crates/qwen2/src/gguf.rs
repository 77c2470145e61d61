//! GGUF files (llama.cpp's format) of the `qwen2` architecture, read with candle's own GGUF
//! reader: the configuration from the metadata, the vocabulary, and the tensors under their
//! Hugging Face names. Block-quantized linear layers (Q4_K, Q5_0, Q6_K, Q8_0, …) are dequantized
//! to the compute dtype at load by default ([`GgufLinears::Dequantize`]: for prefill, where
//! every weight meets many tokens, dense GEMMs are much faster: on 2 CPU cores, 0.5B model, one
//! 256-token row, 3.8 s dense against 68 s through candle's quantized matmul) or kept quantized
//! and multiplied through candle's `QMatMul` ([`GgufLinears::Quantized`], the least memory);
//! embeddings and norms are always dequantized.
//!
//! llama.cpp's converter keeps Qwen2's q/k weights in Hugging Face order (Qwen2 uses the NEOX,
//! rotate-half, RoPE), so the forward pass is the same as for a Hugging Face checkpoint.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{ensure, Error, Result};
use crate::linear::Linear;
use crate::source::WeightSource;

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";

/// How a GGUF's quantized linear layers are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufLinears {
    /// As stored, multiplied by candle's quantized matmul (the least memory; candle quantizes
    /// the activations to 8 bits on the way, so logits move by about 0.1).
    Quantized,
    /// Dequantized to the compute dtype at load, multiplied as dense weights (the default).
    #[default]
    Dequantize,
}

/// The tokenizer stored in a GGUF file (see [`Gguf::tokenizer_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerData {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name (`qwen2`), when given.
    pub pre: Option<String>,
    /// Token strings by id.
    pub tokens: Vec<String>,
    /// Token types by id (llama.cpp's: 1 normal, 3 control, 4 user-defined, 5 unused).
    pub token_types: Vec<i32>,
    /// BPE merges, `"left right"`, highest priority first.
    pub merges: Vec<String>,
}

/// Whether `path` is a file that starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

/// An open GGUF file.
pub struct Gguf {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
    linears: GgufLinears,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish_non_exhaustive()
    }
}

/// The GGUF tensor name of a Hugging Face Qwen2 tensor name.
fn gguf_name(hf: &str) -> Result<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Ok(t.to_string());
    }
    let no_name = || Error::InvalidInput(format!("no GGUF name for tensor `{hf}`"));
    let rest = hf.strip_prefix("model.layers.").ok_or_else(no_name)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(no_name)?;
    let (module, suffix) = rest.rsplit_once('.').ok_or_else(no_name)?;
    let module = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => {
            return Err(Error::InvalidInput(format!(
                "no GGUF name for module `{other}` of tensor `{hf}`"
            )))
        }
    };
    Ok(format!("blk.{layer}.{module}.{suffix}"))
}

impl Gguf {
    /// Opens `path` and reads its header (metadata and tensor index; the tensors are read when
    /// asked for).
    ///
    /// # Errors
    /// The file cannot be opened or is not a GGUF file (the message names it).
    pub fn open(path: &Path, linears: GgufLinears) -> Result<Self> {
        let file = File::open(path).map_err(Error::io("open", path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let content = Content::read(&mut reader).map_err(|source| Error::Gguf {
            path: path.to_path_buf(),
            what: "not a readable GGUF file".into(),
            source: Box::new(source),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
            linears,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::malformed(&self.path, format!("GGUF has no metadata `{key}`")))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        v.to_u64()
            .map(|x| x as usize)
            .or_else(|_| v.to_u32().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x as usize))
            .map_err(self.bad(format!("`{key}`")))
    }

    fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self.meta(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(self.bad(format!("`{key}`")))
    }

    /// An [`Error::Gguf`] for this file: reading `what` failed.
    fn bad(&self, what: String) -> impl FnOnce(candle_core::Error) -> Error + '_ {
        move |source| Error::Gguf {
            path: self.path.clone(),
            what,
            source: Box::new(source),
        }
    }

    /// The `general.architecture` of the file.
    ///
    /// # Errors
    /// The key is missing or not a string.
    pub fn architecture(&self) -> Result<&str> {
        Ok(self
            .meta("general.architecture")?
            .to_string()
            .map_err(self.bad("general.architecture".into()))?)
    }

    /// The model's configuration, from the `qwen2.*` metadata and the embedding's shape.
    ///
    /// # Errors
    /// The architecture is not `qwen2`, a needed key is missing, or the values fail
    /// [`Config`]'s checks (the message names the file).
    pub fn config(&self) -> Result<Config> {
        let arch = self.architecture()?;
        ensure!(
            arch == "qwen2",
            Error::UnsupportedModel {
                path: Some(self.path.clone()),
                reason: format!(
                    "architecture {arch:?} is not supported (only \"qwen2\", Qwen2 and Qwen2.5)"
                ),
            }
        );
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::malformed(&self.path, "GGUF has no token_embd.weight"))?;
        // GGUF lists dimensions innermost first: [hidden, vocab].
        let dims = embd.shape.dims();
        ensure!(
            dims.len() == 2,
            Error::malformed(
                &self.path,
                format!("token_embd.weight has shape {dims:?}, expected two dimensions")
            )
        );
        let (vocab_size, hidden) = (dims[0], dims[1]);
        let (vocab_size, hidden) = if hidden == self.meta_usize("qwen2.embedding_length")? {
            (vocab_size, hidden)
        } else {
            (hidden, vocab_size)
        };
        let cfg = Config {
            hidden_size: self.meta_usize("qwen2.embedding_length")?,
            intermediate_size: self.meta_usize("qwen2.feed_forward_length")?,
            num_hidden_layers: self.meta_usize("qwen2.block_count")?,
            num_attention_heads: self.meta_usize("qwen2.attention.head_count")?,
            num_key_value_heads: Some(self.meta_usize("qwen2.attention.head_count_kv")?),
            head_dim: None,
            rms_norm_eps: self.meta_f64("qwen2.attention.layer_norm_rms_epsilon")?,
            rope_theta: Some(self.meta_f64("qwen2.rope.freq_base").unwrap_or(10_000.0)),
            rope_parameters: None,
            rope_scaling: None,
            vocab_size,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: self.meta_usize("qwen2.context_length")?,
            torch_dtype: None,
            dtype: None,
            model_type: Some("qwen2".into()),
            architectures: None,
            hidden_act: None,
            use_sliding_window: false,
            quantization_config: None,
        };
        ensure!(
            cfg.hidden_size == hidden,
            Error::malformed(
                &self.path,
                format!(
                    "token_embd.weight is {dims:?}, but embedding_length is {}",
                    cfg.hidden_size
                )
            )
        );
        cfg.validate().map_err(|reason| Error::UnsupportedModel {
            path: Some(self.path.clone()),
            reason,
        })?;
        Ok(cfg)
    }

    /// The vocabulary (`tokenizer.ggml.tokens`): token strings by id, in the byte-level form of
    /// Hugging Face tokenizers (`Ġ` for a space).
    ///
    /// # Errors
    /// The key is missing or not a list of strings.
    pub fn vocabulary(&self) -> Result<Vec<String>> {
        let tokens = self
            .meta("tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(self.bad("tokenizer.ggml.tokens".into()))?;
        tokens
            .iter()
            .map(|t| {
                t.to_string()
                    .cloned()
                    .map_err(self.bad("tokenizer.ggml.tokens".into()))
            })
            .collect()
    }

    /// The tokenizer the file carries: `tokenizer.ggml.model` and `.pre`, the tokens with their
    /// types (1 normal, 3 control, 4 user-defined, 5 unused, …) and the BPE merges.
    ///
    /// # Errors
    /// A key is missing or has the wrong type (the message names the file and key).
    pub fn tokenizer_data(&self) -> Result<TokenizerData> {
        let strings = |key: &str| -> Result<Vec<String>> {
            self.meta(key)?
                .to_vec()
                .map_err(self.bad(key.into()))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(self.bad(key.into())))
                .collect()
        };
        let text = |key: &str| -> Result<Option<String>> {
            match self.content.metadata.get(key) {
                None => Ok(None),
                Some(v) => Ok(Some(v.to_string().map_err(self.bad(key.into()))?.clone())),
            }
        };
        let token_types = self
            .meta("tokenizer.ggml.token_type")?
            .to_vec()
            .map_err(self.bad("token_type".into()))?
            .iter()
            .map(|v| v.to_i32().map_err(self.bad("token_type".into())))
            .collect::<Result<Vec<i32>>>()?;
        Ok(TokenizerData {
            model: text("tokenizer.ggml.model")?.unwrap_or_default(),
            pre: text("tokenizer.ggml.pre")?,
            tokens: self.vocabulary()?,
            token_types,
            merges: strings("tokenizer.ggml.merges")?,
        })
    }

    /// The quantized tensor `name` (GGUF name), checked to hold `shape` (`[out, in]`).
    fn qtensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let mut reader = self.reader.lock().map_err(|_| Error::Io {
            action: "read",
            path: self.path.clone(),
            source: std::io::Error::other("GGUF reader poisoned"),
        })?;
        let reader: &mut BufReader<File> = &mut reader;
        reader.rewind().map_err(Error::io("read", &self.path))?;
        let t = self
            .content
            .tensor(reader, name, device)
            .map_err(self.bad(format!("tensor `{name}`")))?;
        ensure!(
            t.shape().dims() == shape,
            Error::TensorShape {
                name: name.to_string(),
                path: self.path.clone(),
                found: t.shape().dims().to_vec(),
                expected: shape.to_vec(),
            }
        );
        Ok(t)
    }
}

impl WeightSource for Gguf {
    fn dense(&self, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let g = gguf_name(name)?;
        let t = self.qtensor(&g, shape, &Device::Cpu)?;
        Ok(t.dequantize(&Device::Cpu)?
            .to_device(device)?
            .to_dtype(dtype)?)
    }

    fn linear(
        &self,
        prefix: &str,
        out_f: usize,
        in_f: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Linear> {
        let g = gguf_name(&format!("{prefix}.weight"))?;
        let t = self.qtensor(&g, &[out_f, in_f], device)?;
        let dense = matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
            || self.linears == GgufLinears::Dequantize;
        if dense {
            return Ok(Linear::Dense(t.dequantize(device)?.to_dtype(dtype)?));
        }
        Ok(Linear::Quantized(QMatMul::from_qtensor(t)?))
    }
}
