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

/// The demo's random-weights model (tokenizer included), written by `scripts/setup.sh`.
pub fn demo_model() -> PathBuf {
    root().join("assets/arena_judge_demo")
}

/// The model directory to judge with, and the context length to use: `max_model_len` capped to
/// the model's positions. The directory is `model`, or the demo's generated random-weights
/// checkpoint (announced as such; `scripts/setup.sh` writes it) when it is `None`.
///
/// # Errors
/// The directory does not exist, or its config is missing or not Qwen2 (the message names the
/// file).
pub fn model_dir(model: Option<&Path>, max_model_len: usize) -> Result<(PathBuf, usize)> {
    let dir = match model {
        Some(dir) => dir.to_path_buf(),
        None => {
            println!(
                "demo: the model has RANDOM weights: the numbers only show that the pipeline works"
            );
            let dir = demo_model();
            ensure!(
                dir.join("config.json").is_file(),
                "the demo model {} is missing: run `bash scripts/setup.sh` first",
                dir.display()
            );
            dir
        }
    };
    ensure!(
        dir.is_dir(),
        "model directory {} does not exist",
        dir.display()
    );
    // Read now, so that a checkpoint that is not Qwen2 fails before the slow encoding and load.
    let config = qwen2_prefill::Config::from_file(&dir.join("config.json"))?;
    let positions = config.max_position_embeddings;
    if max_model_len > positions {
        eprintln!(
            "note: --max-model-len {max_model_len} capped to the model's {positions} positions"
        );
    }
    Ok((dir, max_model_len.min(positions)))
}

/// The tokenizer: `explicit` when given, else `tokenizer.json` in the model directory.
///
/// # Errors
/// The file is missing or not a tokenizer (the message names it).
pub fn tokenizer(model_dir: &Path, explicit: Option<&Path>) -> Result<Tokenizer> {
    let path = explicit.map_or_else(|| model_dir.join("tokenizer.json"), Path::to_path_buf);
    crate::prompt::load_tokenizer(&path).with_context(|| {
        format!(
            "no tokenizer for {} (or pass --tokenizer PATH)",
            model_dir.display()
        )
    })
}
