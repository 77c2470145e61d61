//! The model's configuration: the fields of a Hugging Face Qwen2 `config.json` this crate reads,
//! and the checks that reject what it does not implement.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

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
    ///
    /// # Errors
    /// [`Error::MissingConfig`] if the file cannot be read, [`Error::Json`] if it does not parse,
    /// [`Error::UnsupportedModel`] if it describes a model this crate does not run.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::MissingConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate().map_err(|reason| Error::UnsupportedModel {
            path: Some(path.to_path_buf()),
            reason,
        })?;
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

    /// Rejects what this implementation does not support, and values that cannot be right;
    /// `Err` says what (the caller names the file).
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        macro_rules! ensure {
            ($cond:expr, $($msg:tt)+) => {
                if !$cond {
                    return Err(format!($($msg)+));
                }
            };
        }
        match (&self.model_type, &self.architectures) {
            (None, None) => return Err("neither `model_type` nor `architectures` is set".into()),
            (Some(mt), _) if mt != "qwen2" => {
                return Err(format!(
                    "model_type {mt:?} is not supported (only \"qwen2\", Qwen2ForCausalLM)"
                ));
            }
            (_, Some(archs)) if !archs.iter().any(|a| a == "Qwen2ForCausalLM") => {
                return Err(format!(
                    "architectures {archs:?} are not supported (only Qwen2ForCausalLM)"
                ));
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
            self.head_dim() > 0 && self.head_dim().is_multiple_of(2),
            "head_dim {} must be even",
            self.head_dim()
        );
        ensure!(
            self.max_position_embeddings > 0,
            "max_position_embeddings must be positive"
        );
        let base = self.rope_base();
        ensure!(
            base.is_finite() && base > 1.0,
            "rope_theta {base} is not a usable RoPE base (it must be finite and above 1)"
        );
        ensure!(
            self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0,
            "rms_norm_eps {} must be finite and positive",
            self.rms_norm_eps
        );
        Ok(())
    }
}
