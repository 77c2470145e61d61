//! [`FusedOp`] on the CPU: the sparse phase, then the dense phase, row by row. Rows that are
//! only masked are written without being read; rows with nothing dense to do are not touched.

use std::cell::RefCell;

use candle_core::{CpuStorage, Result};
use half::{bf16, f16};

use super::{FusedOp, IdsMode, StepMask, KEEP_BITMASK, NO_MIN_P, NO_SLOT};

/// A logit element type: read as f32, stored rounded to nearest even.
pub(crate) trait Logit: Copy {
    const NEG_INF: Self;
    fn get(self) -> f32;
    fn put(x: f32) -> Self;
}

impl Logit for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn get(self) -> f32 {
        self
    }
    fn put(x: f32) -> Self {
        x
    }
}

impl Logit for f16 {
    const NEG_INF: Self = f16::NEG_INFINITY;
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Logit for bf16 {
    const NEG_INF: Self = bf16::NEG_INFINITY;
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn put(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// The f32 arithmetic of one penalised logit (shared with the reference tests by value, and
/// mirrored exactly by the CUDA kernel).
#[inline]
pub(crate) fn penalise(x: f32, count: u32, in_prompt: bool, rep: f32, freq: f32, pres: f32) -> f32 {
    let mut y = x;
    if rep != 1.0 && (in_prompt || count > 0) {
        y = if y > 0.0 { y / rep } else { y * rep };
    }
    if count > 0 {
        y -= freq * count as f32;
        y -= pres;
    }
    y
}

pub(crate) fn run_storage(
    op: &FusedOp<'_>,
    storage: &mut CpuStorage,
    start: usize,
    end: usize,
    mask: Option<&[u32]>,
) -> Result<()> {
    match storage {
        CpuStorage::F32(v) => run(op, &mut v[start..end], mask),
        CpuStorage::F16(v) => run(op, &mut v[start..end], mask),
        CpuStorage::BF16(v) => run(op, &mut v[start..end], mask),
        _ => candle_core::bail!("unsupported logits dtype (f32, f16 or bf16 only)"),
    }
    Ok(())
}

thread_local! {
    /// The keep mask of the row being processed (reused: no allocation per step).
    static KEEP: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Applies `op` to the contiguous `[batch, vocab]` logits; `mask` holds the step's bitmask
/// when it was given as a tensor.
pub(crate) fn run<E: Logit>(op: &FusedOp<'_>, logits: &mut [E], mask: Option<&[u32]>) {
    let words = op.vocab.div_ceil(32);
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        keep.resize(words, 0);
        for (r, row) in logits.chunks_exact_mut(op.vocab).take(op.batch).enumerate() {
            sparse(op, r, row);
            dense(op, r, row, &mut keep, mask);
        }
    });
}

fn sparse<E: Logit>(op: &FusedOp<'_>, r: usize, row: &mut [E]) {
    for bans in op.bans.iter().flatten() {
        let e = bans.row(r);
        for &t in &e[1..1 + e[0] as usize] {
            row[t as usize] = E::NEG_INF;
        }
    }
    if let Some(ids) = op.ids {
        if let IdsMode::Boost(b) = ids.mode {
            for &t in ids.ids() {
                let x = &mut row[t as usize];
                *x = E::put(x.get() + b);
            }
        }
    }
    if let Some(bias) = op.bias {
        let e = bias.row(r);
        for pair in e[1..1 + 2 * e[0] as usize].chunks_exact(2) {
            let x = &mut row[pair[0] as usize];
            *x = E::put(x.get() + f32::from_bits(pair[1]));
        }
    }
    if let Some(p) = op.penalties {
        let params = p.params.row(r);
        let (rep, freq, pres) = (
            f32::from_bits(params[0]),
            f32::from_bits(params[1]),
            f32::from_bits(params[2]),
        );
        let slot = params[3];
        if slot != NO_SLOT && (rep != 1.0 || freq != 0.0 || pres != 0.0) {
            // The counts were brought up to date by `CountTable::process_host` before the op.
            let tab = p.counts.host_row(slot as usize);
            for (t, count, in_prompt) in super::counts::entries(tab, p.counts.w()) {
                if count == 0 && !in_prompt {
                    continue;
                }
                let x = &mut row[t as usize];
                *x = E::put(penalise(x.get(), count, in_prompt, rep, freq, pres));
            }
        }
    }
}

fn dense<E: Logit>(
    op: &FusedOp<'_>,
    r: usize,
    row: &mut [E],
    keep: &mut [u32],
    tensor_mask: Option<&[u32]>,
) {
    let words = keep.len();
    let temp = op.temperature.map_or(1.0, |t| f32::from_bits(t.row(r)[0]));
    let ln_min_p = op.min_p.map_or(NO_MIN_P, |m| f32::from_bits(m.row(r)[0]));
    let forced = op.keep.map(|k| k.row(r)).filter(|e| e[0] != 0);
    let global = op
        .ids
        .filter(|a| a.mode == IdsMode::Mask)
        .map(|a| a.bits.row(0));
    let step = op.step_mask.and_then(|m| {
        if m.active().row(r)[0] == 0 {
            return None;
        }
        Some(match m {
            StepMask::Table { words: w, .. } => &w.row(r)[..words],
            StepMask::Tensor { .. } => {
                &tensor_mask.expect("tensor mask given")[r * words..][..words]
            }
        })
    });
    let values = temp != 1.0 || ln_min_p != NO_MIN_P;
    if forced.is_none() && global.is_none() && step.is_none() {
        if values {
            scale_and_cut(row, None, temp, ln_min_p);
        }
        return;
    }
    if let (Some(e), None, None, false) = (forced, global, step, values) {
        if e[0] != KEEP_BITMASK {
            keep_only(row, &e[1..1 + e[0] as usize]);
            return;
        }
    }
    // The row's keep mask: the intersection of its masks.
    keep.fill(u32::MAX);
    if let Some(e) = forced {
        if e[0] == KEEP_BITMASK {
            keep.copy_from_slice(&e[1..1 + words]);
        } else {
            keep.fill(0);
            for &t in &e[1..1 + e[0] as usize] {
                keep[(t / 32) as usize] |= 1 << (t % 32);
            }
        }
    }
    for m in [global, step].into_iter().flatten() {
        for (k, w) in keep.iter_mut().zip(m) {
            *k &= w;
        }
    }
    scale_and_cut(row, Some(keep), temp, ln_min_p);
}

/// Sends every element outside the sorted `ids` to −inf without reading it.
fn keep_only<E: Logit>(row: &mut [E], ids: &[u32]) {
    let mut next = 0;
    for &id in ids {
        let id = id as usize;
        row[next..id].fill(E::NEG_INF);
        next = id + 1;
    }
    row[next..].fill(E::NEG_INF);
}

/// The largest `f(x)` over `xs`, NaN ignored (eight independent lanes, so the loop pipelines).
fn max_of<E: Logit>(xs: &[E], f: impl Fn(E) -> f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            let v = f(x);
            if v > *m {
                *m = v;
            }
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in lanes.into_iter().chain(rest.iter().map(|&x| f(x))) {
        if v > m {
            m = v;
        }
    }
    m
}

/// Masked elements to −inf; kept ones divided by `temp` (rounded) and cut below
/// `max + ln_min_p`, the maximum taken over the kept, tempered elements.
fn scale_and_cut<E: Logit>(row: &mut [E], keep: Option<&[u32]>, temp: f32, ln_min_p: f32) {
    let tempered = |x: E| {
        if temp != 1.0 {
            E::put(x.get() / temp)
        } else {
            x
        }
    };
    let value = |x: E| tempered(x).get();
    let threshold = if ln_min_p != NO_MIN_P {
        let max = match keep {
            None => max_of(row, value),
            Some(k) => {
                let mut m = f32::NEG_INFINITY;
                for (chunk, &bits) in row.chunks(32).zip(k) {
                    let v = match bits {
                        0 => continue,
                        u32::MAX => max_of(chunk, value),
                        _ => max_of_bits(chunk, bits, value),
                    };
                    if v > m {
                        m = v;
                    }
                }
                m
            }
        };
        max + ln_min_p
    } else {
        f32::NEG_INFINITY
    };
    let cut = |x: &mut E| {
        let y = tempered(*x);
        *x = if y.get() < threshold { E::NEG_INF } else { y };
    };
    match keep {
        Some(k) => {
            for (chunk, &bits) in row.chunks_mut(32).zip(k) {
                match bits {
                    0 => chunk.fill(E::NEG_INF),
                    u32::MAX => chunk.iter_mut().for_each(cut),
                    _ => {
                        for (i, x) in chunk.iter_mut().enumerate() {
                            if bits >> i & 1 == 0 {
                                *x = E::NEG_INF;
                            } else {
                                cut(x);
                            }
                        }
                    }
                }
            }
        }
        None => row.iter_mut().for_each(cut),
    }
}

/// The largest `f(x)` over the elements of `chunk` whose bit is set in `bits`.
fn max_of_bits<E: Logit>(chunk: &[E], mut bits: u32, f: impl Fn(E) -> f32) -> f32 {
    let mut m = f32::NEG_INFINITY;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(&x) = chunk.get(i) {
            let v = f(x);
            if v > m {
                m = v;
            }
        }
    }
    m
}
