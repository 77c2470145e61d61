//! [`Pipeline`]: several processors fed as one, built-ins fused.

use candle_core::Tensor;

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ConfigError, Result};
use crate::kernels::FusedOp;
use crate::ledger::RowLedger;
use crate::output::{OutputCursor, StepOutputs};
use crate::params::RequestParams;
use crate::processor::LogitsProcessor;

pub(crate) mod stage;

use crate::processors::TokenBitmask;
pub use stage::Stage;
use stage::{can_join, Kind};

/// An ordered list of processors that receives updates and logits as one processor.
///
/// Build it with [`Pipeline::builder`]: the stages are fixed once built, and each built-in
/// stage must have been built from the pipeline's [`ProcessorConfig`] and not have seen any
/// update yet (otherwise [`build`](PipelineBuilder::build) returns a [`ConfigError`]).
///
/// - [`update_state`](LogitsProcessor::update_state) checks the update once against the rules
///   of [`crate::ledger`] and every added request against every stage's
///   [`validate_params`](LogitsProcessor::validate_params) *before* forwarding it, so a bad
///   update reaches no stage, and all stages always agree on the batch.
/// - [`apply`](LogitsProcessor::apply) runs the stages in order. Adjacent built-in stages are
///   fused into as few passes over the logits as give, bit for bit, the result of running them
///   one after the other (see below); a custom stage runs on its
///   own, in its place.
/// - [`apply_greedy`](Self::apply_greedy) skips the argmax-invariant stages, for batches
///   decoded greedily.
///
/// # Fusion
///
/// The built-ins run as one fused op with a fixed order — masks (ForceToken, TokenBitmask,
/// AllowedIds in mask mode), bans (BadWords, MinTokens), the global boost (AllowedIds in boost
/// mode), LogitBias, Penalties, Temperature, MinP: vLLM's sampler order — in two phases over
/// the logits (the listed tokens, then one dense pass; see the crate's `kernels` module).
/// Adjacent built-in stages join one op when every earlier one comes earlier in that order or
/// commutes exactly with it (masks and bans commute with everything but MinP), so the result
/// is bit for bit that of running the stages one after the other in the order given. Build the
/// pipeline in vLLM's order to get one op.
///
/// A custom processor whose `update_state` fails for a reason its `validate_params` does not
/// report breaks the all-or-nothing guarantee: the stages before it have then applied the
/// update. Custom processors must report every rejection from `validate_params`.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(8).vocab_size(4).build()?;
/// let mut pipeline = Pipeline::builder(&config)
///     .with(ForceToken::new(&config)?)
///     .with(AllowedIds::new(&config, [0, 1], AllowedMode::Boost(10.0))?)
///     .build()?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_allowed_token_ids([1, 2])));
/// pipeline.update_state(b.build(1))?;
/// let logits = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu)?;
/// pipeline.apply(&logits)?;
/// let inf = f32::NEG_INFINITY;
/// assert_eq!(logits.to_vec2::<f32>()?, [[inf, 12., 3., inf]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
pub struct Pipeline {
    config: ProcessorConfig,
    /// Per request, a cursor on its output tokens when a stage follows them: the pipeline reads
    /// each request's new tokens once per step for all such stages.
    ledger: RowLedger<OutputCursor>,
    follows_outputs: bool,
    outputs: StepOutputs,
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("batch_size", &self.ledger.batch_size())
            .field("stages", &self.stages)
            .finish()
    }
}

/// Builds a [`Pipeline`]: add stages in order with [`with`](Self::with) (built-ins) and
/// [`with_custom`](Self::with_custom), then [`build`](Self::build).
#[must_use]
pub struct PipelineBuilder {
    config: ProcessorConfig,
    stages: Vec<Stage>,
}

impl std::fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("stages", &self.stages)
            .finish()
    }
}

impl PipelineBuilder {
    /// Appends a stage: a built-in processor (anything convertible into a [`Stage`]) or a
    /// [`Stage::custom`].
    pub fn with(mut self, stage: impl Into<Stage>) -> Self {
        self.stages.push(stage.into());
        self
    }

    /// Appends a custom processor; same as `with(Stage::custom(processor))`.
    pub fn with_custom(self, processor: impl LogitsProcessor + 'static) -> Self {
        self.with(Stage::custom(processor))
    }

    /// The pipeline.
    ///
    /// # Errors
    ///
    /// [`ConfigError::StageMismatch`] if a built-in stage was built for another capacity,
    /// vocabulary or device than the pipeline; [`ConfigError::StageNotFresh`] if a built-in
    /// stage has already followed a batch. (Custom stages cannot be checked: build them from the
    /// same configuration and give them fresh.)
    pub fn build(mut self) -> Result<Pipeline> {
        for stage in &self.stages {
            if let Kind::Builtin(b) = &stage.0 {
                self.config.check_stage(b.name(), b.config())?;
                if b.batch_size() != 0 {
                    return Err(ConfigError::StageNotFresh {
                        stage: b.name(),
                        batch_size: b.batch_size(),
                    }
                    .into());
                }
            }
        }
        let mut follows_outputs = false;
        for stage in &mut self.stages {
            if let Kind::Builtin(b) = &mut stage.0 {
                if b.follows_outputs() {
                    b.set_fed();
                    follows_outputs = true;
                }
            }
        }
        Ok(Pipeline {
            ledger: RowLedger::new(self.config.max_batch_size()),
            config: self.config,
            follows_outputs,
            outputs: StepOutputs::default(),
            stages: self.stages,
        })
    }
}

impl Pipeline {
    /// A builder for a pipeline for `config` (the configuration its stages were built with).
    pub fn builder(config: &ProcessorConfig) -> PipelineBuilder {
        PipelineBuilder {
            config: config.clone(),
            stages: Vec::new(),
        }
    }

    /// The number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Whether the pipeline holds no stage.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    /// The stages' processor names, in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.iter().map(Stage::name)
    }

    /// The configuration.
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// Like [`apply`](LogitsProcessor::apply), but skips stages that are
    /// [argmax-invariant](LogitsProcessor::is_argmax_invariant): for a batch decoded greedily.
    ///
    /// # Errors
    ///
    /// As `apply`.
    pub fn apply_greedy(&mut self, logits: &Tensor) -> Result<()> {
        self.run(logits, true)
    }

    /// The pipeline's [`TokenBitmask`] stage, to hand it the step's grammar mask.
    pub fn token_bitmask_mut(&mut self) -> Option<&mut TokenBitmask> {
        self.stages.iter_mut().find_map(|s| match &mut s.0 {
            Kind::Builtin(b) => b.as_token_bitmask(),
            Kind::Custom(_) => None,
        })
    }

    fn run(&mut self, logits: &Tensor, greedy: bool) -> Result<()> {
        self.config.check_logits(logits, self.ledger.batch_size())?;
        let result = self.run_stages(logits, greedy);
        for stage in &mut self.stages {
            if let Kind::Builtin(b) = &mut stage.0 {
                b.finish_step();
            }
        }
        result
    }

    /// Runs the stages in order, fusing each run of adjacent built-ins whose effects can be
    /// reordered into the fused op's order without changing a bit (see [`crate::kernels`] and
    /// [`can_join`]).
    fn run_stages(&mut self, logits: &Tensor, greedy: bool) -> Result<()> {
        let empty = FusedOp::new(self.ledger.batch_size(), self.config.vocab_size());
        let mut fused = empty;
        let mut classes = [0u8; 16];
        let mut n = 0;
        for stage in &mut self.stages {
            if greedy && stage.processor().is_argmax_invariant() {
                continue;
            }
            match &mut stage.0 {
                Kind::Builtin(b) => {
                    let Some(part) = b.part() else { continue };
                    let c = part.rank();
                    let joins = n < classes.len() && can_join(&classes[..n], c);
                    if !joins || !part.place(&mut fused) {
                        fused.run(logits)?;
                        fused = empty;
                        n = 0;
                        part.place(&mut fused);
                    }
                    classes[n] = c;
                    n += 1;
                }
                Kind::Custom(c) => {
                    fused.run(logits)?;
                    fused = empty;
                    n = 0;
                    c.apply(logits)?;
                }
            }
        }
        fused.run(logits)?;
        Ok(())
    }
}

impl LogitsProcessor for Pipeline {
    fn name(&self) -> &'static str {
        "Pipeline"
    }

    /// Asks every stage; the first rejection wins.
    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        self.stages
            .iter()
            .try_for_each(|s| s.processor().validate_params(params))
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        // One transactional pass: the rules, then every added request against every stage.
        let (stages, follows) = (&self.stages, self.follows_outputs);
        self.ledger.apply(update, |added| {
            stages
                .iter()
                .try_for_each(|s| s.processor().validate_params(&added.params))?;
            Ok(follows.then(|| added.output_token_ids.cursor()))
        })?;
        // The step's output changes, read once per request for every stage that follows them.
        // Rows the update touched always get an entry; other rows only when their output
        // changed (one atomic check each when it did not).
        self.outputs.clear(self.ledger.capacity());
        if self.follows_outputs {
            let batch = self.ledger.batch_size();
            for i in 0..self.ledger.touched().len() {
                let row = self.ledger.touched()[i];
                if row < batch {
                    self.outputs.push_row(row, self.ledger.get_mut(row), true);
                }
            }
            for (row, cursor) in self.ledger.rows_mut() {
                if !self.outputs.has(row) {
                    self.outputs.push_row(row, cursor, false);
                }
            }
        }
        let outputs = &self.outputs;
        self.stages.iter_mut().try_for_each(|s| match &mut s.0 {
            Kind::Builtin(b) => b.update_fed(update, outputs),
            Kind::Custom(c) => c.update_state(update),
        })
    }

    fn apply(&mut self, logits: &Tensor) -> Result<()> {
        self.run(logits, false)
    }

    /// True when every stage is.
    fn is_argmax_invariant(&self) -> bool {
        self.stages
            .iter()
            .all(|s| s.processor().is_argmax_invariant())
    }
}

impl From<Pipeline> for Stage {
    /// A pipeline nested in another runs as one custom stage.
    fn from(p: Pipeline) -> Self {
        Stage::custom(p)
    }
}
