//! A request's output tokens, shared between the engine (which appends and rolls back) and the
//! processors (which follow them incrementally).
//!
//! [`OutputTokens`] is the engine's handle: [`push`](OutputTokens::push),
//! [`extend`](OutputTokens::extend) and, for speculative decoding that rejects draft tokens,
//! [`truncate`](OutputTokens::truncate). A processor that reads output tokens opens an
//! [`OutputCursor`] on the handle and calls [`sync`](OutputCursor::sync) once per step: it
//! receives exactly the tokens rolled back and the tokens appended since its last sync, so
//! state derived from the tokens (penalty counts, a bad-words tail) is updated from the step's
//! changes, never recomputed from the whole history.
//!
//! No lock guard leaves this module: every method takes the handle's lock for a copy and
//! releases it before returning or calling back, so an engine may append from inside a
//! cursor's callback without deadlock. Each change also leaves a record of itself (the token,
//! when it appended exactly one) under a sequence lock on the list's version, so that a
//! pipeline following a list that changed by one push since its last sync reads the token
//! without taking the lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::spin_lock::{SpinGuard, SpinLock};

use smallvec::SmallVec;

/// The list and a version number bumped (under the lock) by every change, so that a cursor
/// with nothing new to read checks one atomic word instead of taking the lock.
///
/// Laid out so that the version, the change record, the lock, the tokens and the board slot
/// that mirrors the version — all that a step's push and sync touch — come first, in 64 bytes (at most two cache
/// lines, wherever the allocator puts the list; a 64-byte-aligned allocation would make it one,
/// but costs more for every request that joins); the cursors' rollback marks and further
/// watchers ([`Cold`]) follow in the same allocation, read only after a rollback or when
/// cursors come and go.
#[derive(Debug, Default)]
#[repr(C)]
struct Inner {
    /// Bumped by 2 per change, under the lock: odd while a change's record is being written
    /// (a sequence lock around `last`), even otherwise.
    version: AtomicU64,
    /// What the change that made the current version did: [`one_push`] of the token when it
    /// appended exactly one token, [`OTHER`] otherwise. Read without the lock by
    /// [`OutputCursor::sync_one`], checked against `version` before and after.
    last: AtomicU64,
    shared: SpinLock<Shared>,
}

/// A change record: anything but a one-token append.
const OTHER: u64 = 0;

/// A change record: `token` appended alone.
fn one_push(token: u32) -> u64 {
    1 << 32 | u64::from(token)
}

// The hot state fits 64 bytes (checked at compile time): `Shared`'s fields before `cold`,
// after the version and the lock flag.
const _: () = assert!(
    std::mem::offset_of!(Inner, shared)
        + SpinLock::<Shared>::VALUE_OFFSET
        + std::mem::offset_of!(Shared, cold)
        <= 64
);

impl Inner {
    /// Records a change (`op`: [`one_push`] or [`OTHER`]); call with the lock held (writers
    /// are serialised by it): the version turns odd, the record is written, the version turns
    /// even again (a sequence lock for lock-free readers of `last`), and the new version goes
    /// to every board slot that watches the list.
    fn bump(&self, s: &Shared, op: u64) {
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.last.store(op, Ordering::Relaxed);
        let v = v.wrapping_add(2);
        self.version.store(v, Ordering::Release);
        if let Some(board) = &s.board {
            board.versions[s.board_slot as usize].store(v, Ordering::Release);
        }
        if s.more_watchers {
            for (board, slot) in &s.cold.watchers {
                board.versions[*slot as usize].store(v, Ordering::Release);
            }
        }
    }
}

/// One contiguous array of output-list versions, a slot per watching cursor: a reader that
/// follows many lists (a pipeline, one list per row) finds the changed ones in one pass over
/// this array instead of one cache line per list. Writers store a list's new version into its
/// slots under the list's lock.
#[derive(Debug)]
pub(crate) struct VersionBoard {
    versions: Box<[AtomicU64]>,
    free: Mutex<Vec<u32>>,
}

impl VersionBoard {
    /// A board of `slots` slots. Allocates once.
    pub(crate) fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            versions: (0..slots).map(|_| AtomicU64::new(u64::MAX)).collect(),
            free: Mutex::new((0..slots as u32).rev().collect()),
        })
    }

    fn free(&self) -> MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Default)]
#[repr(C)]
struct Shared {
    tokens: Vec<u32>,
    /// The first board that mirrors this list's version, and its slot there.
    board: Option<Arc<VersionBoard>>,
    board_slot: u32,
    /// Whether `cold` holds further watchers.
    more_watchers: bool,
    /// Whether some cursor has a rollback mark (a truncation it has not synced yet).
    marked: bool,
    /// Last: outside the first cache line.
    cold: Cold,
}

/// The parts of a list that a step without rollback never reads.
#[derive(Debug, Default)]
struct Cold {
    /// Per cursor: the lowest length the list was truncated to since the cursor's last sync
    /// (`usize::MAX` when not truncated), or `None` for a free slot. Inline for the usual one
    /// or two cursors (no allocation of its own).
    cursors: SmallVec<[Option<usize>; 2]>,
    /// The board slots, beyond the first, that mirror this list's version.
    watchers: Vec<(Arc<VersionBoard>, u32)>,
}

impl Shared {
    /// Cursor `slot`'s rollback mark, cleared (`usize::MAX` when there is none).
    fn take_mark(&mut self, slot: usize) -> usize {
        if !self.marked {
            return usize::MAX;
        }
        let cold = &mut self.cold;
        let low = cold
            .cursors
            .get_mut(slot)
            .and_then(|c| c.as_mut())
            .map_or(usize::MAX, |c| std::mem::replace(c, usize::MAX));
        self.marked = cold.cursors.iter().flatten().any(|&l| l != usize::MAX);
        low
    }
}

/// A request's generated tokens: a cheap-to-clone handle (one reference count) that the engine
/// appends to and rolls back, and that processors follow through [`OutputCursor`]s.
///
/// This is vLLM's "reference to the running output list", made safe to roll back.
///
/// # Example
///
/// ```
/// use logits_processors::{OutputChange, OutputTokens};
///
/// let out = OutputTokens::new();
/// let mut cursor = out.cursor();
/// out.extend(&[5, 6, 7]);          // a speculative step proposes three tokens
/// out.truncate(1);                 // the verifier keeps only the first
/// out.push(9);
/// let mut changes = Vec::new();
/// cursor.sync(|c| changes.push(c));
/// assert_eq!(changes, [OutputChange::Appended(5), OutputChange::Appended(9)]);
/// assert_eq!(cursor.tokens(), [5, 9]);
///
/// out.truncate(0);
/// changes.clear();
/// cursor.sync(|c| changes.push(c));
/// assert_eq!(changes, [OutputChange::Removed(9), OutputChange::Removed(5)]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct OutputTokens(Arc<Inner>);

impl OutputTokens {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> SpinGuard<'_, Shared> {
        lock(&self.0.shared)
    }

    /// Appends a generated token. O(1) amortised; takes the list's spin lock.
    pub fn push(&self, token: u32) {
        let mut s = self.lock();
        s.tokens.push(token);
        self.0.bump(&s, one_push(token));
    }

    /// Appends several generated tokens. O(`tokens.len()`) amortised, under one take of the
    /// list's spin lock; nothing for an empty slice.
    pub fn extend(&self, tokens: &[u32]) {
        if tokens.is_empty() {
            return;
        }
        let mut s = self.lock();
        s.tokens.extend_from_slice(tokens);
        let op = match tokens {
            &[t] => one_push(t),
            _ => OTHER,
        };
        self.0.bump(&s, op);
    }

    /// Keeps the first `len` tokens and drops the rest (speculative decoding rejecting draft
    /// tokens). Does nothing if `len` is not below the current length. Cursors report the
    /// dropped tokens as [`OutputChange::Removed`] at their next sync.
    pub fn truncate(&self, len: usize) {
        let mut s = self.lock();
        if len >= s.tokens.len() {
            return;
        }
        s.tokens.truncate(len);
        let sh = &mut *s;
        for low in sh.cold.cursors.iter_mut().flatten() {
            *low = (*low).min(len);
            sh.marked = true;
        }
        self.0.bump(&s, OTHER);
    }

    /// Number of tokens generated so far. O(1); takes the list's spin lock.
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether no token has been generated yet. O(1); takes the list's spin lock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times `token` occurs (O(length), under the lock).
    pub(crate) fn occurrences(&self, token: u32) -> usize {
        self.lock().tokens.iter().filter(|&&t| t == token).count()
    }

    /// The last token, if any. O(1); takes the list's spin lock.
    pub fn last(&self) -> Option<u32> {
        self.lock().tokens.last().copied()
    }

    /// A copy of the tokens generated so far. Allocates; see [`copy_into`](Self::copy_into).
    pub fn to_vec(&self) -> Vec<u32> {
        self.lock().tokens.clone()
    }

    /// Replaces the contents of `out` with the tokens generated so far (no allocation once
    /// `out` is large enough).
    pub fn copy_into(&self, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.lock().tokens);
    }

    /// A cursor that has seen nothing yet: its first [`sync`](OutputCursor::sync) reports every
    /// token present as appended.
    ///
    /// Cost: one take of the list's spin lock and a reference-count increment; may allocate only
    /// when the list already has two open cursors (room for two is inline). The cursor's copy of
    /// the tokens grows as it syncs.
    pub fn cursor(&self) -> OutputCursor {
        let mut s = self.lock();
        let cursors = &mut s.cold.cursors;
        let slot = match cursors.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                cursors.push(None);
                cursors.len() - 1
            }
        };
        cursors[slot] = Some(usize::MAX);
        OutputCursor {
            shared: self.0.clone(),
            seen: None,
            watch: None,
            slot,
            tokens: Vec::new(),
            scratch: Vec::new(),
            tail_hint: 0,
        }
    }

    /// A cursor as [`cursor`](Self::cursor) whose list mirrors its version into a slot of
    /// `board` (none when the board is full: the cursor then works without it).
    pub(crate) fn watched_cursor(&self, board: &Arc<VersionBoard>) -> OutputCursor {
        let mut c = self.cursor();
        let Some(slot) = board.free().pop() else {
            return c;
        };
        let mut s = self.lock();
        board.versions[slot as usize]
            .store(self.0.version.load(Ordering::Relaxed), Ordering::Release);
        if s.board.is_none() {
            s.board = Some(board.clone());
            s.board_slot = slot;
        } else {
            s.cold.watchers.push((board.clone(), slot));
            s.more_watchers = true;
        }
        drop(s);
        c.watch = Some((board.clone(), slot));
        c
    }

    /// Whether `self` and `other` are handles to the same list.
    pub fn same_list(&self, other: &OutputTokens) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<Vec<u32>> for OutputTokens {
    fn from(tokens: Vec<u32>) -> Self {
        Self(Arc::new(Inner {
            version: AtomicU64::new(0),
            last: AtomicU64::new(OTHER),
            shared: SpinLock::new(Shared {
                tokens,
                ..Shared::default()
            }),
        }))
    }
}

fn lock(m: &SpinLock<Shared>) -> SpinGuard<'_, Shared> {
    m.lock()
}

/// Asks the CPU to load the cache line at `addr` for writing soon: a hint that never faults,
/// whatever `addr` is (nothing off x86-64).
#[inline]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program observes and never faults, even for an
    // invalid address; SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// One change to a request's output tokens, as an [`OutputCursor`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputChange {
    /// The token was rolled back (reported last-first).
    Removed(u32),
    /// The token was appended (reported in order).
    Appended(u32),
}

/// A reader's position in an [`OutputTokens`] list, with its own copy of the tokens it has
/// seen.
///
/// Each [`sync`](Self::sync) reports what changed since the previous one: the tokens rolled
/// back by [`OutputTokens::truncate`] (from the cursor's copy) and the tokens appended. Its
/// cost is O(changes), whatever the length of the list.
#[derive(Debug)]
pub struct OutputCursor {
    shared: Arc<Inner>,
    /// The list's version at the last sync (`None` before the first).
    seen: Option<u64>,
    /// The board slot that mirrors the list's version, if any.
    watch: Option<(Arc<VersionBoard>, u32)>,
    slot: usize,
    tokens: Vec<u32>,
    scratch: Vec<u32>,
    /// The address just past the list's tokens at the last sync: where the next push writes,
    /// prefetched by [`warm`](Self::warm) (a hint only, never dereferenced).
    tail_hint: usize,
}

impl OutputCursor {
    /// Brings the cursor up to date, calling `on_change` for every token rolled back
    /// (last-first) and then every token appended since the last sync. The list's lock is held
    /// only while copying the new tokens, never while `on_change` runs.
    ///
    /// Returns the number of changes reported. When the list has not changed since the last
    /// sync, costs one atomic load (no lock).
    pub fn sync(&mut self, on_change: impl FnMut(OutputChange)) -> usize {
        if self.seen == Some(self.shared.version.load(Ordering::Acquire)) {
            return 0;
        }
        self.sync_and_push(on_change)
    }

    /// Syncs into `out` under one lock, after appending `push` to the list when given (as
    /// [`OutputTokens::push`] on any handle of it would): the rollbacks (last-first), then the
    /// appends, `push` last. For the pipeline, whose callback only records: no scratch copy.
    /// Returns the number of changes recorded.
    pub(crate) fn sync_into(&mut self, push: Option<u32>, out: &mut Vec<OutputChange>) -> usize {
        let start = out.len();
        let shared = &self.shared;
        let mut s = lock(&shared.shared);
        let low = s.take_mark(self.slot);
        let kept = self.tokens.len().min(low).min(s.tokens.len());
        while self.tokens.len() > kept {
            let t = self.tokens.pop().expect("len > kept");
            out.push(OutputChange::Removed(t));
        }
        if let Some(t) = push {
            s.tokens.push(t);
            shared.bump(&s, one_push(t));
        }
        // Usually one token: plain pushes (no call to copy a few bytes).
        for &t in &s.tokens[kept..] {
            self.tokens.push(t);
            out.push(OutputChange::Appended(t));
        }
        // Stable while the lock is held: writers bump it under the lock.
        self.seen = Some(shared.version.load(Ordering::Relaxed));
        self.tail_hint = s.tokens.as_ptr_range().end as usize;
        out.len() - start
    }

    /// The step's usual case, for the pipeline: pushes `token` onto the list and onto the
    /// cursor's copy when the list has not changed since the cursor's last sync (one lock, no
    /// other bookkeeping), and returns true; returns false and changes nothing otherwise (the
    /// caller then takes [`sync_into`](Self::sync_into)).
    #[inline]
    pub(crate) fn push_synced(&mut self, token: u32) -> bool {
        let shared = &*self.shared;
        let mut s = lock(&shared.shared);
        // Unchanged since the last sync: no rollback either (a truncation bumps the version),
        // so this cursor has no rollback mark.
        if self.seen != Some(shared.version.load(Ordering::Relaxed)) {
            return false;
        }
        s.tokens.push(token);
        shared.bump(&s, one_push(token));
        self.seen = Some(shared.version.load(Ordering::Relaxed));
        self.tail_hint = s.tokens.as_ptr_range().end as usize;
        drop(s);
        self.tokens.push(token);
        true
    }

    /// The step's usual case, for the pipeline: when exactly one change was made to the list
    /// since the cursor's last sync and it appended one token, copies it and returns it,
    /// without taking the list's lock (the change's record is read under the version's
    /// sequence lock: two loads of the version around one of the record); returns `None` and
    /// changes nothing otherwise (the caller then takes [`sync_into`](Self::sync_into)).
    #[inline]
    pub(crate) fn sync_one(&mut self) -> Option<u32> {
        let shared = &*self.shared;
        let seen = self.seen?;
        let v = shared.version.load(Ordering::Acquire);
        // One change since the sync (versions move by 2 a change; odd: one being written).
        if v != seen.wrapping_add(2) {
            return None;
        }
        let op = shared.last.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        if shared.version.load(Ordering::Relaxed) != v || op >> 32 != 1 {
            return None;
        }
        // That change appended one token (so no rollback mark for this cursor either).
        let t = op as u32;
        self.seen = Some(v);
        self.tokens.push(t);
        Some(t)
    }

    fn sync_and_push(&mut self, mut on_change: impl FnMut(OutputChange)) -> usize {
        self.scratch.clear();
        let kept = {
            let mut s = lock(&self.shared.shared);
            let low = s.take_mark(self.slot);
            let kept = self.tokens.len().min(low).min(s.tokens.len());
            self.scratch.extend_from_slice(&s.tokens[kept..]);
            // Stable while the lock is held: writers bump it under the lock.
            self.seen = Some(self.shared.version.load(Ordering::Relaxed));
            self.tail_hint = s.tokens.as_ptr_range().end as usize;
            kept
        };
        let removed = self.tokens.len() - kept;
        while self.tokens.len() > kept {
            let t = self.tokens.pop().expect("len > kept");
            on_change(OutputChange::Removed(t));
        }
        for &t in &self.scratch {
            self.tokens.push(t);
            on_change(OutputChange::Appended(t));
        }
        removed + self.scratch.len()
    }

    /// Whether the list changed since the last sync (one atomic load).
    pub(crate) fn stale(&self) -> bool {
        self.seen != Some(self.shared.version.load(Ordering::Acquire))
    }

    /// Asks the CPU for the lines a sync will touch (the list's first line: lock, version,
    /// record, tokens; the cursor's copy's next free slot; with `push`, the list's next free
    /// slot too) without waiting for them: a caller that syncs many cursors calls it a few rows
    /// ahead, so that the misses of rows scattered over the heap overlap. Hints only; reads
    /// nothing.
    #[inline]
    pub(crate) fn prefetch(&self, push: bool) {
        let list = Arc::as_ptr(&self.shared) as usize;
        prefetch(list);
        if push {
            // The hot fields' end, on the next line when the allocation puts them across two.
            prefetch(list + 56);
            prefetch(self.tail_hint);
        }
        prefetch(self.tokens.as_ptr_range().end as usize);
    }

    /// Whether the list certainly did not change since the last sync, read from the cursor's
    /// version board (false without one, or before the first sync).
    pub(crate) fn unchanged(&self) -> bool {
        match &self.watch {
            Some((board, slot)) => {
                self.seen.is_some()
                    && self.seen == Some(board.versions[*slot as usize].load(Ordering::Acquire))
            }
            None => false,
        }
    }

    /// The tokens as of the last [`sync`](Self::sync).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many tokens the cursor has seen (as of the last sync).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the cursor has seen no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl Drop for OutputCursor {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.shared);
        if let Some(c) = s.cold.cursors.get_mut(self.slot) {
            *c = None;
        }
        if let Some((board, slot)) = self.watch.take() {
            let mine = |b: &Arc<VersionBoard>, i: u32| Arc::ptr_eq(b, &board) && i == slot;
            if s.board.as_ref().is_some_and(|b| mine(b, s.board_slot)) {
                // The first watcher leaves: the next one (if any) takes its place.
                let next = s.cold.watchers.pop();
                s.board = next.as_ref().map(|(b, _)| b.clone());
                s.board_slot = next.map_or(0, |(_, i)| i);
            } else {
                s.cold.watchers.retain(|(b, i)| !mine(b, *i));
            }
            s.more_watchers = !s.cold.watchers.is_empty();
            drop(s);
            board.free().push(slot);
        }
    }
}

/// One step's output changes, read once (one atomic check per row, a lock only for rows that
/// changed) and shared by the processors that follow output tokens. Holds an entry for every
/// row whose output changed and every row the step's update touched; other rows are unchanged.
#[derive(Debug, Default)]
pub(crate) struct StepOutputs {
    changes: Vec<OutputChange>,
    /// The rows with an entry, in the order pushed.
    rows: Vec<RowEntry>,
    /// Per row: its index in `rows`, or `NONE`.
    at: Vec<u32>,
    /// Whether some row's changes include a rollback.
    rolled_back: bool,
}

/// Positions and lengths as `u32` (16 bytes an entry): a batch's rows and a step's changes
/// stay far below 2³², and an output list longer than that is not a generation.
#[derive(Debug, Clone, Copy)]
struct RowEntry {
    row: u32,
    start: u32,
    end: u32,
    /// The row's output length after the changes (0 for a row without a cursor; saturated).
    len: u32,
}

const NONE: u32 = u32::MAX;

impl StepOutputs {
    /// Starts a new step for a batch of at most `capacity` rows. O(entries of the last step).
    pub(crate) fn clear(&mut self, capacity: usize) {
        for e in &self.rows {
            self.at[e.row as usize] = NONE;
        }
        if self.at.len() < capacity {
            self.at.resize(capacity, NONE);
        }
        self.changes.clear();
        self.rows.clear();
        self.rolled_back = false;
    }

    /// Whether some row's output was rolled back this step (if not, every output only grew).
    pub(crate) fn rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// The number of changes recorded this step, over all rows.
    pub(crate) fn change_count(&self) -> usize {
        self.changes.len()
    }

    /// Whether `row` has an entry this step.
    pub(crate) fn has(&self, row: usize) -> bool {
        self.at.get(row).is_some_and(|&i| i != NONE)
    }

    /// Reads `row`'s cursor's changes since the last sync (none without a cursor), after
    /// appending `token` to the row's list through the cursor (one lock for both) when given,
    /// and gives the row an entry if there were any changes, or always when `always`. A row is
    /// pushed at most once a step.
    pub(crate) fn push_row(
        &mut self,
        row: usize,
        cursor: Option<&mut OutputCursor>,
        token: Option<u32>,
        always: bool,
    ) {
        let start = self.changes.len();
        let len = match cursor {
            Some(c) => {
                if token.is_some() || c.stale() {
                    c.sync_into(token, &mut self.changes);
                    let new = &self.changes[start..];
                    self.rolled_back |= new.iter().any(|c| matches!(c, OutputChange::Removed(_)));
                }
                c.len()
            }
            None => 0,
        };
        let end = self.changes.len();
        if end > start || always {
            self.at[row] = self.rows.len() as u32;
            self.rows.push(RowEntry {
                row: row as u32,
                start: start as u32,
                end: end as u32,
                len: len.min(u32::MAX as usize) as u32,
            });
        }
    }

    /// Records that `row`, which has no entry yet, had exactly `token` appended this step and
    /// that its output is now `len` tokens long.
    #[inline]
    pub(crate) fn push_appended(&mut self, row: usize, token: u32, len: usize) {
        let start = self.changes.len() as u32;
        self.changes.push(OutputChange::Appended(token));
        self.at[row] = self.rows.len() as u32;
        self.rows.push(RowEntry {
            row: row as u32,
            start,
            end: start + 1,
            len: len.min(u32::MAX as usize) as u32,
        });
    }

    /// The rows with an entry, in the order pushed, each with its output length after the
    /// changes and the changes (one pass over the entries, no lookup per row).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (usize, usize, &[OutputChange])> + '_ {
        self.rows.iter().map(|e| {
            let changes = &self.changes[e.start as usize..e.end as usize];
            (e.row as usize, e.len as usize, changes)
        })
    }

    fn entry(&self, row: usize) -> Option<&RowEntry> {
        match self.at.get(row) {
            Some(&i) if i != NONE => Some(&self.rows[i as usize]),
            _ => None,
        }
    }

    /// Row `row`'s changes this step (rollbacks first, last-first; then appends in order).
    pub(crate) fn row(&self, row: usize) -> &[OutputChange] {
        self.entry(row)
            .map_or(&[][..], |e| &self.changes[e.start as usize..e.end as usize])
    }

    /// Row `row`'s output length after this step's changes; `None` for a row without an entry
    /// (its output did not change).
    pub(crate) fn len(&self, row: usize) -> Option<usize> {
        self.entry(row).map(|e| e.len as usize)
    }
}

/// Each row's output as a pipeline follows it (its cursor's copy, as of this step's changes):
/// for processors that read the output's tail without keeping their own copy.
pub(crate) trait RowTokens {
    /// The output of the request at `row` (empty for a row without one).
    fn tokens(&self, row: usize) -> &[u32];
}

/// Calls `f` for row `row`'s output changes of this step: from the pipeline's `fed` changes, or
/// else from the processor's own `cursor`. Returns how many there were.
pub(crate) fn for_changes(
    fed: Option<&StepOutputs>,
    row: usize,
    cursor: Option<&mut OutputCursor>,
    mut f: impl FnMut(OutputChange),
) -> usize {
    match (fed, cursor) {
        (Some(o), _) => {
            let changes = o.row(row);
            changes.iter().for_each(|&c| f(c));
            changes.len()
        }
        (None, Some(c)) => c.sync(f),
        (None, None) => 0,
    }
}

#[cfg(test)]
mod board_tests {
    use super::*;

    #[test]
    fn the_board_mirrors_every_change_and_recycles_slots() {
        let board = VersionBoard::new(1);
        let out = OutputTokens::from(vec![1, 2]);
        let mut c = out.watched_cursor(&board);
        assert!(!c.unchanged(), "never synced");
        assert_eq!(c.sync(|_| {}), 2);
        assert!(c.unchanged());
        for change in [0, 1, 2] {
            match change {
                0 => out.push(3),
                1 => out.extend(&[4, 5]),
                _ => out.truncate(1),
            }
            assert!(!c.unchanged(), "change {change} not seen on the board");
            c.sync(|_| {});
            assert!(c.unchanged());
        }
        out.truncate(5); // no change
        assert!(c.unchanged());
        // Full board: a cursor without a slot still works (never "unchanged").
        let mut d = out.watched_cursor(&board);
        assert_eq!(d.sync(|_| {}), 1);
        assert!(!d.unchanged());
        // Dropping a cursor frees its slot and stops the list writing to it.
        drop(c);
        let other = OutputTokens::new();
        let mut e = other.watched_cursor(&board);
        e.sync(|_| {});
        assert!(e.unchanged());
        out.push(9); // `out` no longer watches the slot now held by `other`
        assert!(e.unchanged());
        other.push(1);
        assert!(!e.unchanged());
    }

    #[test]
    fn a_list_watched_by_two_boards_keeps_the_second_when_the_first_leaves() {
        let (b1, b2) = (VersionBoard::new(2), VersionBoard::new(2));
        let out = OutputTokens::from(vec![1]);
        let mut c1 = out.watched_cursor(&b1);
        let mut c2 = out.watched_cursor(&b2);
        c1.sync(|_| {});
        c2.sync(|_| {});
        out.push(2);
        assert!(!c1.unchanged() && !c2.unchanged());
        drop(c1);
        c2.sync(|_| {});
        assert!(c2.unchanged());
        out.push(3);
        assert!(!c2.unchanged(), "the second board stopped following");
        let mut changes = Vec::new();
        c2.sync(|c| changes.push(c));
        assert_eq!(changes, [OutputChange::Appended(3)]);
    }

    #[test]
    fn a_lock_free_sync_never_reads_a_torn_change() {
        // The writer keeps `tokens[i] == i` (it pushes the length, extends with the next ids,
        // truncates anywhere), so every consistent view has that property too; the reader
        // follows with the lock-free one-token path when it can, the locked sync otherwise.
        use std::sync::atomic::AtomicBool;
        let out = OutputTokens::new();
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (out, done) = (out.clone(), done.clone());
            std::thread::spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64;
                for _ in 0..100_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = out.len() as u32;
                    match x % 16 {
                        0 => out.truncate((x >> 8) as usize % (len as usize + 1)),
                        1 => out.extend(&[len, len + 1]),
                        2 => out.extend(&[len]),
                        _ => out.push(len),
                    }
                    // Pauses of random length, so that the reader often finds exactly one
                    // change (its lock-free path) and sometimes races with one.
                    for _ in 0..(x >> 20) % 512 {
                        std::hint::spin_loop();
                    }
                }
                done.store(true, Ordering::Release);
            })
        };
        let mut c = out.cursor();
        let (mut fast, mut slow) = (0u64, 0u64);
        let check = |c: &OutputCursor| {
            let bad = c.tokens().iter().enumerate().find(|&(i, &t)| t != i as u32);
            assert!(bad.is_none(), "torn view at {bad:?}");
        };
        while !done.load(Ordering::Acquire) {
            if c.sync_one().is_some() {
                fast += 1;
            } else {
                c.sync(|_| {});
                slow += 1;
            }
            check(&c);
        }
        writer.join().unwrap();
        c.sync(|_| {});
        check(&c);
        assert_eq!(c.tokens(), out.to_vec());
        assert!(fast + slow > 0);
    }

    #[test]
    fn the_fast_paths_step_aside_for_any_other_change() {
        let out = OutputTokens::from(vec![1, 2]);
        let mut c = out.cursor();
        let mut other = out.cursor();
        assert!(!c.push_synced(9), "never synced");
        assert_eq!(c.sync_one(), None, "never synced");
        c.sync(|_| {});
        assert!(c.push_synced(3));
        assert_eq!((c.tokens(), out.to_vec()), (&[1, 2, 3][..], vec![1, 2, 3]));
        out.push(4);
        assert!(!c.push_synced(5), "the list changed since the sync");
        assert_eq!(c.sync_one(), Some(4));
        out.extend(&[5, 6]);
        assert_eq!(c.sync_one(), None, "two tokens");
        c.sync(|_| {});
        out.truncate(3);
        out.push(7);
        assert_eq!(c.sync_one(), None, "a rollback, then a push");
        let mut changes = Vec::new();
        c.sync(|x| changes.push(x));
        use OutputChange::*;
        assert_eq!(changes, [Removed(6), Removed(5), Removed(4), Appended(7)]);
        // The other cursor never synced: it sees the list as it is now.
        let mut all = Vec::new();
        other.sync(|x| all.push(x));
        assert_eq!(all, [Appended(1), Appended(2), Appended(3), Appended(7)]);
    }
}
