//! [`FusedOp`] on the CPU: the sparse phase, then the dense phase, row by row. Rows that are
//! only masked are written without being read; rows with nothing dense to do are not touched.

use std::cell::RefCell;

use candle_core::{CpuStorage, Result};
use half::{bf16, f16};

use super::{FusedOp, IdsMode, StepMask, KEEP_BITMASK, KEEP_LIST_MAX, NO_MIN_P, NO_SLOT};

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

/// Below this many logits in the batch, rows run on the calling thread: splitting the work
/// would cost more than it saves (a row of a 150k vocabulary is tens of microseconds).
const PARALLEL_MIN_LOGITS: usize = 1 << 17;

/// Applies `op` to the contiguous `[batch, vocab]` logits; `mask` holds the step's bitmask
/// when it was given as a tensor.
///
/// Rows are independent, so a batch of at least two rows and [`PARALLEL_MIN_LOGITS`] logits
/// is split over rayon's current pool (the global one, sized by `RAYON_NUM_THREADS`, or the
/// pool the caller runs in); each row's result is the same bits whichever thread runs it.
pub(crate) fn run<E: Logit + Send>(op: &FusedOp<'_>, logits: &mut [E], mask: Option<&[u32]>) {
    let rows = logits.chunks_exact_mut(op.vocab).take(op.batch);
    let parallel = op.batch >= 2
        && op.batch * op.vocab >= PARALLEL_MIN_LOGITS
        && rayon::current_num_threads() > 1;
    if parallel {
        use rayon::prelude::*;
        let len = (op.batch * op.vocab).min(logits.len() / op.vocab * op.vocab);
        logits[..len]
            .par_chunks_exact_mut(op.vocab)
            .enumerate()
            .for_each(|(r, row)| run_row(op, r, row, mask));
    } else {
        rows.enumerate()
            .for_each(|(r, row)| run_row(op, r, row, mask));
    }
}

/// One row of the op, with this thread's reused keep mask (no allocation in steady state).
fn run_row<E: Logit>(op: &FusedOp<'_>, r: usize, row: &mut [E], mask: Option<&[u32]>) {
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        keep.resize(op.vocab.div_ceil(32), 0);
        sparse(op, r, row);
        dense(op, r, row, &mut keep, mask);
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
    if let (Some(e), None, None) = (forced, global, step) {
        if e[0] != KEEP_BITMASK {
            let ids = &e[1..1 + e[0] as usize];
            if !values {
                keep_only(row, ids);
                return;
            }
            if ids.len() <= KEEP_LIST_MAX {
                keep_scaled(row, ids, temp, ln_min_p);
                return;
            }
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

/// [`scale_and_cut`] for a row whose only mask is the sorted, distinct `ids` (at most
/// [`KEEP_LIST_MAX`]): the kept values are tempered and cut from a copy on the stack, and the
/// rest of the row is written without being read.
fn keep_scaled<E: Logit>(row: &mut [E], ids: &[u32], temp: f32, ln_min_p: f32) {
    let mut kept = [E::NEG_INF; KEEP_LIST_MAX];
    let kept = &mut kept[..ids.len()];
    let mut max = f32::NEG_INFINITY;
    for (y, &id) in kept.iter_mut().zip(ids) {
        let x = row[id as usize];
        *y = if temp != 1.0 {
            E::put(x.get() / temp)
        } else {
            x
        };
        if y.get() > max {
            max = y.get();
        }
    }
    let threshold = if ln_min_p != NO_MIN_P {
        max + ln_min_p
    } else {
        f32::NEG_INFINITY
    };
    keep_only(row, ids);
    for (&y, &id) in kept.iter().zip(ids) {
        row[id as usize] = if y.get() < threshold { E::NEG_INF } else { y };
    }
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

/// Masked elements to −inf; kept ones divided by `temp` (rounded to the dtype) and cut below
/// `max + ln_min_p`, the maximum taken over the kept, tempered elements.
///
/// One pass masks and tempers (and, with min-p, finds the maximum); with min-p a second pass
/// only compares, so each kept element is divided once.
fn scale_and_cut<E: Logit>(row: &mut [E], keep: Option<&[u32]>, temp: f32, ln_min_p: f32) {
    let max = match (temp != 1.0, ln_min_p != NO_MIN_P) {
        (true, true) => mask_temper::<E, true, true>(row, keep, temp),
        (true, false) => mask_temper::<E, true, false>(row, keep, temp),
        (false, true) => mask_temper::<E, false, true>(row, keep, temp),
        (false, false) => mask_temper::<E, false, false>(row, keep, temp),
    };
    if ln_min_p == NO_MIN_P {
        return;
    }
    // The cut (masked elements are −inf already, and −inf stays −inf).
    let threshold = max + ln_min_p;
    if threshold == f32::NEG_INFINITY {
        return; // nothing is below it
    }
    let cut = |xs: &mut [E]| {
        for x in xs.iter_mut() {
            // Stored unconditionally: a select, not a branch on near-threshold values.
            *x = if x.get() < threshold { E::NEG_INF } else { *x };
        }
    };
    match keep {
        None => cut(row),
        Some(k) => {
            for (chunk, &bits) in row.chunks_mut(32).zip(k) {
                if bits != 0 {
                    cut(chunk);
                }
            }
        }
    }
}

/// The first pass of [`scale_and_cut`]: masked elements to −inf, kept ones divided by `temp`
/// (`TEMPER`); returns the largest kept value, NaN ignored (`MAX`; else −inf). The flags are
/// compile-time so that no loop tests them; the maximum runs on eight independent lanes; a
/// 32-token word whose bits are mixed is lanes of selects (every element loaded, its bit
/// choosing what is stored), which vectorises where a branch per element would mispredict on
/// a grammar's near-random bits.
#[inline(always)]
fn mask_temper<E: Logit, const TEMPER: bool, const MAX: bool>(
    row: &mut [E],
    keep: Option<&[u32]>,
    temp: f32,
) -> f32 {
    #[inline(always)]
    fn lane<E: Logit, const TEMPER: bool, const MAX: bool, const RUN: bool>(
        m: &mut f32,
        x: &mut E,
        kept: bool,
        temp: f32,
    ) {
        let y = if TEMPER { E::put(x.get() / temp) } else { *x };
        let y = if kept { y } else { E::NEG_INF };
        *x = y; // stored unconditionally: a select, not a branch
        if MAX {
            let v = y.get();
            if RUN {
                // A run of kept logits: a new maximum is rare, so the branch predicts well.
                if v > *m {
                    *m = v;
                }
            } else {
                // A mixed word: `max` is a select, which keeps the word's loop vectorised.
                // NaN is ignored either way (`m` is never NaN), and which zero wins does not
                // matter: the threshold `max + ln(min_p)` is the same for ±0.
                *m = m.max(v);
            }
        }
    }
    let mut lanes = [f32::NEG_INFINITY; 8];
    // Elements all kept: eight at a time, one per lane.
    let kept_run = |lanes: &mut [f32; 8], xs: &mut [E]| {
        if !(TEMPER || MAX) {
            return;
        }
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            for (m, x) in lanes.iter_mut().zip(c) {
                lane::<E, TEMPER, MAX, true>(m, x, true, temp);
            }
        }
        for x in chunks.into_remainder() {
            lane::<E, TEMPER, MAX, true>(&mut lanes[0], x, true, temp);
        }
    };
    match keep {
        None => kept_run(&mut lanes, row),
        Some(k) => {
            let n = row.len();
            let mut w = 0;
            while w < k.len() {
                let bits = k[w];
                let start = w * 32;
                if bits == 0 {
                    // A run of masked words as one fill (a row forced to a few tokens is
                    // almost all of it).
                    let end = k[w..]
                        .iter()
                        .position(|&b| b != 0)
                        .map_or(k.len(), |n| w + n);
                    row[start..(end * 32).min(n)].fill(E::NEG_INF);
                    w = end;
                    continue;
                }
                w += 1;
                let chunk = &mut row[start..(start + 32).min(n)];
                if bits == u32::MAX {
                    kept_run(&mut lanes, chunk);
                    continue;
                }
                match <&mut [E; 32]>::try_from(&mut *chunk) {
                    // A whole word, through a copy in registers written back whole: every
                    // element is stored, so the bit selects rather than branches.
                    Ok(word) => {
                        let mut copy = *word;
                        if TEMPER {
                            // Every lane divided (a vector division), masked ones too.
                            for x in copy.iter_mut() {
                                *x = E::put(x.get() / temp);
                            }
                        }
                        for (j, c) in copy.chunks_exact_mut(8).enumerate() {
                            for (l, (m, x)) in lanes.iter_mut().zip(c).enumerate() {
                                let kept = bits >> (8 * j + l) & 1 != 0;
                                lane::<E, false, MAX, false>(m, x, kept, temp);
                            }
                        }
                        *word = copy;
                    }
                    // The row's last, shorter word.
                    Err(_) => {
                        for (i, x) in chunk.iter_mut().enumerate() {
                            lane::<E, TEMPER, MAX, false>(
                                &mut lanes[i % 8],
                                x,
                                bits >> i & 1 != 0,
                                temp,
                            );
                        }
                    }
                }
            }
        }
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}
