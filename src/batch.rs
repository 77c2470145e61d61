//! What changed in the persistent batch during one engine step.
//!
//! An engine records the step's changes with a [`BatchUpdateBuilder`] and hands the resulting
//! [`BatchUpdate`] to every processor before calling `apply`. The rules an update must follow
//! (order, replacement, contiguity) are stated and enforced in [`crate::ledger`].

use std::sync::Arc;

use crate::output::OutputTokens;
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
///
/// Built by [`BatchUpdateBuilder::add`], which returns it for the optional parts:
/// `changes.add(row, params).with_prompt(ids).with_output_tokens(out)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AddedRequest {
    /// The row the request now occupies (replacing whatever occupied it).
    pub row: usize,
    /// The request's parameters.
    pub params: Arc<RequestParams>,
    /// The prompt's token ids, when the engine keeps them (repetition penalty reads them).
    pub prompt_token_ids: Option<Arc<[u32]>>,
    /// The request's generated tokens: a live handle that the engine keeps appending to (and
    /// rolling back); processors follow it with an [`OutputCursor`](crate::OutputCursor).
    pub output_token_ids: OutputTokens,
}

impl AddedRequest {
    /// A request at `row` with `params`, no prompt and a fresh, empty output list.
    pub fn new(row: usize, params: Arc<RequestParams>) -> Self {
        Self {
            row,
            params,
            prompt_token_ids: None,
            output_token_ids: OutputTokens::new(),
        }
    }

    /// Sets the prompt's token ids.
    pub fn with_prompt(&mut self, prompt_token_ids: impl Into<Arc<[u32]>>) -> &mut Self {
        self.prompt_token_ids = Some(prompt_token_ids.into());
        self
    }

    /// Sets the handle of the request's output tokens (the engine keeps a clone and appends).
    pub fn with_output_tokens(&mut self, output_token_ids: OutputTokens) -> &mut Self {
        self.output_token_ids = output_token_ids;
        self
    }
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
    pub removed: Vec<usize>,
    /// Requests that joined, with their rows.
    pub added: Vec<AddedRequest>,
    /// Moves and swaps, applied in order after `removed` and `added`.
    pub moved: Vec<MovedRequest>,
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

/// Records one step's changes and lends the [`BatchUpdate`] for the processors.
///
/// Typical engine use, per step: call [`remove`](Self::remove) for every finished request
/// first; then for every new request take a freed row with [`pop_removed`](Self::pop_removed)
/// (the lowest freed row; the row leaves `removed`, and the added request replaces the old one
/// there) or append at the end; then fill the remaining holes with
/// [`move_request`](Self::move_request) from the end of the batch; finally
/// [`build`](Self::build). The builder reuses its lists from step to step: once they have
/// grown to the largest step, recording a step allocates nothing.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use logits_processors::{BatchUpdateBuilder, OutputTokens, RequestParams};
///
/// let mut b = BatchUpdateBuilder::new();
/// // step 1: two requests join rows 0 and 1; the second brings its prompt and output handle
/// b.add(0, Arc::new(RequestParams::new()));
/// b.add(1, Arc::new(RequestParams::new()))
///     .with_prompt(vec![1, 2, 3])
///     .with_output_tokens(OutputTokens::new());
/// let update = b.build(2).expect("the batch changed");
/// assert_eq!(update.added.len(), 2);
///
/// // step 2: row 0 finishes; a new request reuses the freed row
/// b.remove(0);
/// let row = b.pop_removed().expect("a row was freed");
/// assert_eq!(row, 0);
/// b.add(row, Arc::new(RequestParams::new().with_allowed_token_ids([7])));
/// let update = b.build(2).unwrap();
/// assert!(update.removed.is_empty()); // the reused row is not reported as removed
/// assert_eq!(update.added[0].row, 0);
///
/// // step 3: nothing changed
/// assert!(b.build(2).is_none());
/// ```
#[derive(Debug, Default)]
pub struct BatchUpdateBuilder {
    update: BatchUpdate,
    removed_sorted: bool,
    /// The lists hold the last built update; the next record starts a new step.
    built: bool,
}

impl BatchUpdateBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn step(&mut self) -> &mut BatchUpdate {
        if self.built {
            self.built = false;
            self.removed_sorted = false;
            let u = &mut self.update;
            u.removed.clear();
            u.added.clear();
            u.moved.clear();
        }
        &mut self.update
    }

    /// Records that the request at `row` left the batch.
    pub fn remove(&mut self, row: usize) {
        self.step().removed.push(row);
        self.removed_sorted = false;
    }

    /// The lowest row freed so far in this step, without taking it.
    ///
    /// Cost: sorts `removed` (O(r log r) for `r` removed rows) when a row was removed since the
    /// last sort, then O(1); no allocation.
    pub fn peek_removed(&mut self) -> Option<usize> {
        self.step();
        self.sort_removed();
        self.update.removed.last().copied()
    }

    /// Takes the lowest row freed so far in this step, so that a new request can be added onto
    /// it: the row no longer appears in `removed` and the added request replaces the old one.
    ///
    /// Cost: as [`peek_removed`](Self::peek_removed).
    pub fn pop_removed(&mut self) -> Option<usize> {
        self.step();
        self.sort_removed();
        self.update.removed.pop()
    }

    /// Records that a request with `params` joined the batch at `row`, with no prompt and a
    /// fresh output list; set those on the returned [`AddedRequest`].
    pub fn add(&mut self, row: usize, params: Arc<RequestParams>) -> &mut AddedRequest {
        let added = &mut self.step().added;
        added.push(AddedRequest::new(row, params));
        added.last_mut().expect("just pushed")
    }

    /// Records a one-way move of the request at `from` to `to` (which it replaces).
    pub fn move_request(&mut self, from: usize, to: usize) {
        self.step().moved.push(MovedRequest {
            from,
            to,
            direction: MoveDirectionality::Unidirectional,
        });
    }

    /// Records that the requests at `a` and `b` trade places.
    pub fn swap(&mut self, a: usize, b: usize) {
        self.step().moved.push(MovedRequest {
            from: a,
            to: b,
            direction: MoveDirectionality::Swap,
        });
    }

    /// Whether anything was recorded since the last [`build`](Self::build).
    pub fn has_changes(&self) -> bool {
        !self.built && !self.update.is_empty()
    }

    /// Returns the step's update, or `None` when nothing was recorded (pass it to
    /// `update_state` either way). The next record starts a new step. With nothing recorded,
    /// `batch_size` is not looked at: a batch size cannot change without a change recorded.
    ///
    /// Cost: sorts `removed` (lowest row last) unless already sorted, O(r log r) for `r`
    /// removed rows; lends the builder's lists, no allocation or copy.
    pub fn build(&mut self, batch_size: usize) -> Option<&BatchUpdate> {
        if !self.has_changes() {
            self.built = true;
            return None;
        }
        self.sort_removed();
        self.built = true;
        self.update.batch_size = batch_size;
        Some(&self.update)
    }

    /// Descending, so that the lowest freed row is at the end.
    fn sort_removed(&mut self) {
        if !self.removed_sorted {
            self.update.removed.sort_unstable_by(|a, b| b.cmp(a));
            self.removed_sorted = true;
        }
    }
}
