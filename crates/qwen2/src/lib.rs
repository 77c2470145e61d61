//! A Qwen2 decoder (Hugging Face `Qwen2ForCausalLM`) for batched prefill: one forward pass per
//! batch of token rows, returning the logits of each row's last token. Written for the
//! `arena_judge` example of `logits-processors`; no KV cache, no generation.
//!
//! It loads a Hugging Face checkpoint directory (`config.json` plus `model.safetensors` or a
//! sharded `model.safetensors.index.json`), with AWQ GEMM 4-bit linear layers dequantized at
//! load ([`awq`]) or plain f16/bf16/f32 weights.
//!
//! The forward pass follows Hugging Face's Qwen2: RMSNorm before attention and MLP, q/k/v
//! projections with bias and o_proj without, rotate-half RoPE with positions `0..len` per row,
//! grouped-query attention, SiLU-gated MLP, final RMSNorm and an lm_head that may be tied to the
//! embeddings. Rows are right-padded to the longest; attention uses a causal mask plus a key
//! padding mask, is computed in query chunks (so the score matrix never holds more than
//! `chunk × keys` per head; see [`SCORE_BUDGET`]) and does its softmax in f32. The lm_head runs
//! only on each row's last real position.
//!
//! | file | what |
//! | --- | --- |
//! | `error.rs` | [`Error`]: what can go wrong, grouped by who must act |
//! | `config.rs` | [`Config`]: the `config.json` fields read, and what is rejected |
//! | `source.rs` | where weights come from, under Hugging Face names |
//! | `weights.rs` | the safetensors files of a checkpoint |
//! | `gguf.rs` | GGUF files: config, vocabulary, tensors (candle's reader, `QMatMul`) |
//! | `awq.rs` | AWQ GEMM 4-bit: config, nibble packing, dequantization, quantization |
//! | `convert.rs` | GGUF → AutoAWQ GEMM checkpoint (binary `to-awq`) |
//! | `linear.rs` | [`Linear`]: a weight, however stored, and its matmul |
//! | `rope.rs`, `attention.rs`, `layer.rs` | the pieces of a decoder layer |
//! | `model.rs` | [`Qwen2`]: load and forward |
//! | `cuda.rs`, `causal_softmax.cu` | the fused attention softmax of the candle path (feature `cuda`) |
//! | `fused/` | the fused CUDA forward pass: packed rows, flash attention, one kernel per element-wise step (feature `cuda`) |
//! | `synthetic.rs` | deterministic random checkpoints (feature `synthetic`) |
//!
//! Features: `cuda` (candle's CUDA backend and this crate's kernel), `synthetic` (the
//! checkpoint generator and its `write-checkpoint` binary).

mod attention;
pub mod awq;
mod config;
pub mod convert;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
#[cfg(feature = "cuda")]
mod fused;
pub mod gguf;
mod layer;
mod linear;
mod model;
mod rope;
mod source;
#[cfg(feature = "synthetic")]
pub mod synthetic;
mod weights;

pub use attention::{DEFAULT_QUERY_CHUNK, SCORE_BUDGET};
pub use config::Config;
pub use error::{report, Error, Result};
pub use gguf::GgufLinears;
pub use linear::Linear;
pub use model::{ForwardPath, Qwen2};
