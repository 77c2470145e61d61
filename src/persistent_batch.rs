//! [`PersistentBatch`]: maps an engine's request ids to rows and writes each step's
//! [`BatchUpdate`] itself.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use crate::batch::{AddedRequest, BatchUpdate, MoveDirectionality, MovedRequest};
use crate::error::{BatchError, Result};
use crate::params::RequestParams;

/// Where the current step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Removals and additions are being recorded; rows may have holes.
    Membership,
    /// Holes are filled (rows `0..len` hold requests); swaps are being recorded.
    Reorder,
    /// The step's update was lent by [`PersistentBatch::step`]; the next call starts a step.
    Lent,
}

/// The rows of a persistent batch, keyed by the engine's request ids, and the step's
/// [`BatchUpdate`], written as the engine changes the batch.
///
/// An engine that keeps its own row bookkeeping must report every move and swap to the
/// processors; one it forgets leaves a request's state (its forced tokens, its penalties) on a
/// row that now holds another request, silently. `PersistentBatch` makes the bookkeeping and
/// the report one thing: the engine says *which requests* leave, join or reorder, and the batch
/// chooses the rows, vLLM v1's way, and records every change:
///
/// 1. [`remove`](Self::remove) frees a request's row;
/// 2. [`add`](Self::add) puts a request on the lowest freed row, or appends it after the last
///    row;
/// 3. at the first [`swap`](Self::swap)/[`sort_by`](Self::sort_by) or at [`step`](Self::step),
///    the holes left below the new batch size are filled by one-way moves of the requests on
///    the highest rows ("condense");
/// 4. [`swap`](Self::swap), [`swap_rows`](Self::swap_rows), [`sort_by`](Self::sort_by) and
///    [`sort_by_key`](Self::sort_by_key) reorder the rows with swaps;
/// 5. [`step`](Self::step) lends the update for
///    [`update_state`](crate::LogitsProcessor::update_state) (`None` when nothing changed);
///    [`step_with`](Self::step_with) hands it over and undoes the step if the processors
///    refuse it. Rows `0..len()` then hold the requests, and [`row_of`](Self::row_of) /
///    [`id_at`](Self::id_at) say which is where, for building the model's input.
///
/// Within a step, removals and additions come before reordering (a `remove` or `add` after a
/// swap is [`BatchError::AfterReorder`]): that is the order a `BatchUpdate` reports. A request
/// removed in the step that added it is simply not reported.
///
/// Every call either succeeds or returns an [`Error::Batch`](crate::Error::Batch) and changes
/// nothing. The updates it produces always satisfy the rules of [`crate::ledger`].
///
/// Validate a request's parameters with the processors'
/// [`validate_params`](crate::LogitsProcessor::validate_params) *before* adding it, or feed the
/// update with [`step_with`](Self::step_with): after a plain `step`, processors that refuse the
/// update leave the batch a step ahead of them.
///
/// # Cost
///
/// Each call costs O(1) (hashing the id) except as noted: `remove` of a request added in the
/// same step O(additions in the step), the condense O(holes filled), `sort_by` O(n log n).
/// No heap allocation once warm: the lists are reserved for `capacity` rows at construction and
/// reused from step to step. (The id's `clone`, the caller's `Arc<RequestParams>` and the fresh
/// [`OutputTokens`](crate::OutputTokens) of each added request are the caller's; use `Copy` ids
/// such as `u64`.)
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{DType, Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(4).vocab_size(8).build()?;
/// let mut processors = Pipeline::builder(&config).with(ForceToken::new(&config)?).build()?;
/// let mut batch = PersistentBatch::<u64>::new(config.max_batch_size());
/// let forced = |t: u32| Arc::new(RequestParams::new().with_allowed_token_ids([t]));
///
/// // step 1: requests 10, 11, 12 arrive and take rows 0, 1, 2
/// for id in [10, 11, 12] {
///     batch.add(id, forced(id as u32 - 10))?;
/// }
/// processors.update_state(batch.step())?;
///
/// // step 2: 10 finishes, 13 takes its row; 11 finishes and 12 moves down into the hole
/// batch.remove(&10)?;
/// batch.remove(&11)?;
/// assert_eq!(batch.add(13, forced(3))?.row, 0);
/// let update = batch.step().expect("the batch changed");
/// assert_eq!(update.moved[0], MovedRequest {
///     from: 2,
///     to: 1,
///     direction: MoveDirectionality::Unidirectional,
/// });
/// processors.update_state(Some(update))?;
/// assert_eq!((batch.id_at(0), batch.id_at(1)), (Some(&13), Some(&12)));
///
/// // step 3: the engine wants its requests in id order: one swap, reported
/// batch.sort_by_key(|id| *id)?;
/// processors.update_state(batch.step())?;
/// assert_eq!(batch.row_of(&12), Some(0));
///
/// let logits = Tensor::zeros((batch.len(), 8), DType::F32, &Device::Cpu)?;
/// processors.apply(&logits)?;
/// let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
/// assert_eq!(argmax, [2, 3]); // request 12 forces token 2, request 13 token 3
///
/// // step 4: nothing changed
/// assert!(batch.step().is_none());
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct PersistentBatch<K> {
    capacity: usize,
    /// Row → request, for rows `0..capacity`.
    rows: Vec<Option<K>>,
    /// Request → row.
    index: HashMap<K, usize>,
    /// Requests in the batch.
    len: usize,
    /// During the membership phase, rows `top..` are empty.
    top: usize,
    /// Empty rows below `top` (membership phase), lowest first.
    holes: BinaryHeap<Reverse<usize>>,
    /// The requests of the step's start that left in this step, with their rows (for
    /// `removed`, and for `undo_step`).
    left: Vec<(usize, K)>,
    /// The number of requests at the step's start.
    start_len: usize,
    /// Rows holding a request added in this step (membership phase only).
    fresh: Vec<bool>,
    update: BatchUpdate,
    phase: Phase,
    /// Scratch for `sort_by`: target order, current row per original row, original row per
    /// current row.
    order: Vec<usize>,
    pos: Vec<usize>,
    at: Vec<usize>,
}

impl<K: Eq + Hash + Clone + Debug> PersistentBatch<K> {
    /// An empty batch of at most `capacity` requests (the processors' `max_batch_size`).
    ///
    /// Cost: allocates every list it will need, for `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        let mut update = BatchUpdate::new(0);
        update.removed.reserve(capacity);
        update.added.reserve(capacity);
        update.moved.reserve(capacity);
        Self {
            capacity,
            rows: vec![None; capacity],
            // Twice the capacity: with at most `capacity` ids, hashbrown then always rehashes its
            // tombstones in place instead of growing (no allocation once warm).
            index: HashMap::with_capacity(2 * capacity),
            len: 0,
            top: 0,
            holes: BinaryHeap::with_capacity(capacity),
            left: Vec::with_capacity(capacity),
            start_len: 0,
            fresh: vec![false; capacity],
            update,
            phase: Phase::Membership,
            order: Vec::with_capacity(capacity),
            pos: Vec::with_capacity(capacity),
            at: Vec::with_capacity(capacity),
        }
    }

    /// The most requests the batch holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of requests in the batch (after [`step`](Self::step): the batch size, rows
    /// `0..len()`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no request.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every row is taken (an [`add`](Self::add) would fail).
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Whether `id` is in the batch.
    pub fn contains(&self, id: &K) -> bool {
        self.index.contains_key(id)
    }

    /// The row that holds `id`, as of the changes recorded so far (rows are contiguous after
    /// [`step`](Self::step), or after a swap).
    pub fn row_of(&self, id: &K) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The request on `row`, as of the changes recorded so far.
    pub fn id_at(&self, row: usize) -> Option<&K> {
        self.rows.get(row)?.as_ref()
    }

    /// The requests with their rows, in row order. After [`step`](Self::step) these are rows
    /// `0..len()`. Cost: O(rows in use).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &K)> + '_ {
        let end = match self.phase {
            Phase::Membership => self.top,
            Phase::Reorder | Phase::Lent => self.len,
        };
        self.rows[..end]
            .iter()
            .enumerate()
            .filter_map(|(row, id)| id.as_ref().map(|id| (row, id)))
    }

    /// Removes request `id`, freeing its row for the step's additions (or for the condense),
    /// and returns that row.
    ///
    /// # Errors
    ///
    /// [`BatchError::UnknownRequest`] if `id` is not in the batch;
    /// [`BatchError::AfterReorder`] after a swap in the same step.
    pub fn remove(&mut self, id: &K) -> Result<usize> {
        self.begin_step();
        if self.phase == Phase::Reorder {
            return Err(BatchError::AfterReorder { op: "remove" }.into());
        }
        let Some((id, row)) = self.index.remove_entry(id) else {
            return Err(BatchError::UnknownRequest {
                id: format!("{id:?}"),
            }
            .into());
        };
        self.rows[row] = None;
        self.len -= 1;
        if self.fresh[row] {
            // Added in this step: it is no longer reported as added.
            self.fresh[row] = false;
            if let Some(i) = self.update.added.iter().position(|a| a.row == row) {
                self.update.added.swap_remove(i);
            }
        } else {
            self.left.push((row, id));
        }
        self.holes.push(Reverse(row));
        Ok(row)
    }

    /// Adds request `id` with `params` on the lowest row freed so far in this step, or after
    /// the last row, and returns its [`AddedRequest`] for the optional parts
    /// (`.with_prompt(ids).with_output_tokens(out)`); its `row` is the row it took.
    ///
    /// # Errors
    ///
    /// [`BatchError::DuplicateRequest`] if `id` is in the batch; [`BatchError::Full`] if every
    /// row is taken; [`BatchError::AfterReorder`] after a swap in the same step.
    pub fn add(&mut self, id: K, params: Arc<RequestParams>) -> Result<&mut AddedRequest> {
        self.begin_step();
        if self.phase == Phase::Reorder {
            return Err(BatchError::AfterReorder { op: "add" }.into());
        }
        if self.index.contains_key(&id) {
            return Err(BatchError::DuplicateRequest {
                id: format!("{id:?}"),
            }
            .into());
        }
        let full = BatchError::Full {
            capacity: self.capacity,
        };
        if self.len >= self.capacity {
            return Err(full.into());
        }
        let row = match self.holes.pop() {
            Some(Reverse(row)) => row,
            None if self.top < self.capacity => {
                self.top += 1;
                self.top - 1
            }
            None => return Err(full.into()),
        };
        self.rows[row] = Some(id.clone());
        self.index.insert(id, row);
        self.fresh[row] = true;
        self.len += 1;
        let added = &mut self.update.added;
        added.push(AddedRequest::new(row, params));
        Ok(added.last_mut().expect("just pushed"))
    }

    /// Swaps the rows of requests `a` and `b` (filling the step's holes first).
    ///
    /// # Errors
    ///
    /// [`BatchError::UnknownRequest`] if either is not in the batch.
    pub fn swap(&mut self, a: &K, b: &K) -> Result<()> {
        self.known_row(a)?;
        self.known_row(b)?;
        self.begin_step();
        self.condense(); // may move either: look the rows up after it
        let (ra, rb) = (self.known_row(a)?, self.known_row(b)?);
        self.record_swap(ra, rb);
        Ok(())
    }

    /// Swaps the requests on rows `a` and `b`, as numbered after the step's holes are filled
    /// (which this does first).
    ///
    /// # Errors
    ///
    /// [`BatchError::RowOutOfRange`] if a row is not below [`len`](Self::len).
    pub fn swap_rows(&mut self, a: usize, b: usize) -> Result<()> {
        for row in [a, b] {
            if row >= self.len {
                return Err(BatchError::RowOutOfRange {
                    row,
                    batch_size: self.len,
                }
                .into());
            }
        }
        self.begin_step();
        self.condense();
        self.record_swap(a, b);
        Ok(())
    }

    /// Reorders the rows so that the requests are sorted by `compare` (stable: equal requests
    /// keep their order), with at most `len() - 1` swaps, all reported (filling the step's holes
    /// first).
    ///
    /// A `compare` that is not a total order never panics: the rows then end in some order,
    /// still all reported.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for it.
    ///
    /// Cost: O(n log n) comparisons (an in-place heap sort), no allocation.
    pub fn sort_by(&mut self, mut compare: impl FnMut(&K, &K) -> Ordering) -> Result<()> {
        self.begin_step();
        self.condense();
        let n = self.len;
        let rows = &self.rows;
        self.order.clear();
        self.order.extend(0..n);
        // Unstable sort (no allocation) made stable by the tie-break on the row. A heap sort
        // rather than `sort_unstable_by`, which may panic on a comparator that is not a total
        // order.
        heap_sort_by(&mut self.order, |&x, &y| {
            let by_id = match (&rows[x], &rows[y]) {
                (Some(a), Some(b)) => compare(a, b),
                _ => Ordering::Equal,
            };
            by_id.then(x.cmp(&y)) == Ordering::Less
        });
        // `pos[r]`: where the request that was on row r is now; `at[i]`: which original row's
        // request is on row i now.
        self.pos.clear();
        self.pos.extend(0..n);
        self.at.clear();
        self.at.extend(0..n);
        for i in 0..n {
            let want = self.order[i];
            let cur = self.pos[want];
            if cur != i {
                let other = self.at[i];
                self.at[i] = want;
                self.at[cur] = other;
                self.pos[want] = i;
                self.pos[other] = cur;
                self.record_swap(i, cur);
            }
        }
        Ok(())
    }

    /// [`sort_by`](Self::sort_by) comparing `key(id)`.
    ///
    /// # Errors
    ///
    /// As [`sort_by`](Self::sort_by).
    pub fn sort_by_key<T: Ord>(&mut self, mut key: impl FnMut(&K) -> T) -> Result<()> {
        self.sort_by(|a, b| key(a).cmp(&key(b)))
    }

    /// Ends the step: fills the holes (if no swap did), and lends the step's update for every
    /// processor's [`update_state`](crate::LogitsProcessor::update_state), or `None` when the
    /// batch did not change (pass it either way). Rows `0..len()` then hold the requests. The
    /// next change starts a new step.
    ///
    /// Cost: O(holes filled); no allocation.
    pub fn step(&mut self) -> Option<&BatchUpdate> {
        self.begin_step();
        self.condense();
        self.phase = Phase::Lent;
        self.update.batch_size = self.len;
        (!self.update.is_empty()).then_some(&self.update)
    }

    /// [`step`](Self::step), handing the update to `feed` (the processors'
    /// [`update_state`](crate::LogitsProcessor::update_state)); if `feed` fails, the step is
    /// undone: the batch is exactly as before the step's first change, `feed`'s error is
    /// returned, and the next step reports nothing of it. Batch and processors stay in step
    /// either way (provided `feed` changed nothing when it failed, as a
    /// [`Pipeline`](crate::Pipeline) guarantees).
    ///
    /// For a request whose parameters were not validated first: on error, drop or fix it and
    /// redo the step's changes.
    ///
    /// # Errors
    ///
    /// `feed`'s.
    ///
    /// Cost: as `step`, plus O(changes of the step) to undo on error (one `clone` per request
    /// the step removed).
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use logits_processors::*;
    ///
    /// let config = ProcessorConfig::builder().max_batch_size(4).vocab_size(8).build()?;
    /// let mut processors = Pipeline::builder(&config).with(ForceToken::new(&config)?).build()?;
    /// let mut batch = PersistentBatch::<u64>::new(4);
    /// batch.add(1, Arc::new(RequestParams::new()))?;
    /// batch.step_with(|update| processors.update_state(update))?;
    ///
    /// batch.remove(&1)?;
    /// let bad = RequestParams::new().with_allowed_token_ids([99]); // not in the vocabulary
    /// batch.add(2, Arc::new(bad))?;
    /// let refused = batch.step_with(|update| processors.update_state(update));
    /// assert!(matches!(refused, Err(Error::Params(_))));
    /// assert_eq!((batch.len(), batch.row_of(&1), batch.contains(&2)), (1, Some(0), false));
    /// assert!(batch.step().is_none()); // in step with the processors
    /// # Ok::<(), logits_processors::Error>(())
    /// ```
    pub fn step_with<E>(
        &mut self,
        feed: impl FnOnce(Option<&BatchUpdate>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let result = feed(self.step());
        if result.is_err() {
            self.undo_step();
        }
        result
    }

    /// Undoes the step just lent by `step` (the batch is then as at its start).
    fn undo_step(&mut self) {
        let update = &mut self.update;
        for m in update.moved.iter().rev() {
            match m.direction {
                MoveDirectionality::Swap => self.rows.swap(m.from, m.to),
                MoveDirectionality::Unidirectional => self.rows[m.from] = self.rows[m.to].take(),
            }
        }
        for a in &update.added {
            if let Some(id) = self.rows[a.row].take() {
                self.index.remove(&id);
            }
            self.fresh[a.row] = false;
        }
        for (row, id) in self.left.drain(..) {
            self.rows[row] = Some(id.clone());
            self.index.insert(id, row);
        }
        for m in &update.moved {
            for row in [m.from, m.to] {
                if let Some(id) = &self.rows[row] {
                    if let Some(r) = self.index.get_mut(id) {
                        *r = row;
                    }
                }
            }
        }
        update.removed.clear();
        update.added.clear();
        update.moved.clear();
        self.holes.clear();
        self.len = self.start_len;
        self.top = self.start_len;
        self.phase = Phase::Membership;
    }

    fn known_row(&self, id: &K) -> Result<usize> {
        self.row_of(id).ok_or_else(|| {
            BatchError::UnknownRequest {
                id: format!("{id:?}"),
            }
            .into()
        })
    }

    /// Starts a new step if the last one was lent.
    fn begin_step(&mut self) {
        if self.phase == Phase::Lent {
            self.update.removed.clear();
            self.update.added.clear();
            self.update.moved.clear();
            self.left.clear();
            self.start_len = self.len;
            self.phase = Phase::Membership;
        }
    }

    /// Ends the membership phase: lists the freed rows not reused as `removed`, then fills
    /// the holes below `len` with the requests of the highest rows.
    fn condense(&mut self) {
        if self.phase != Phase::Membership {
            return;
        }
        let update = &mut self.update;
        for &(row, _) in &self.left {
            if !self.fresh[row] {
                update.removed.push(row);
            }
        }
        update.removed.sort_unstable();
        for a in &update.added {
            self.fresh[a.row] = false;
        }
        let mut src = self.top;
        while let Some(Reverse(hole)) = self.holes.pop() {
            if hole >= self.len {
                break; // the heap yields rows in increasing order: the rest are higher
            }
            // Rows occupied at or above `len` match the holes below it one for one.
            src -= 1;
            while self.rows[src].is_none() {
                src -= 1;
            }
            let id = self.rows[src].take();
            if let Some(k) = &id {
                if let Some(r) = self.index.get_mut(k) {
                    *r = hole;
                }
            }
            self.rows[hole] = id;
            update.moved.push(MovedRequest {
                from: src,
                to: hole,
                direction: MoveDirectionality::Unidirectional,
            });
        }
        self.holes.clear();
        self.top = self.len;
        self.phase = Phase::Reorder;
    }

    /// Swaps rows `a` and `b` (both below `len`, reorder phase) and reports it.
    fn record_swap(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        self.rows.swap(a, b);
        for row in [a, b] {
            if let Some(k) = &self.rows[row] {
                if let Some(r) = self.index.get_mut(k) {
                    *r = row;
                }
            }
        }
        self.update.moved.push(MovedRequest {
            from: a,
            to: b,
            direction: MoveDirectionality::Swap,
        });
    }
}

/// Sorts `v` in place by `less`, with O(n log n) calls and no allocation. Whatever `less`
/// answers, it never panics and `v` stays a permutation of its input.
fn heap_sort_by<T>(v: &mut [T], mut less: impl FnMut(&T, &T) -> bool) {
    fn sift_down<T>(v: &mut [T], mut node: usize, less: &mut impl FnMut(&T, &T) -> bool) {
        loop {
            let mut child = 2 * node + 1;
            if child >= v.len() {
                return;
            }
            if child + 1 < v.len() && less(&v[child], &v[child + 1]) {
                child += 1;
            }
            if !less(&v[node], &v[child]) {
                return;
            }
            v.swap(node, child);
            node = child;
        }
    }
    for node in (0..v.len() / 2).rev() {
        sift_down(v, node, &mut less);
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift_down(&mut v[..end], 0, &mut less);
    }
}
