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
//! - [`ForceToken`]: per request, only a given set of token ids survives;
//! - [`AllowedIds`]: one global id list, boosted or kept alone;
//! - [`Pipeline`]: several processors fed as one, fusing the built-ins into one kernel.
//!
//! Write your own by implementing [`LogitsProcessor`], keeping per-row state in a
//! [`RowLedger`].
//!
//! # An engine loop
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{Device, Tensor};
//! use logits_processors::*;
//!
//! let config = ProcessorConfig::new(64, 8, Device::Cpu)?;
//! let mut processors = Pipeline::new(&config)
//!     .with(ForceToken::new(&config)?)
//!     .with(AllowedIds::new(&config, [5], AllowedMode::Boost(100.0))?);
//! let mut changes = BatchUpdateBuilder::new();
//!
//! // step 1: two requests arrive; the first may only answer token 1 or 2
//! let params = RequestParams::new().with_forced_tokens([1, 2]);
//! processors.validate_params(&params)?; // reject bad requests before admitting them
//! changes.add(0, Arc::new(params), None, Default::default());
//! changes.add(1, Arc::new(RequestParams::new()), None, Default::default());
//! processors.update_state(changes.build(2).as_ref())?;
//! let logits = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu)?;
//! processors.apply(&logits)?; // in place
//! let rows = logits.to_vec2::<f32>()?;
//! assert_eq!(rows[0].iter().filter(|x| x.is_finite()).count(), 2);
//! assert_eq!(rows[1][5], 100.0);
//!
//! // step 2: request 0 finishes; request 1 moves into its row
//! changes.remove(0);
//! changes.move_request(1, 0);
//! processors.update_state(changes.build(1).as_ref())?;
//! let logits = Tensor::zeros((1, 8), candle_core::DType::F32, &Device::Cpu)?;
//! processors.apply(&logits)?;
//!
//! // step 3: nothing changed
//! processors.update_state(changes.build(1).as_ref())?; // None
//! # Ok::<(), logits_processors::Error>(())
//! ```
//!
//! # Features
//!
//! - `cuda`: candle's CUDA backend and the fused in-place CUDA kernel (compiled with NVRTC on
//!   first use). Without it, processors run on the CPU.

#![warn(missing_docs)]

mod allowed_ids;
mod batch;
mod error;
mod force_token;
mod kernels;
pub mod ledger;
mod params;
mod pipeline;
mod processor;
mod table;

pub use allowed_ids::{AllowedIds, AllowedMode};
pub use batch::{
    AddedRequest, BatchUpdate, BatchUpdateBuilder, MoveDirectionality, MovedRequest, OutputTokens,
    StepList,
};
pub use error::{Error, Result};
pub use force_token::ForceToken;
pub use kernels::FusionPart;
pub use ledger::RowLedger;
pub use params::{ExtraArg, RequestParams};
pub use pipeline::Pipeline;
pub use processor::{LogitsProcessor, ProcessorConfig};
