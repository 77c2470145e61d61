//! Per-request token counts of the penalties, kept beside the logits (host memory on the CPU,
//! device memory on CUDA) and updated *there* from each step's output changes: the host keeps
//! no per-token state.
//!
//! A [`CountTable`] holds one small open-addressing hash table per *slot*: a request gets a
//! slot when it joins and keeps it wherever its row moves, so moves and swaps of the batch cost
//! nothing here (the row's parameters name its slot). A slot's row of the table is
//!
//! ```text
//! [used, key_0, ref_0, …, key_{W-1}, ref_{W-1}, lkey_0, value_0, …, lkey_{W/2-1}, value_{W/2-1}]
//! ```
//!
//! with `W` a power of two (the same for every slot): a hash of `key = token + 1` (0: empty;
//! linear probing from [`home`]) to `ref` = its entry's index in the list + 1, and the list of
//! the `used` entries in claim order, each `lkey` (the key again) and
//! `value = count << 1 | in_prompt`. A pass over a row (the sparse phase's penalties) reads
//! only the list, in order; updates find an entry through the hash. Keys are never removed
//! while the slot's request lives (a count may fall back to 0).
//!
//! The host *logs* changes: [`reset`](CountTable::reset) (a request joins the slot),
//! [`log`](CountTable::log) (an output token appended or rolled back, a prompt token). The log
//! is one flat array, `[header; slots][n][entries; 2n]`: the header of a slot reset since the
//! last processing is `RESET | index of the first entry that follows the reset`; an entry is
//! `[slot | kind << 30, token]`. It is processed (the slots reset first, then the entries after
//! their slot's reset, in any order: the updates are commutative) by:
//! - the fused op's sparse phase, for the rows it visits, before it applies the penalties (on
//!   CUDA the log travels in the same host-to-device copy as the step's other table writes);
//! - [`CountTable::drain`] when the log grows long between two applies (one launch on CUDA).
//!
//! On the CPU, [`CountTable::process_host`] is that same processing, run by the host before
//! the fused op.
//!
//! Capacity: the host keeps, per slot, an upper bound of its distinct tokens (its prompt tokens
//! plus the tokens appended since the request joined; on the CPU, re-read as the exact count
//! after each processing) and grows `W` so that every table stays at most half full; the
//! growth rehashes every slot where the table lives (one launch on CUDA), dropping entries whose
//! count fell to 0 outside the prompt.

use candle_core::{Device, Result};

/// Entry kinds (bits 30..32 of an entry's first word).
pub(crate) const ADD: u32 = 0;
pub(crate) const SUB: u32 = 1;
pub(crate) const PROMPT: u32 = 2;
/// The header bit of a slot reset since the last processing.
pub(crate) const RESET: u32 = 1 << 31;
/// Slot numbers must fit below the kind bits.
pub(crate) const MAX_SLOTS: usize = 1 << 30;
const SLOT_MASK: u32 = (1 << 30) - 1;
/// Hash positions per slot at first.
const MIN_W: usize = 16;
/// Fibonacci hashing multiplier (shared with `cu/counts.cu`).
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Words per slot row for `w` hash positions.
pub(crate) fn row_width(w: usize) -> usize {
    1 + 3 * w
}

/// The first position probed for `token` in a table of `w` (a power of two) positions.
#[inline]
pub(crate) fn home(token: u32, w: usize) -> usize {
    let shift = 64 - w.trailing_zeros();
    ((u64::from(token) + 1).wrapping_mul(MUL) >> shift) as usize
}

/// A hash `ref` past the list (never while tables are kept half full; `cu/counts.cu` too).
const NO_REF: u32 = u32::MAX;

/// The word of the value of list entry `k` in a slot row of `w` positions.
#[inline]
fn value_at(w: usize, k: usize) -> usize {
    2 + 2 * w + 2 * k
}

/// The list index of `token` in a slot row of `w` positions, claimed (and listed with value 0)
/// if absent; `None` past the list.
fn claim(row: &mut [u32], w: usize, token: u32) -> Option<usize> {
    let key = token + 1;
    let mut i = home(token, w);
    loop {
        let k = row[1 + 2 * i];
        if k == key {
            let r = row[2 + 2 * i];
            return (r != NO_REF).then(|| r as usize - 1);
        }
        if k == 0 {
            row[1 + 2 * i] = key;
            let used = row[0] as usize;
            row[0] += 1;
            if used < w / 2 {
                row[1 + 2 * w + 2 * used] = key;
                row[value_at(w, used)] = 0;
                row[2 + 2 * i] = used as u32 + 1;
                return Some(used);
            }
            row[2 + 2 * i] = NO_REF;
            return None;
        }
        i = (i + 1) & (w - 1);
    }
}

/// Applies one logged entry to a slot row.
fn apply_entry(row: &mut [u32], w: usize, kind: u32, token: u32) {
    let Some(k) = claim(row, w, token) else {
        return;
    };
    let v = &mut row[value_at(w, k)];
    *v = match kind {
        ADD => v.wrapping_add(2),
        SUB => v.wrapping_sub(2),
        _ => *v | 1,
    };
}

/// The used entries of a slot row: `(token, count, in_prompt)`, in list order.
pub(crate) fn entries(row: &[u32], w: usize) -> impl Iterator<Item = (u32, u32, bool)> + '_ {
    let used = (row[0] as usize).min(w / 2);
    row[1 + 2 * w..1 + 2 * w + 2 * used]
        .chunks_exact(2)
        .map(|e| (e[0] - 1, e[1] >> 1, e[1] & 1 != 0))
}

/// Logs entries into a [`CountTable`]'s log ([`CountTable::writer`]); the entry count is
/// updated when it drops.
pub(crate) struct LogWriter<'a> {
    /// The table's log, held here while writing (its length stays in a register).
    log: Vec<u32>,
    table: &'a mut CountTable,
    n: u32,
}

impl LogWriter<'_> {
    /// Logs an entry of `kind` for `token` in `slot`, as [`CountTable::log`].
    #[inline]
    pub(crate) fn log(&mut self, slot: usize, kind: u32, token: u32) {
        self.log
            .extend_from_slice(&[slot as u32 | kind << 30, token]);
        self.n += 1;
    }
}

impl Drop for LogWriter<'_> {
    fn drop(&mut self) {
        let slots = self.table.slots;
        self.table.log = std::mem::take(&mut self.log);
        if self.n > 0 {
            self.table.log[slots] += self.n;
            self.table.dirty = true;
        }
    }
}

/// The count tables of every slot and the log of changes not yet processed.
#[derive(Debug)]
pub(crate) struct CountTable {
    slots: usize,
    /// Hash positions per slot.
    w: usize,
    /// CPU: the tables, `slots × row_width(w)`. Empty on CUDA.
    host: Vec<u32>,
    /// The log: `[header; slots][n][entries; 2n]`.
    log: Vec<u32>,
    /// Whether the log holds anything (an entry or a reset).
    dirty: bool,
    /// Set by the CUDA launcher once a kernel was queued that processes the log.
    sent: std::sync::atomic::AtomicBool,
    /// CPU processing scratch: per slot, where its entries go; the entries grouped by slot.
    starts: Vec<u32>,
    sorted: Vec<u32>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device: Device,
    #[cfg(feature = "cuda")]
    cuda: Option<super::cuda::DeviceU32>,
}

impl CountTable {
    /// Tables for `slots` slots on `device`, all empty. Allocates once (and on growth).
    pub(crate) fn new(slots: usize, device: &Device) -> Result<Self> {
        if slots >= MAX_SLOTS {
            candle_core::bail!("at most {MAX_SLOTS} requests per batch");
        }
        let w = MIN_W;
        let words = slots.max(1) * row_width(w);
        #[cfg(feature = "cuda")]
        let cuda = match device {
            Device::Cuda(dev) => Some(super::cuda::DeviceU32::zeros(dev, words)?),
            _ => None,
        };
        #[cfg(feature = "cuda")]
        let host = if cuda.is_some() {
            Vec::new()
        } else {
            vec![0; words]
        };
        #[cfg(not(feature = "cuda"))]
        let host = vec![0; words];
        let mut log = vec![0; slots + 1];
        log.reserve(2 * slots);
        Ok(Self {
            slots,
            w,
            host,
            log,
            dirty: false,
            sent: std::sync::atomic::AtomicBool::new(false),
            starts: Vec::new(),
            sorted: Vec::new(),
            device: device.clone(),
            #[cfg(feature = "cuda")]
            cuda,
        })
    }

    /// Hash positions per slot.
    pub(crate) fn w(&self) -> usize {
        self.w
    }

    /// Words per slot row.
    pub(crate) fn width(&self) -> usize {
        row_width(self.w)
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Whether the tables live in host memory (CPU).
    pub(crate) fn on_host(&self) -> bool {
        !self.on_cuda()
    }

    fn on_cuda(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.cuda.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Logs that a new request takes `slot`: its table starts empty.
    pub(crate) fn reset(&mut self, slot: usize) {
        let n = self.log[self.slots];
        self.log[slot] = RESET | n;
        self.dirty = true;
    }

    /// Logs an entry of `kind` ([`ADD`], [`SUB`], [`PROMPT`]) for `token` in `slot`.
    #[inline]
    pub(crate) fn log(&mut self, slot: usize, kind: u32, token: u32) {
        self.log.extend([slot as u32 | kind << 30, token]);
        self.log[self.slots] += 1;
        self.dirty = true;
    }

    /// A writer that logs many entries as [`log`](Self::log) would, with room reserved for
    /// `additional` of them first and the entry count stored once when it drops (a step's
    /// appends: one pass, no per-entry update of the shared count).
    pub(crate) fn writer(&mut self, additional: usize) -> LogWriter<'_> {
        let mut log = std::mem::take(&mut self.log);
        log.reserve(2 * additional);
        LogWriter {
            log,
            n: 0,
            table: self,
        }
    }

    /// Entries logged and not yet processed.
    pub(crate) fn pending(&self) -> usize {
        self.log[self.slots] as usize
    }

    /// The log to process, or `None` when it holds nothing.
    pub(crate) fn payload(&self) -> Option<&[u32]> {
        self.dirty.then_some(&self.log[..])
    }

    /// Records that a kernel that processes the log was queued (CUDA).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn mark_sent(&self) {
        self.sent.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets the log if a kernel was queued that processes it.
    pub(crate) fn finish_step(&mut self) {
        if self.sent.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.clear_log();
        }
    }

    fn clear_log(&mut self) {
        if self.dirty {
            self.log.truncate(self.slots + 1);
            self.log.fill(0);
            self.dirty = false;
        }
    }

    /// The CPU table of `slot`.
    pub(crate) fn host_row(&self, slot: usize) -> &[u32] {
        let width = self.width();
        &self.host[slot * width..(slot + 1) * width]
    }

    /// CPU: the number of distinct tokens in `slot`'s table (as of the last processing).
    pub(crate) fn used(&self, slot: usize) -> Option<usize> {
        (!self.on_cuda()).then(|| self.host[slot * self.width()] as usize)
    }

    /// CPU: applies the log to the tables and empties it (what the sparse kernel does on CUDA).
    /// The entries are first grouped by slot (a counting sort), so that each slot's table is
    /// visited once, while it is in cache.
    pub(crate) fn process_host(&mut self) {
        if self.on_cuda() || !self.dirty {
            return;
        }
        let (slots, w, width) = (self.slots, self.w, self.width());
        let n = self.log[slots] as usize;
        // Per slot: the index of the first entry that counts (after its reset).
        let first = |log: &[u32], s: usize| {
            let h = log[s];
            if h & RESET != 0 {
                h & !RESET
            } else {
                0
            }
        };
        self.starts.clear();
        self.starts.resize(slots + 1, 0);
        for k in 0..n {
            let s = (self.log[slots + 1 + 2 * k] & SLOT_MASK) as usize;
            if k as u32 >= first(&self.log, s) {
                self.starts[s + 1] += 1;
            }
        }
        for s in 0..slots {
            self.starts[s + 1] += self.starts[s];
        }
        self.sorted.clear();
        self.sorted.resize(2 * self.starts[slots] as usize, 0);
        for k in 0..n {
            let (a, token) = (self.log[slots + 1 + 2 * k], self.log[slots + 2 + 2 * k]);
            let s = (a & SLOT_MASK) as usize;
            if (k as u32) < first(&self.log, s) {
                continue;
            }
            let at = &mut self.starts[s];
            self.sorted[2 * *at as usize] = a >> 30;
            self.sorted[2 * *at as usize + 1] = token;
            *at += 1;
        }
        // `starts[s]` now ends slot s's run; slot s's run begins at `starts[s - 1]`.
        let mut begin = 0usize;
        for s in 0..slots {
            let end = self.starts[s] as usize;
            let row = &mut self.host[s * width..(s + 1) * width];
            if self.log[s] & RESET != 0 {
                row[..1 + 2 * w].fill(0);
            }
            for e in self.sorted[2 * begin..2 * end].chunks_exact(2) {
                apply_entry(row, w, e[0], e[1]);
            }
            begin = end;
        }
        self.clear_log();
    }

    /// Processes the log where the tables live (CPU: now; CUDA: one launch, no
    /// synchronisation) and empties it.
    pub(crate) fn drain(&mut self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.cuda {
            if self.dirty {
                super::cuda::count_drain(dev, &self.log, self.slots, self.w)?;
                self.clear_log();
            }
            return Ok(());
        }
        self.process_host();
        Ok(())
    }

    /// Grows the tables so that each holds `distinct` tokens at most half full. Rehashes every
    /// slot where the tables live (CPU: now; CUDA: one launch); the log stays pending.
    pub(crate) fn ensure(&mut self, distinct: usize) -> Result<()> {
        if 2 * distinct <= self.w {
            return Ok(());
        }
        let w = (2 * distinct).next_power_of_two().max(2 * self.w);
        let (old_w, old_width, width) = (self.w, self.width(), row_width(w));
        #[cfg(feature = "cuda")]
        if let Some(old) = &self.cuda {
            let Device::Cuda(dev) = &self.device else {
                candle_core::bail!("count table on CUDA without a CUDA device");
            };
            let new = super::cuda::DeviceU32::zeros(dev, self.slots.max(1) * width)?;
            super::cuda::count_rehash(old, old_w, &new, w, self.slots)?;
            self.cuda = Some(new);
            self.w = w;
            return Ok(());
        }
        let mut host = vec![0u32; self.slots.max(1) * width];
        for s in 0..self.slots {
            let old = &self.host[s * old_width..(s + 1) * old_width];
            let new = &mut host[s * width..(s + 1) * width];
            for (token, count, in_prompt) in entries(old, old_w) {
                if count == 0 && !in_prompt {
                    continue;
                }
                if let Some(k) = claim(new, w, token) {
                    new[value_at(w, k)] = count << 1 | u32::from(in_prompt);
                }
            }
        }
        self.host = host;
        self.w = w;
        Ok(())
    }

    /// `token`'s `(count, in_prompt)` in `slot`, after processing the log. On CUDA this reads
    /// the device (one copy and a synchronisation): for tests and inspection only.
    pub(crate) fn read(&mut self, slot: usize, token: u32) -> Result<(u32, bool)> {
        self.drain()?;
        let w = self.w;
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.cuda {
            let width = self.width();
            let row = dev.read(slot * width, width)?;
            return Ok(lookup(&row, w, token));
        }
        Ok(lookup(self.host_row(slot), w, token))
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&super::cuda::DeviceU32> {
        self.cuda.as_ref()
    }
}

fn lookup(row: &[u32], w: usize, token: u32) -> (u32, bool) {
    let key = token + 1;
    let mut i = home(token, w);
    loop {
        match row[1 + 2 * i] {
            0 => return (0, false),
            k if k == key => {
                let r = row[2 + 2 * i];
                if r == NO_REF || r == 0 {
                    return (0, false);
                }
                let v = row[value_at(w, r as usize - 1)];
                return (v >> 1, v & 1 != 0);
            }
            _ => i = (i + 1) & (w - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The tables follow a naive count through resets, rollbacks, prompts and growth.
    #[test]
    fn follows_a_naive_count() {
        let slots = 5;
        let mut t = CountTable::new(slots, &Device::Cpu).unwrap();
        let mut naive: Vec<HashMap<u32, (u32, bool)>> = vec![HashMap::new(); slots];
        let mut x = 99u64;
        let mut rand = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut bound = vec![0usize; slots];
        for step in 0..3000 {
            let s = rand(slots as u64) as usize;
            match rand(10) {
                0 => {
                    t.reset(s);
                    naive[s].clear();
                    bound[s] = 0;
                }
                1 => {
                    let tok = rand(300) as u32;
                    t.log(s, PROMPT, tok);
                    naive[s].entry(tok).or_default().1 = true;
                    bound[s] += 1;
                }
                2 => {
                    // roll back a token with a positive count
                    if let Some((&tok, _)) = naive[s].iter().find(|(_, v)| v.0 > 0) {
                        t.log(s, SUB, tok);
                        naive[s].get_mut(&tok).unwrap().0 -= 1;
                    }
                }
                _ => {
                    let tok = rand(if step < 1500 { 40 } else { 400 }) as u32;
                    t.log(s, ADD, tok);
                    naive[s].entry(tok).or_default().0 += 1;
                    bound[s] += 1;
                }
            }
            let need = *bound.iter().max().unwrap();
            t.ensure(need).unwrap();
            if rand(7) == 0 {
                t.process_host();
                for (s, b) in bound.iter_mut().enumerate() {
                    *b = t.used(s).unwrap();
                }
            }
            if step % 97 == 0 {
                for (s, naive) in naive.iter().enumerate() {
                    for tok in 0..400 {
                        let want = naive.get(&tok).copied().unwrap_or((0, false));
                        assert_eq!(t.read(s, tok).unwrap(), want, "step {step} slot {s} {tok}");
                    }
                    let listed: usize = entries(t.host_row(s), t.w())
                        .filter(|e| e.1 > 0 || e.2)
                        .count();
                    let live = naive.values().filter(|v| v.0 > 0 || v.1).count();
                    assert_eq!(listed, live);
                }
            }
        }
        assert!(t.w() > MIN_W, "the tables grew");
    }
}
