//! Batch logits processors for [candle](https://github.com/huggingface/candle) tensors that
//! follow a *persistent batch*.
//!
//! An inference engine keeps its running requests in the rows of one batch. Each step it tells
//! every processor which requests were **removed**, **added** to which row, and **moved** or
//! **swapped** (a [`BatchUpdate`], vLLM v1's contract, validated: see [`ledger`]), then calls
//! [`apply`](LogitsProcessor::apply) on the logits `[batch, vocab]`, which the processor shapes
//! in place.
//!
//! Built-in processors, on any candle device and for f32, f16 and bf16 logits:
//! - [`ForceToken`]: vLLM's per-request `allowed_token_ids`: only the given token ids survive;
//! - [`AllowedIds`]: one global id list for every row: a global logit bias
//!   ([`AllowedMode::Boost`]) or a global allow-list ([`AllowedMode::Mask`]);
//! - [`Pipeline`]: several processors fed as one, fusing the built-ins into one pass.
//!
//! Write your own by implementing [`LogitsProcessor`], keeping per-row state in a
//! [`RowLedger`], and run it in a pipeline with [`Stage::custom`].
//!
//! # An engine loop
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{Device, Tensor};
//! use logits_processors::*;
//!
//! let config = ProcessorConfig::builder().max_batch_size(64).vocab_size(8).build()?;
//! let mut processors = Pipeline::builder(&config)
//!     .with(ForceToken::new(&config)?)
//!     .with(AllowedIds::new(&config, [5], AllowedMode::Boost(100.0))?)
//!     .build()?;
//! let mut changes = BatchUpdateBuilder::new();
//!
//! // step 1: two requests arrive; the first may only answer token 1 or 2
//! let params = RequestParams::new().with_allowed_token_ids([1, 2]);
//! processors.validate_params(&params)?; // reject bad requests before admitting them
//! changes.add(0, Arc::new(params));
//! changes.add(1, Arc::new(RequestParams::new()));
//! processors.update_state(changes.build(2))?;
//! let logits = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu)?;
//! processors.apply(&logits)?; // in place
//! let rows = logits.to_vec2::<f32>()?;
//! assert_eq!(rows[0].iter().filter(|x| x.is_finite()).count(), 2);
//! assert_eq!(rows[1][5], 100.0);
//!
//! // step 2: request 0 finishes; request 1 moves into its row
//! changes.remove(0);
//! changes.move_request(1, 0);
//! processors.update_state(changes.build(1))?;
//! let logits = Tensor::zeros((1, 8), candle_core::DType::F32, &Device::Cpu)?;
//! processors.apply(&logits)?;
//!
//! // step 3: nothing changed
//! processors.update_state(changes.build(1))?; // None
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

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use candle_core;

mod batch;
mod config;
mod error;
mod kernels;
pub mod ledger;
mod output;
mod params;
mod pipeline;
mod processor;
mod processors;

pub use batch::{AddedRequest, BatchUpdate, BatchUpdateBuilder, MoveDirectionality, MovedRequest};
pub use config::{ProcessorConfig, ProcessorConfigBuilder};
pub use error::{ConfigError, Error, LogitsError, ParamsError, Result, UpdateError};
pub use ledger::RowLedger;
pub use output::{OutputChange, OutputCursor, OutputTokens};
pub use params::{ExtraArg, RequestParams};
pub use pipeline::{Pipeline, PipelineBuilder, Stage};
pub use processor::LogitsProcessor;
pub use processors::{AllowedIds, AllowedMode, ForceToken};
