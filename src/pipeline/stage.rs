//! Pipeline stages: built-in processors, which the pipeline fuses, and custom processors.

use crate::config::ProcessorConfig;
use crate::kernels::{AllowedSpec, ForceSpec};
use crate::processor::LogitsProcessor;
use crate::processors::{AllowedIds, ForceToken};

/// One stage of a [`Pipeline`](crate::Pipeline): a built-in processor (converted with
/// `From`/`Into`, so `Pipeline::builder(&c).with(ForceToken::new(&c)?)` just works), or a custom
/// processor wrapped with [`Stage::custom`].
///
/// Built-in stages next to each other are fused by the pipeline into as few passes over the
/// logits as their semantics allow; a custom stage runs on its own, in its place.
pub struct Stage(pub(crate) Kind);

pub(crate) enum Kind {
    Builtin(Box<dyn Builtin>),
    Custom(Box<dyn LogitsProcessor>),
}

impl Stage {
    /// A stage that runs a custom processor on its own, in order.
    pub fn custom(processor: impl LogitsProcessor + 'static) -> Self {
        Self(Kind::Custom(Box::new(processor)))
    }

    /// The stage's processor name.
    pub fn name(&self) -> &'static str {
        self.processor().name()
    }

    /// Whether the stage is a built-in processor (fusable).
    pub fn is_builtin(&self) -> bool {
        matches!(self.0, Kind::Builtin(_))
    }

    pub(crate) fn processor(&self) -> &dyn LogitsProcessor {
        match &self.0 {
            Kind::Builtin(b) => b.as_ref(),
            Kind::Custom(c) => c.as_ref(),
        }
    }

    pub(crate) fn processor_mut(&mut self) -> &mut dyn LogitsProcessor {
        match &mut self.0 {
            Kind::Builtin(b) => b.as_mut(),
            Kind::Custom(c) => c.as_mut(),
        }
    }
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_builtin() {
            "builtin"
        } else {
            "custom"
        };
        f.debug_tuple("Stage")
            .field(&kind)
            .field(&self.name())
            .finish()
    }
}

/// A built-in processor: what the pipeline needs to check it and fuse it. Crate-private, so the
/// set of fusable parts is this crate's business.
pub(crate) trait Builtin: LogitsProcessor {
    /// The configuration it was built with.
    fn config(&self) -> &ProcessorConfig;
    /// Its batch size (0 for a processor that has seen no update).
    fn batch_size(&self) -> usize;
    /// What it contributes to a fused pass.
    fn part(&self) -> Part<'_>;
}

/// A built-in's contribution to a fused pass over the logits.
#[derive(Clone, Copy)]
pub(crate) enum Part<'a> {
    /// A per-row keep-set (ForceToken).
    Keep(ForceSpec<'a>),
    /// A global id set, boosted or kept alone (AllowedIds).
    Ids(AllowedSpec<'a>),
}

macro_rules! builtin_stage {
    ($($t:ty),*) => {$(
        impl From<$t> for Stage {
            fn from(p: $t) -> Self {
                Stage(Kind::Builtin(Box::new(p)))
            }
        }
    )*};
}

builtin_stage!(ForceToken, AllowedIds);
