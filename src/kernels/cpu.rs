//! The masking kernel on the CPU: write-only fills between kept ids, so a forced row costs one
//! pass of stores and no loads.

use half::{bf16, f16};

use super::IdsMode;
use super::MaskOp;

/// A logit element type.
pub(crate) trait Logit: Copy {
    const NEG_INF: Self;
    fn add(self, boost: f32) -> Self;
}

impl Logit for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn add(self, boost: f32) -> Self {
        self + boost
    }
}

impl Logit for f16 {
    const NEG_INF: Self = f16::NEG_INFINITY;
    fn add(self, boost: f32) -> Self {
        f16::from_f32(self.to_f32() + boost)
    }
}

impl Logit for bf16 {
    const NEG_INF: Self = bf16::NEG_INFINITY;
    fn add(self, boost: f32) -> Self {
        bf16::from_f32(self.to_f32() + boost)
    }
}

/// Sends every element of `row` outside the sorted `keep` ids to −inf.
fn keep_only<E: Logit>(row: &mut [E], keep: impl Iterator<Item = u32>) {
    let mut next = 0;
    for id in keep {
        let id = id as usize;
        row[next..id].fill(E::NEG_INF);
        next = id + 1;
    }
    row[next..].fill(E::NEG_INF);
}

/// Applies `op` to the contiguous `[batch, vocab]` logits.
pub(crate) fn mask<E: Logit>(op: &MaskOp<'_>, logits: &mut [E]) {
    for (r, row) in logits.chunks_exact_mut(op.vocab).take(op.batch).enumerate() {
        let forced = op.force.and_then(|f| {
            let entry = f.table.row(r);
            let n = entry[0] as usize;
            (n > 0).then(|| &entry[1..1 + n])
        });
        match (forced, op.allowed) {
            (None, None) => {}
            (Some(keep), None) => keep_only(row, keep.iter().copied()),
            (Some(keep), Some(a)) => match a.mode {
                IdsMode::Mask => {
                    keep_only(row, keep.iter().copied().filter(|&t| a.contains(t)));
                }
                IdsMode::Boost(boost) => {
                    keep_only(row, keep.iter().copied());
                    for &t in keep.iter().filter(|&&t| a.contains(t)) {
                        row[t as usize] = row[t as usize].add(boost);
                    }
                }
            },
            (None, Some(a)) => match a.mode {
                IdsMode::Mask => keep_only(row, a.ids().iter().copied()),
                IdsMode::Boost(boost) => {
                    for &t in a.ids() {
                        row[t as usize] = row[t as usize].add(boost);
                    }
                }
            },
        }
    }
}
