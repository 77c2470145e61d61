//! What changed in the persistent batch during one engine step.
//!
//! An engine records the step's changes with a [`BatchUpdateBuilder`] and hands the resulting
//! [`BatchUpdate`] to every processor before calling `apply`. The rules an update must follow
//! (order, replacement, contiguity) are stated and enforced in [`crate::ledger`].

use std::sync::{Arc, RwLock, RwLockReadGuard};

use smallvec::SmallVec;

use crate::params::RequestParams;

/// How a [`MovedRequest`] relocates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveDirectionality {
    /// The request at `from` moves to `to`; whatever was at `to` is replaced and `from` is left
    /// empty.
    Unidirectional,
    /// The requests at the two rows trade places.
    Swap,
}

/// A request that joined the batch at `row` during this step.
#[derive(Debug, Clone)]
pub struct AddedRequest {
    /// The row the request now occupies (replacing whatever occupied it).
    pub row: usize,
    /// The request's parameters.
    pub params: Arc<RequestParams>,
    /// The prompt's token ids, when the engine keeps them.
    pub prompt_token_ids: Option<Arc<[u32]>>,
    /// The request's generated tokens so far; a live handle that the engine keeps appending to.
    pub output_token_ids: OutputTokens,
}

/// A request relocated within the batch during this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MovedRequest {
    /// Source row (for a swap: one of the two rows).
    pub from: usize,
    /// Target row (for a swap: the other row).
    pub to: usize,
    /// One-way move or two-way swap.
    pub direction: MoveDirectionality,
}

/// A request's output tokens, shared between the engine (which appends) and processors
/// (which read).
///
/// This is vLLM's "reference to the running output list": a processor that keeps the handle
/// from [`AddedRequest::output_token_ids`] always sees the latest tokens. Cloning is cheap
/// (one reference count).
#[derive(Debug, Clone, Default)]
pub struct OutputTokens(Arc<RwLock<Vec<u32>>>);

impl OutputTokens {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a generated token (engine side).
    pub fn push(&self, token: u32) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(token);
    }

    /// Reads the tokens generated so far.
    pub fn read(&self) -> RwLockReadGuard<'_, Vec<u32>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of tokens generated so far.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no token has been generated yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u32>> for OutputTokens {
    fn from(tokens: Vec<u32>) -> Self {
        Self(Arc::new(RwLock::new(tokens)))
    }
}

/// The small per-step lists of a [`BatchUpdate`]; inline up to 8 entries, so a typical step
/// does not touch the heap.
pub type StepList<T> = SmallVec<[T; 8]>;

/// The changes to the persistent batch in one step (vLLM v1's `BatchUpdate`).
///
/// Processors apply them in the order **removed → added → moved**; the full rules are in
/// [`crate::ledger`]. Build one with [`BatchUpdateBuilder`], or literally.
#[derive(Debug, Clone, Default)]
pub struct BatchUpdate {
    /// Number of requests in the batch after the update; the rows in use are then
    /// `0..batch_size` and `apply` receives `batch_size` rows.
    pub batch_size: usize,
    /// Rows whose requests left the batch.
    pub removed: StepList<usize>,
    /// Requests that joined, with their rows.
    pub added: StepList<AddedRequest>,
    /// Moves and swaps, applied in order after `removed` and `added`.
    pub moved: StepList<MovedRequest>,
}

impl BatchUpdate {
    /// An update with no changes and the given batch size.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            ..Self::default()
        }
    }

    /// Whether the update lists no change at all.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.moved.is_empty()
    }
}

/// Records one step's changes and produces the [`BatchUpdate`] for the processors.
///
/// Typical engine use, per step: call [`remove`](Self::remove) for every finished request
/// first; then for every new request take a freed row with [`pop_removed`](Self::pop_removed)
/// (the lowest freed row; the row leaves `removed`, and the added request replaces the old one
/// there) or append at the end; then fill the remaining holes with
/// [`move_request`](Self::move_request) from the end of the batch; finally
/// [`build`](Self::build). The builder keeps no heap allocation of its own beyond what the
/// lists spill.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use logits_processors::{BatchUpdateBuilder, RequestParams};
///
/// let mut b = BatchUpdateBuilder::new();
/// // step 1: two requests join rows 0 and 1
/// b.add(0, Arc::new(RequestParams::new()), None, Default::default());
/// b.add(1, Arc::new(RequestParams::new()), None, Default::default());
/// let update = b.build(2).expect("the batch changed");
/// assert_eq!(update.added.len(), 2);
///
/// // step 2: row 0 finishes; a new request reuses the freed row
/// b.remove(0);
/// let row = b.pop_removed().expect("a row was freed");
/// assert_eq!(row, 0);
/// b.add(row, Arc::new(RequestParams::new().with_forced_tokens([7])), None, Default::default());
/// let update = b.build(2).unwrap();
/// assert!(update.removed.is_empty()); // the reused row is not reported as removed
/// assert_eq!(update.added[0].row, 0);
///
/// // step 3: nothing changed
/// assert!(b.build(2).is_none());
/// ```
#[derive(Debug, Default)]
pub struct BatchUpdateBuilder {
    removed: StepList<usize>,
    removed_sorted: bool,
    added: StepList<AddedRequest>,
    moved: StepList<MovedRequest>,
}

impl BatchUpdateBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the request at `row` left the batch.
    pub fn remove(&mut self, row: usize) {
        self.removed.push(row);
        self.removed_sorted = false;
    }

    /// The lowest row freed so far in this step, without taking it.
    pub fn peek_removed(&mut self) -> Option<usize> {
        self.sort_removed();
        self.removed.last().copied()
    }

    /// Takes the lowest row freed so far in this step, so that a new request can be added onto
    /// it: the row no longer appears in `removed` and the added request replaces the old one.
    pub fn pop_removed(&mut self) -> Option<usize> {
        self.sort_removed();
        self.removed.pop()
    }

    /// Records that a request joined the batch at `row`.
    pub fn add(
        &mut self,
        row: usize,
        params: Arc<RequestParams>,
        prompt_token_ids: Option<Arc<[u32]>>,
        output_token_ids: OutputTokens,
    ) {
        self.added.push(AddedRequest {
            row,
            params,
            prompt_token_ids,
            output_token_ids,
        });
    }

    /// Records a one-way move of the request at `from` to `to` (which it replaces).
    pub fn move_request(&mut self, from: usize, to: usize) {
        self.moved.push(MovedRequest {
            from,
            to,
            direction: MoveDirectionality::Unidirectional,
        });
    }

    /// Records that the requests at `a` and `b` trade places.
    pub fn swap(&mut self, a: usize, b: usize) {
        self.moved.push(MovedRequest {
            from: a,
            to: b,
            direction: MoveDirectionality::Swap,
        });
    }

    /// Whether anything was recorded since the last [`build`](Self::build).
    pub fn has_changes(&self) -> bool {
        !(self.removed.is_empty() && self.added.is_empty() && self.moved.is_empty())
    }

    /// Returns the step's update (`None` when nothing changed: pass `None` to
    /// `update_state`) and clears the builder for the next step.
    pub fn build(&mut self, batch_size: usize) -> Option<BatchUpdate> {
        if !self.has_changes() {
            return None;
        }
        self.sort_removed();
        self.removed_sorted = false;
        Some(BatchUpdate {
            batch_size,
            removed: std::mem::take(&mut self.removed),
            added: std::mem::take(&mut self.added),
            moved: std::mem::take(&mut self.moved),
        })
    }

    /// Descending, so that the lowest freed row is at the end.
    fn sort_removed(&mut self) {
        if !self.removed_sorted {
            self.removed.sort_unstable_by(|a, b| b.cmp(a));
            self.removed_sorted = true;
        }
    }
}
