//! Pipeline stages: built-in processors, which the pipeline fuses, and custom processors.

use crate::config::ProcessorConfig;
use crate::kernels::table::RowTable;
use crate::kernels::{FusedOp, IdsMode, IdsSpec, PenaltySpec, StepMask};
use crate::processor::LogitsProcessor;
use crate::processors::{
    AllowedIds, BadWords, ForceToken, LogitBias, MinP, MinTokens, Penalties, Temperature,
    TokenBitmask,
};

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
    /// What it contributes to the step's fused pass (`None`: nothing this step).
    fn part(&self) -> Option<Part<'_>>;
    /// Called before every apply, before [`part`](Self::part): host work the fused op needs
    /// first (the CPU's share of a device-side update).
    fn prepare_step(&mut self) -> crate::error::Result<()> {
        Ok(())
    }
    /// Called after every apply of the pipeline (a per-step input is consumed).
    fn finish_step(&mut self) {}
    /// Whether it reads output tokens; a pipeline then reads them once for all such stages.
    fn follows_outputs(&self) -> bool {
        false
    }
    /// From now on the output changes come from [`update_fed`](Self::update_fed) (a pipeline
    /// reads them); the processor opens no cursors of its own.
    fn set_fed(&mut self) {}
    /// `update_state` with this step's output changes, read by the pipeline for every row, and
    /// the rows' outputs as the pipeline follows them.
    fn update_fed(
        &mut self,
        update: Option<&crate::batch::BatchUpdate>,
        _outputs: &crate::output::StepOutputs,
        _lists: &dyn crate::output::RowTokens,
    ) -> crate::error::Result<()> {
        self.update_state(update)
    }
    /// The stage as a [`TokenBitmask`], if it is one.
    fn as_token_bitmask(&mut self) -> Option<&mut TokenBitmask> {
        None
    }
}

/// A built-in's contribution to a fused pass over the logits.
#[derive(Clone, Copy)]
pub(crate) enum Part<'a> {
    /// A per-row keep set (ForceToken).
    Keep(&'a RowTable),
    /// A global id set, boosted or kept alone (AllowedIds).
    Ids(IdsSpec<'a>),
    /// The step's grammar bitmask (TokenBitmask).
    StepMask(StepMask<'a>),
    /// Per-row bans: slot 0 BadWords, slot 1 MinTokens.
    Bans(usize, &'a RowTable),
    /// Per-row logit bias (LogitBias).
    Bias(&'a RowTable),
    /// Penalties.
    Penalties(PenaltySpec<'a>),
    /// Temperature.
    Temperature(&'a RowTable),
    /// Min-p.
    MinP(&'a RowTable),
}

impl Part<'_> {
    /// The part's rank in the fused op's order: 1 masks, 2 bans, 3 global boost, 4 bias,
    /// 5 penalties, 6 temperature, 7 min-p (vLLM's order).
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Part::Keep(_) | Part::StepMask(_) => 1,
            Part::Ids(a) if a.mode == IdsMode::Mask => 1,
            Part::Bans(..) => 2,
            Part::Ids(_) => 3,
            Part::Bias(_) => 4,
            Part::Penalties(_) => 5,
            Part::Temperature(_) => 6,
            Part::MinP(_) => 7,
        }
    }

    /// Puts the part into `op`'s slot; false if the slot is taken.
    pub(crate) fn place<'a>(self, op: &mut FusedOp<'a>) -> bool
    where
        Self: 'a,
    {
        fn put<T>(slot: &mut Option<T>, v: T) -> bool {
            if slot.is_some() {
                return false;
            }
            *slot = Some(v);
            true
        }
        match self {
            Part::Keep(t) => put(&mut op.keep, t),
            Part::Ids(a) => put(&mut op.ids, a),
            Part::StepMask(m) => put(&mut op.step_mask, m),
            Part::Bans(i, t) => put(&mut op.bans[i], t),
            Part::Bias(t) => put(&mut op.bias, t),
            Part::Penalties(p) => put(&mut op.penalties, p),
            Part::Temperature(t) => put(&mut op.temperature, t),
            Part::MinP(t) => put(&mut op.min_p, t),
        }
    }
}

/// Whether a part of rank `c` pushed after parts of ranks `before` can join them in one fused
/// op and give, bit for bit, the result of running them in push order: each earlier part comes
/// earlier in the op's order, or commutes exactly with it. Masks and bans (−inf) commute
/// exactly with everything but min-p (whose threshold depends on what is masked).
pub(crate) fn can_join(before: &[u8], c: u8) -> bool {
    let exact = |a: u8, b: u8| (a <= 2 && b != 7) || (b <= 2 && a != 7);
    before
        .iter()
        .all(|&m| m < c || (m == c && c <= 2) || exact(m, c))
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

builtin_stage!(
    ForceToken,
    AllowedIds,
    LogitBias,
    MinTokens,
    MinP,
    BadWords,
    Penalties,
    Temperature,
    TokenBitmask
);
