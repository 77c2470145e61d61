//! [`Pipeline`]: several processors fed as one.

use candle_core::Tensor;

use crate::batch::BatchUpdate;
use crate::error::Result;
use crate::kernels::{FusionPart, MaskOp, Part};
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::processor::{LogitsProcessor, ProcessorConfig};

/// An ordered list of processors that receives updates and logits as one processor.
///
/// - [`update_state`](LogitsProcessor::update_state) checks the update once against the rules
///   of [`crate::ledger`] and every added request against every processor's
///   [`validate_params`](LogitsProcessor::validate_params) *before* forwarding it, so a bad
///   update leaves every processor untouched.
/// - [`apply`](LogitsProcessor::apply) runs the processors in order; an adjacent ForceToken and
///   AllowedIds run as one fused kernel (their effects commute).
/// - [`apply_greedy`](Self::apply_greedy) skips the argmax-invariant processors, for batches
///   decoded greedily.
///
/// A custom processor whose `update_state` fails for a reason its `validate_params` does not
/// report breaks that all-or-nothing guarantee: the processors before it have then applied the
/// update.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::new(8, 4, Device::Cpu)?;
/// let mut pipeline = Pipeline::new(&config)
///     .with(ForceToken::new(&config)?)
///     .with(AllowedIds::new(&config, [0, 1], AllowedMode::Boost(10.0))?);
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_forced_tokens([1, 2])), None, Default::default());
/// pipeline.update_state(b.build(1).as_ref())?;
/// let logits = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu)?;
/// pipeline.apply(&logits)?;
/// let inf = f32::NEG_INFINITY;
/// assert_eq!(logits.to_vec2::<f32>()?, [[inf, 12., 3., inf]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
pub struct Pipeline {
    config: ProcessorConfig,
    ledger: RowLedger<()>,
    processors: Vec<Box<dyn LogitsProcessor>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.processors.iter().map(|p| p.name()).collect();
        f.debug_struct("Pipeline")
            .field("batch_size", &self.ledger.batch_size())
            .field("processors", &names)
            .finish()
    }
}

impl Pipeline {
    /// An empty pipeline for `config` (the same configuration its processors were built with).
    pub fn new(config: &ProcessorConfig) -> Self {
        Self {
            config: config.clone(),
            ledger: RowLedger::new(config.max_batch_size()),
            processors: Vec::new(),
        }
    }

    /// Appends a processor (builder style). It must not have seen any update yet.
    pub fn with(mut self, processor: impl LogitsProcessor + 'static) -> Self {
        self.push(processor);
        self
    }

    /// Appends a processor. It must not have seen any update yet.
    pub fn push(&mut self, processor: impl LogitsProcessor + 'static) {
        self.processors.push(Box::new(processor));
    }

    /// The number of processors.
    pub fn len(&self) -> usize {
        self.processors.len()
    }

    /// Whether the pipeline holds no processor.
    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    /// Like [`apply`](LogitsProcessor::apply), but skips processors that are
    /// [argmax-invariant](LogitsProcessor::is_argmax_invariant): for a batch decoded greedily.
    ///
    /// # Errors
    ///
    /// As `apply`.
    pub fn apply_greedy(&mut self, logits: &Tensor) -> Result<()> {
        self.run(logits, true)
    }

    fn run(&mut self, logits: &Tensor, greedy: bool) -> Result<()> {
        self.config.check_logits(logits, self.ledger.batch_size())?;
        let mut i = 0;
        while i < self.processors.len() {
            if greedy && self.processors[i].is_argmax_invariant() {
                i += 1;
                continue;
            }
            if let Some(j) = self.fusable_partner(i, greedy) {
                self.run_fused(logits, i, j)?;
                i = j + 1;
            } else {
                self.processors[i].apply(logits)?;
                i += 1;
            }
        }
        Ok(())
    }

    /// The next processor after `i` (skipping argmax-invariant ones when greedy) if `i` and it
    /// are one ForceToken and one AllowedIds.
    fn fusable_partner(&self, i: usize, greedy: bool) -> Option<usize> {
        // Only processors built for this pipeline's vocabulary fuse; others run on their own
        // and report a mismatch as a typed error.
        let words = self.config.vocab_size().div_ceil(32);
        let kind = |p: &dyn LogitsProcessor| match p.fusion_part() {
            Some(FusionPart(Part::Force(_))) => Some(0),
            Some(FusionPart(Part::Allowed(a))) if a.bits.host().len() == words => Some(1),
            _ => None,
        };
        let a = kind(self.processors[i].as_ref())?;
        let j = (i + 1..self.processors.len())
            .find(|&j| !(greedy && self.processors[j].is_argmax_invariant()))?;
        let b = kind(self.processors[j].as_ref())?;
        (a != b).then_some(j)
    }

    fn run_fused(&self, logits: &Tensor, i: usize, j: usize) -> Result<()> {
        let mut op = MaskOp {
            batch: self.ledger.batch_size(),
            vocab: self.config.vocab_size(),
            force: None,
            allowed: None,
        };
        for k in [i, j] {
            match self.processors[k].fusion_part() {
                Some(FusionPart(Part::Force(f))) => op.force = Some(f),
                Some(FusionPart(Part::Allowed(a))) => op.allowed = Some(a),
                None => {}
            }
        }
        op.run(logits)
    }
}

impl LogitsProcessor for Pipeline {
    fn name(&self) -> &'static str {
        "Pipeline"
    }

    /// Asks every processor; the first rejection wins.
    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        self.processors
            .iter()
            .try_for_each(|p| p.validate_params(params))
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        // One transactional pass: the rules, then every added request against every processor.
        let processors = &self.processors;
        self.ledger.apply(update, |added| {
            processors
                .iter()
                .try_for_each(|p| p.validate_params(&added.params))
                .map(|()| None)
        })?;
        self.processors
            .iter_mut()
            .try_for_each(|p| p.update_state(update))
    }

    fn apply(&mut self, logits: &Tensor) -> Result<()> {
        self.run(logits, false)
    }

    /// True when every processor is.
    fn is_argmax_invariant(&self) -> bool {
        self.processors.iter().all(|p| p.is_argmax_invariant())
    }
}
