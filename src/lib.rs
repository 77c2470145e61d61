//! Batch logits processors for [candle](https://github.com/huggingface/candle) tensors that
//! follow a *persistent batch*.
//!
//! An inference engine keeps its running requests in the rows of one batch. Each step it tells
//! every processor which requests were **removed**, **added** to which row, and **moved** or
//! **swapped** (a [`BatchUpdate`], vLLM v1's contract, validated: see [`ledger`]), then calls
//! [`apply`](LogitsProcessor::apply) on the logits `[batch, vocab]`, which the processor shapes
//! in place.
//!
//! Built-in processors, on any candle device and for f32, f16 and bf16 logits, each reading its
//! per-request settings from [`RequestParams`] (vLLM's `SamplingParams` names; the full mapping
//! to vLLM, HF transformers and OpenAI names is in `docs/processors.md`):
//! - [`ForceToken`]: vLLM's per-request `allowed_token_ids`: only the given token ids survive;
//! - [`TokenBitmask`]: a grammar engine's per-step allowed-token bitmask (llguidance/xgrammar
//!   layout), from a host slice or a device tensor;
//! - [`BadWords`], [`MinTokens`]: banned continuations and stop tokens held back until
//!   `min_tokens`;
//! - [`LogitBias`]: per-request `logit_bias` of any size;
//! - [`Penalties`]: repetition, frequency and presence penalties, counts following the output
//!   tokens (appends and rollbacks);
//! - [`Temperature`], [`MinP`] (argmax-invariant; Temperature up to ties its rounding can
//!   create);
//! - [`AllowedIds`]: one global id list for every row: a global logit bias
//!   ([`AllowedMode::Boost`]) or a global allow-list ([`AllowedMode::Mask`]);
//! - [`Pipeline`]: several processors fed as one. Stages run in the order they were added;
//!   adjacent built-ins are fused into one pass over the logits wherever that changes no bit
//!   of the result. Added in vLLM's sampler order (masks and bans, bias, penalties,
//!   temperature, min-p: the table's order in `docs/processors.md`) they run as one fused op
//!   and apply vLLM's order; added in another order they give that order's result (a
//!   [`MinP`] added before [`Temperature`] cuts the untempered logits, unlike vLLM).
//!
//! An engine keeps its requests on rows with a [`PersistentBatch`], keyed by its own request
//! ids: it says which requests leave, join or reorder, and the batch picks the rows (vLLM's
//! policy) and writes each step's [`BatchUpdate`], so that no move goes unreported.
//!
//! Write your own processor by implementing [`LogitsProcessor`], keeping per-row state in a
//! [`RowLedger`], and run it in a pipeline with [`Stage::custom`]. A request can hand it shared
//! objects of any type ([`RequestParams::with_object`]: a grammar matcher, a compiled regex),
//! and on the CPU [`for_each_row_mut`] gives each row as a plain `&mut [f32]` (or f16/bf16).
//!
//! `apply` writes the logits' storage in place, and candle's clones and views share it: keep
//! raw logits (for logprobs) with `logits.copy()?` before `apply`.
//!
//! # An engine loop
//!
//! A runnable, complete loop over a toy model is `examples/engine_loop.rs`; its core:
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{DType, Device, Tensor, D};
//! use logits_processors::*;
//!
//! let config = ProcessorConfig::builder().max_batch_size(64).vocab_size(8).build()?;
//! let mut processors = Pipeline::builder(&config)
//!     .with(ForceToken::new(&config)?)
//!     .with(AllowedIds::new(&config, [5], AllowedMode::Boost(100.0))?)
//!     .build()?;
//! let mut batch = PersistentBatch::<&str>::new(config.max_batch_size());
//!
//! // step 1: two requests arrive; "x" may only answer token 1 or 2
//! let params = RequestParams::new().with_allowed_token_ids([1, 2]);
//! processors.validate_params(&params)?; // reject bad requests before admitting them
//! batch.add("x", Arc::new(params))?;
//! batch.add("y", Arc::new(RequestParams::new()))?;
//! processors.update_state(batch.step())?;
//! let logits = Tensor::zeros((batch.len(), 8), DType::F32, &Device::Cpu)?;
//! processors.apply(&logits)?; // in place
//! let rows = logits.to_vec2::<f32>()?;
//! assert_eq!(rows[batch.row_of(&"x").unwrap()].iter().filter(|x| x.is_finite()).count(), 2);
//! assert_eq!(rows[batch.row_of(&"y").unwrap()][5], 100.0);
//!
//! // step 2: "x" finishes; "y" is moved into its row, and the move is reported
//! batch.remove(&"x")?;
//! processors.update_state(batch.step())?;
//! assert_eq!(batch.row_of(&"y"), Some(0));
//! let logits = Tensor::zeros((batch.len(), 8), DType::F32, &Device::Cpu)?;
//! processors.apply(&logits)?;
//! assert_eq!(logits.argmax(D::Minus1)?.to_vec1::<u32>()?, [5]);
//!
//! // step 3: nothing changed
//! assert!(batch.step().is_none());
//! processors.update_state(None)?;
//! # Ok::<(), logits_processors::Error>(())
//! ```
//!
//! # Features
//!
//! - `cuda`: candle's CUDA backend and the fused in-place CUDA kernel (compiled with NVRTC on
//!   first use). Without it, processors run on the CPU.
//!
//! # candle version
//!
//! The processors take `candle_core` tensors; this crate re-exports the `candle_core` it was
//! built against as [`candle_core`], so an engine can name the same version (or `[patch]` it).
//! Likewise [`half`], whose `f16` and `bf16` are the element types of [`RowMut`]'s rows.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use candle_core;
/// The `half` crate of [`RowMut::F16`] and [`RowMut::BF16`], re-exported so that an engine
/// names the same version.
pub use half;

mod batch;
mod config;
mod cpu_rows;
mod error;
mod kernels;
pub mod ledger;
mod objects;
mod output;
mod params;
mod persistent_batch;
mod pipeline;
mod processor;
mod processors;
mod spin_lock;

pub use batch::{AddedRequest, BatchUpdate, BatchUpdateBuilder, MoveDirectionality, MovedRequest};
pub use config::{ProcessorConfig, ProcessorConfigBuilder};
pub use cpu_rows::{for_each_row_mut, RowMut};
pub use error::{BatchError, ConfigError, Error, LogitsError, ParamsError, Result, UpdateError};
pub use ledger::RowLedger;
pub use objects::RequestObjects;
pub use output::{OutputChange, OutputCursor, OutputTokens};
pub use params::{ExtraArg, RequestParams};
pub use persistent_batch::PersistentBatch;
pub use pipeline::{Pipeline, PipelineBuilder, Stage};
pub use processor::LogitsProcessor;
pub use processors::{
    AllowedIds, AllowedMode, BadWords, ForceToken, LogitBias, MinP, MinTokens, Penalties,
    Temperature, TokenBitmask,
};
