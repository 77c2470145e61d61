//! Where a run's pieces come from: the device and dtype, the model directory (or the demo's),
//! the tokenizer, and the bundled data.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use tokenizers::Tokenizer;

/// Parses `--dtype`: `f16`, `bf16` or `f32`.
///
/// # Errors
/// Any other name.
pub fn parse_dtype(name: &str) -> std::result::Result<DType, String> {
    match name {
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        "f32" => Ok(DType::F32),
        other => Err(format!("{other:?} is not one of f16, bf16, f32")),
    }
}

/// The device (CUDA device 0 when available, unless `cpu`) and the compute dtype (`dtype`, else
/// f16 on CUDA and f32 on the CPU).
///
/// # Errors
/// CUDA is compiled in but fails to initialise.
pub fn device_and_dtype(cpu: bool, dtype: Option<DType>) -> Result<(Device, DType)> {
    let device = if cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0)?
    };
    let default = if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    };
    Ok((device, dtype.unwrap_or(default)))
}

/// The repository root (where `assets/` and the bundled data live).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled labelled rows the demo judges.
pub fn demo_data() -> PathBuf {
    root().join("examples/arena_judge/data/train_first100.csv")
}

/// The demo's model: Qwen2.5-Coder-0.5B-Instruct, the GGUF `scripts/setup.sh` fetches.
pub fn demo_model() -> PathBuf {
    root().join("assets/models/qwen2.5-coder-0.5b-instruct.gguf")
}

/// The model to judge with: `--model` (a Hugging Face checkpoint directory or a GGUF file), or
/// the demo's GGUF when it is `None`.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The directory or file.
    pub path: PathBuf,
    /// Its configuration (read before the slow encoding and load, so a model that is not Qwen2
    /// fails at once).
    pub config: qwen2_prefill::Config,
    /// The GGUF's own tokenizer (vocabulary, merges), for a GGUF model.
    pub gguf_tokenizer: Option<qwen2_prefill::gguf::TokenizerData>,
}

impl ModelSource {
    /// Resolves `--model` and reads the model's configuration.
    ///
    /// # Errors
    /// The path does not exist, is neither a directory nor a GGUF file, or its configuration is
    /// missing or not Qwen2 (the message names the file); for the demo, a missing GGUF names the
    /// script that fetches it.
    pub fn resolve(model: Option<&Path>) -> Result<Self> {
        let path = match model {
            Some(p) => p.to_path_buf(),
            None => {
                let p = demo_model();
                ensure!(
                    p.is_file(),
                    "the demo model {} is missing: run `bash scripts/setup.sh` first",
                    p.display()
                );
                p
            }
        };
        ensure!(
            path.exists(),
            "model {} does not exist (pass a .gguf file or a Hugging Face checkpoint directory)",
            path.display()
        );
        if path.is_dir() {
            let config = qwen2_prefill::Config::from_file(&path.join("config.json"))?;
            return Ok(Self {
                path,
                config,
                gguf_tokenizer: None,
            });
        }
        ensure!(
            qwen2_prefill::gguf::is_gguf(&path),
            "model {} is a file but not a GGUF file (pass a .gguf file or a Hugging Face \
             checkpoint directory)",
            path.display()
        );
        let gguf = qwen2_prefill::gguf::Gguf::open(&path, qwen2_prefill::GgufLinears::default())?;
        let config = gguf.config()?;
        let tokenizer = gguf.tokenizer_data()?;
        Ok(Self {
            path,
            config,
            gguf_tokenizer: Some(tokenizer),
        })
    }

    /// `max_model_len` capped to the model's positions (with a note when capped).
    pub fn context(&self, max_model_len: usize) -> usize {
        let positions = self.config.max_position_embeddings;
        if max_model_len > positions {
            eprintln!(
                "note: --max-model-len {max_model_len} capped to the model's {positions} positions"
            );
        }
        max_model_len.min(positions)
    }

    /// The tokenizer: `explicit` when given; else `tokenizer.json` in a model directory, or for
    /// a GGUF file the `tokenizer.json` beside it, else the tokenizer the GGUF carries. A
    /// `tokenizer.json` for a GGUF model must match the GGUF's own vocabulary; added tokens the
    /// GGUF does not have (the Qwen3 tokenizer's four tokens past Qwen2.5's vocabulary) are
    /// dropped, so they can never be produced.
    ///
    /// # Errors
    /// The file is missing or not a tokenizer, or it disagrees with the GGUF's vocabulary (the
    /// message names the file and the first differing id).
    pub fn tokenizer(&self, explicit: Option<&Path>) -> Result<Tokenizer> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if self.path.is_dir() => self.path.join("tokenizer.json"),
            None => {
                let beside = self.path.with_file_name("tokenizer.json");
                match &self.gguf_tokenizer {
                    Some(data) if !beside.is_file() => {
                        return crate::tokenizer::tokenizer_from_gguf(data, &self.path);
                    }
                    _ => beside,
                }
            }
        };
        let how = if explicit.is_some() {
            "--tokenizer".to_string()
        } else if self.path.is_dir() {
            format!(
                "the tokenizer of {} (or pass --tokenizer PATH)",
                self.path.display()
            )
        } else {
            "the tokenizer.json beside the GGUF (or pass --tokenizer PATH)".to_string()
        };
        match &self.gguf_tokenizer {
            None => crate::tokenizer::load_tokenizer(&path).with_context(|| how.clone()),
            Some(data) => crate::tokenizer::load_tokenizer_for_vocabulary(&path, &data.tokens)
                .with_context(|| format!("{how} (the tokenizer of GGUF {})", self.path.display())),
        }
    }
}
