//! The crate's error type, [`Error`], grouped by who must act on it.
//!
//! | variants | who must act |
//! | --- | --- |
//! | [`Io`](Error::Io), [`MissingConfig`](Error::MissingConfig) | the environment: a file cannot be read or written |
//! | [`Json`](Error::Json), [`Safetensors`](Error::Safetensors), [`Malformed`](Error::Malformed), [`Gguf`](Error::Gguf), [`MissingTensor`](Error::MissingTensor), [`TensorShape`](Error::TensorShape), [`TensorDtype`](Error::TensorDtype), [`TensorRead`](Error::TensorRead), [`Awq`](Error::Awq), [`Layer`](Error::Layer) | whoever made the checkpoint: a file is broken or inconsistent |
//! | [`UnsupportedModel`](Error::UnsupportedModel) | whoever chose the model: it is valid but not a Qwen2 this crate runs |
//! | [`ModelPath`](Error::ModelPath), [`Unsupported`](Error::Unsupported), [`InvalidInput`](Error::InvalidInput) | the caller: a wrong path, a dtype or device this build cannot serve, unusable arguments |
//! | [`Candle`](Error::Candle), [`Cuda`](Error::Cuda) | nobody in particular: candle, the CUDA driver, NVRTC or cuBLAS failed |
//!
//! Each message names the file, tensor, layer or value at fault. An underlying error (I/O,
//! JSON, candle, CUDA) is kept as the [`source`](std::error::Error::source) and not repeated in
//! the message: print the whole chain (`{:#}` through `anyhow`, or walk `source()`) to see it.

use std::path::PathBuf;

use candle_core::DType;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when loading a checkpoint or running the model.
///
/// Match on the variant to decide who acts; its fields name the file, tensor or value at
/// fault. The error is `Send + Sync + 'static`, so `?` turns it into an `anyhow::Error` or a
/// `Box<dyn Error>`.
///
/// # Example
/// ```
/// use candle_core::{DType, Device};
/// use qwen2_prefill::{Error, Qwen2};
///
/// let dir = tempfile::tempdir()?; // a directory without config.json
/// let err = Qwen2::load(dir.path(), &Device::Cpu, DType::F32)
///     .err()
///     .expect("there is no model there");
/// assert!(matches!(err, Error::MissingConfig { .. }));
/// // The message names the file; the operating system's error is the source.
/// assert!(err.to_string().contains("config.json"));
/// assert!(std::error::Error::source(&err).is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory cannot be opened, read, created or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was attempted (`"open"`, `"read"`, `"write"`, `"create"`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A Hugging Face checkpoint directory has no readable `config.json`.
    #[error(
        "cannot read model config {} (a Hugging Face checkpoint directory needs a config.json)",
        path.display()
    )]
    MissingConfig {
        /// The `config.json` path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (`config.json`, the shard index) does not parse, or JSON cannot be written.
    #[error("cannot parse {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's error (line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file cannot be mapped or its header does not parse.
    #[error("cannot read safetensors file {}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// candle's error (boxed: it is large).
        #[source]
        source: Box<candle_core::Error>,
    },
    /// A checkpoint file or directory lacks something it must have (weights, a shard, a
    /// metadata key) or holds an inconsistent value.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// candle's GGUF reader rejected a file, a metadata value or a tensor.
    #[error("GGUF {}: {what}", path.display())]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What was being read (a metadata key, a tensor, the header).
        what: String,
        /// candle's error (boxed: it is large).
        #[source]
        source: Box<candle_core::Error>,
    },
    /// The checkpoint describes a model this crate does not run (another architecture, sliding
    /// windows, scaled RoPE, a quantization other than AWQ GEMM 4-bit, …) or impossible values.
    #[error(
        "unsupported model{}: {reason}",
        match .path { Some(p) => format!(" in {}", p.display()), None => String::new() }
    )]
    UnsupportedModel {
        /// The `config.json` or GGUF file, where known.
        path: Option<PathBuf>,
        /// What is not supported, and what would be.
        reason: String,
    },
    /// A tensor the model needs is in none of the checkpoint's files.
    #[error(
        "tensor `{name}`{} not found in {files}",
        match .awq { Some(q) => format!(" (or AWQ `{q}`)"), None => String::new() }
    )]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// The AWQ tensor that would also do, for a linear layer.
        awq: Option<String>,
        /// The files searched, comma-separated.
        files: String,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}` in {} has shape {found:?}, expected {expected:?}", path.display())]
    TensorShape {
        /// The tensor's name (as stored in the file).
        name: String,
        /// The file that holds it.
        path: PathBuf,
        /// Its shape.
        found: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor has a dtype that cannot be used where it is.
    #[error("tensor `{name}` in {} has dtype {found:?}, expected {expected}", path.display())]
    TensorDtype {
        /// The tensor's name.
        name: String,
        /// The file that holds it.
        path: PathBuf,
        /// Its dtype.
        found: DType,
        /// What was expected.
        expected: &'static str,
    },
    /// A tensor's header or data cannot be read (or its dtype has no candle equivalent).
    #[error("cannot read tensor `{name}` in {}", path.display())]
    TensorRead {
        /// The tensor's name.
        name: String,
        /// The file that holds it.
        path: PathBuf,
        /// candle's error (boxed: it is large).
        #[source]
        source: Box<candle_core::Error>,
    },
    /// An AWQ layer does not fit the packing (or its config is missing).
    #[error("AWQ layer `{layer}`: {reason}")]
    Awq {
        /// The layer's prefix (`model.layers.0.mlp.up_proj`).
        layer: String,
        /// What does not fit.
        reason: String,
    },
    /// A whole linear layer could not be converted (quantized or dequantized).
    #[error("cannot {action} `{layer}`")]
    Layer {
        /// The conversion (`"quantize"`, `"dequantize AWQ layer"`).
        action: &'static str,
        /// The layer's prefix.
        layer: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The model path is neither a GGUF file nor a checkpoint directory.
    #[error("model {} {reason}", path.display())]
    ModelPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it, and what to pass instead.
        reason: &'static str,
    },
    /// This build or device cannot serve the request (a dtype, CUDA without the `cuda` feature,
    /// BF16 on the CPU, a shape the fused path has no kernel for).
    #[error("{0}")]
    Unsupported(String),
    /// The caller's arguments are unusable (an empty row, a token outside the vocabulary, a
    /// value that does not fit 4 bits, mismatched lengths, an unknown preset).
    #[error("{0}")]
    InvalidInput(String),
    /// An error from candle (allocation, device copy, kernel launch).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A CUDA driver, NVRTC or cuBLAS call of the fused path failed, or its buffers were used
    /// before being reserved.
    #[error("{what}")]
    Cuda {
        /// What was being done (`"allocating the logits"`, `"cuBLAS GEMM 8×896×896"`).
        what: String,
        /// The driver's, compiler's or library's report.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// An [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    /// An [`Error::Malformed`] naming `path`.
    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Cuda`]: `what` failed with `detail`.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(
        what: impl Into<String>,
        detail: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Cuda {
            what: what.into(),
            source: detail.into(),
        }
    }
}

/// `e` and its sources, `: `-separated, outermost first (what `anyhow`'s `{:#}` prints): the
/// one line a command-line tool reports. Costs one string.
///
/// ```
/// let e = std::io::Error::other("disk full");
/// assert_eq!(qwen2_prefill::report(&e), "disk full");
/// ```
pub fn report(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Returns `Err(error)` unless `cond` holds (the crate's `ensure!`, without `anyhow`).
macro_rules! ensure {
    ($cond:expr, $err:expr $(,)?) => {
        if !$cond {
            return Err($err);
        }
    };
}
pub(crate) use ensure;
