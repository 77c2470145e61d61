//! [`Pipeline`]: several processors fed as one, built-ins fused.

use candle_core::Tensor;

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ConfigError, Result, UpdateError};
use crate::kernels::FusedOp;
use crate::ledger::RowLedger;
use crate::output::{OutputCursor, OutputTokens, StepOutputs, VersionBoard};
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
/// update. Custom processors must report every rejection from `validate_params`. Such a failure,
/// or a device error while a stage writes its tables, is returned once; the pipeline then
/// answers every call with [`Error::Broken`](crate::Error::Broken) (build a new one) rather
/// than run with stages that disagree on the batch.
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
    /// Per request, its output tokens, and a cursor on them when a stage follows them: the
    /// pipeline reads each request's new tokens once per step for all such stages.
    ledger: RowLedger<RowOutput>,
    follows_outputs: bool,
    /// The versions of the followed output lists, in one array.
    board: std::sync::Arc<VersionBoard>,
    /// Rows whose output changed this step (reused).
    changed: Vec<usize>,
    outputs: StepOutputs,
    stages: Vec<Stage>,
    /// The stage (name, index) that failed an update the others took: every later call fails.
    broken: Option<(&'static str, usize)>,
}

/// How many rows ahead the append step asks for a row's lines.
const AHEAD: usize = 4;

/// A request's output tokens as the pipeline follows them.
#[derive(Debug)]
struct RowOutput {
    out: OutputTokens,
    cursor: Option<OutputCursor>,
}

/// The rows' outputs as the pipeline's cursors hold them.
struct Lists<'a>(&'a RowLedger<RowOutput>);

impl crate::output::RowTokens for Lists<'_> {
    fn tokens(&self, row: usize) -> &[u32] {
        self.0
            .get(row)
            .and_then(|r| r.cursor.as_ref())
            .map_or(&[][..], |c| c.tokens())
    }
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
    ///
    /// # Cost
    ///
    /// O(stages) checks; allocates the pipeline's row ledger (O(capacity)) and, when a stage
    /// follows output tokens, a version board of 2 × capacity + 1 words.
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
        let capacity = self.config.max_batch_size();
        Ok(Pipeline {
            ledger: RowLedger::new(capacity),
            config: self.config,
            follows_outputs,
            // Old and new requests' cursors coexist during an update: twice the capacity.
            board: VersionBoard::new(if follows_outputs { 2 * capacity + 1 } else { 0 }),
            changed: Vec::with_capacity(capacity),
            outputs: StepOutputs::default(),
            stages: self.stages,
            broken: None,
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
    ///
    /// # Cost
    ///
    /// As `apply`, less the skipped stages' passes.
    pub fn apply_greedy(&mut self, logits: &Tensor) -> Result<()> {
        self.run(logits, true)
    }

    /// The pipeline's (first) [`TokenBitmask`] stage, to hand it the step's grammar mask.
    /// O(stages).
    pub fn token_bitmask_mut(&mut self) -> Option<&mut TokenBitmask> {
        self.stages.iter_mut().find_map(|s| match &mut s.0 {
            Kind::Builtin(b) => b.as_token_bitmask(),
            Kind::Custom(_) => None,
        })
    }

    /// Appends the step's sampled tokens to the outputs of the batch's requests and brings
    /// every stage up to date: `tokens[r]` is pushed onto the [`OutputTokens`] of the request
    /// at row `r`, for every row of the batch — the same as the engine pushing each token
    /// itself and then calling [`update_state(None)`](LogitsProcessor::update_state), at the cost
    /// of one lock per row instead of two. The engine's handles see the tokens. Call it instead
    /// of pushing, once per step, before the next step's `update_state` with its batch changes
    /// (if any); pushes, extends and rollbacks made through the handles are still followed.
    ///
    /// # Errors
    ///
    /// [`UpdateError::SampledLength`] if `tokens.len()` is not the batch size (nothing
    /// changes); as `update_state` for a stage that fails (and
    /// [`Error::Broken`](crate::Error::Broken) from then on).
    ///
    /// # Cost
    ///
    /// O(batch) host work: one lock per row and O(1) per row and stage that follows outputs;
    /// no allocation once buffers have grown, no device synchronisation.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use logits_processors::*;
    ///
    /// let config = ProcessorConfig::builder().max_batch_size(2).vocab_size(8).build()?;
    /// let mut pipeline = Pipeline::builder(&config)
    ///     .with(Penalties::new(&config)?)
    ///     .build()?;
    /// let (a, b) = (OutputTokens::new(), OutputTokens::new());
    /// let params = Arc::new(RequestParams::new().with_frequency_penalty(0.5));
    /// let mut u = BatchUpdateBuilder::new();
    /// u.add(0, params.clone()).with_output_tokens(a.clone());
    /// u.add(1, params).with_output_tokens(b.clone());
    /// pipeline.update_state(u.build(2))?;
    /// pipeline.append_sampled(&[3, 5])?; // this step's sampled tokens, one per row
    /// assert_eq!((a.to_vec(), b.to_vec()), (vec![3], vec![5]));
    /// assert!(pipeline.append_sampled(&[1]).is_err()); // one token per row
    /// # Ok::<(), logits_processors::Error>(())
    /// ```
    pub fn append_sampled(&mut self, tokens: &[u32]) -> Result<()> {
        let batch_size = self.ledger.batch_size();
        if tokens.len() != batch_size {
            return Err(UpdateError::SampledLength {
                got: tokens.len(),
                batch_size,
            }
            .into());
        }
        self.update(None, Some(tokens))
    }

    /// `update_state`, with the step's sampled tokens appended first when given (one per
    /// row of the batch after `update`).
    fn update(&mut self, update: Option<&BatchUpdate>, sampled: Option<&[u32]>) -> Result<()> {
        self.check_intact()?;
        // One transactional pass: the rules, then every added request against every stage.
        let (stages, follows, board) = (&self.stages, self.follows_outputs, &self.board);
        self.ledger.apply(update, |added| {
            stages
                .iter()
                .try_for_each(|s| s.processor().validate_params(&added.params))?;
            Ok(Some(RowOutput {
                out: added.output_token_ids.clone(),
                cursor: follows.then(|| added.output_token_ids.watched_cursor(board)),
            }))
        })?;
        let token = |row: usize| sampled.and_then(|s| s.get(row).copied());
        // The step's output changes, read once per request for every stage that follows them.
        // Rows the update touched always get an entry; other rows only when their output
        // changed, found on the version board (one contiguous array, no per-list cache line).
        self.outputs.clear(self.ledger.capacity());
        if self.follows_outputs {
            let batch = self.ledger.batch_size();
            for i in 0..self.ledger.touched().len() {
                let row = self.ledger.touched()[i];
                if row < batch {
                    let cursor = self.ledger.get_mut(row).and_then(|r| r.cursor.as_mut());
                    self.outputs.push_row(row, cursor, token(row), true);
                }
            }
            if let Some(tokens) = sampled {
                // Every row changes: one pass in row order, each row's lines asked for a few
                // rows ahead (the misses of lists scattered over the heap overlap).
                let touched = !self.ledger.touched().is_empty();
                for (row, &t) in tokens.iter().enumerate().take(batch) {
                    if let Some(c) = self.ledger.get(row + AHEAD).and_then(|r| r.cursor.as_ref()) {
                        c.prefetch(true);
                    }
                    if touched && self.outputs.has(row) {
                        continue;
                    }
                    let cursor = self.ledger.get_mut(row).and_then(|r| r.cursor.as_mut());
                    match cursor {
                        // The usual step: the list did not change since the last sync.
                        Some(c) => {
                            if c.push_synced(t) {
                                self.outputs.push_appended(row, t, c.len());
                            } else {
                                self.outputs.push_row(row, Some(c), Some(t), false);
                            }
                        }
                        None => self.outputs.push_row(row, None, Some(t), false),
                    }
                }
            } else {
                self.changed.clear();
                for (row, r) in self.ledger.rows() {
                    let Some(c) = r.and_then(|r| r.cursor.as_ref()) else {
                        continue;
                    };
                    if !self.outputs.has(row) && !c.unchanged() {
                        self.changed.push(row);
                    }
                }
                // One pass; each changed row's lines asked for a few rows ahead.
                for i in 0..self.changed.len() {
                    if let Some(&ahead) = self.changed.get(i + AHEAD) {
                        if let Some(c) = self.ledger.get(ahead).and_then(|r| r.cursor.as_ref()) {
                            c.prefetch(false);
                        }
                    }
                    let row = self.changed[i];
                    let cursor = self.ledger.get_mut(row).and_then(|r| r.cursor.as_mut());
                    match cursor {
                        // The usual step: one token pushed since the last sync.
                        Some(c) => match c.sync_one() {
                            Some(t) => self.outputs.push_appended(row, t, c.len()),
                            None => self.outputs.push_row(row, Some(c), None, false),
                        },
                        None => self.outputs.push_row(row, None, None, false),
                    }
                }
            }
        } else if sampled.is_some() {
            for (row, r) in self.ledger.rows() {
                if let (Some(r), Some(t)) = (r, token(row)) {
                    r.out.push(t);
                }
            }
        }
        // Past this point the update is the pipeline's: a stage that fails leaves the stages
        // out of step with each other, and the pipeline refuses every later call.
        let (outputs, lists) = (&self.outputs, &Lists(&self.ledger));
        for (index, s) in self.stages.iter_mut().enumerate() {
            let result = match &mut s.0 {
                Kind::Builtin(b) => b.update_fed(update, outputs, lists),
                Kind::Custom(c) => c.update_state(update),
            };
            if let Err(e) = result {
                self.broken = Some((s.name(), index));
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`Error::Broken`](crate::Error::Broken) once a stage failed an update the others took.
    fn check_intact(&self) -> Result<()> {
        match self.broken {
            Some((stage, index)) => Err(crate::Error::Broken { stage, index }),
            None => Ok(()),
        }
    }

    fn run(&mut self, logits: &Tensor, greedy: bool) -> Result<()> {
        self.check_intact()?;
        self.config.check_logits(logits, self.ledger.batch_size())?;
        for stage in &mut self.stages {
            if let Kind::Builtin(b) = &mut stage.0 {
                b.prepare_step()?;
            }
        }
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
        self.update(update, None)
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
