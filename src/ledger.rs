//! The batch-state ledger: the rules of a [`BatchUpdate`], in one place.
//!
//! Every processor keeps per-row state for a *persistent batch*: rows hold requests across
//! steps, and each step the engine reports what changed. [`RowLedger`] applies those changes
//! to a vector of per-row states, validating them first, so that a processor only has to say
//! what state a new request gets.
//!
//! # The rules
//!
//! These are vLLM v1's `BatchUpdate` rules, made exact:
//!
//! 1. **Order.** An update is applied as `removed`, then `added`, then `moved` (each list in
//!    its own order; moves one after another).
//! 2. **Removal.** Each removed row must hold a request, and appear once.
//! 3. **Addition replaces.** An added request takes its row, replacing whatever is there. An
//!    engine that reuses a freed row takes it *out* of `removed` and adds onto it
//!    ([`BatchUpdateBuilder::pop_removed`](crate::BatchUpdateBuilder::pop_removed)); so adding
//!    onto an occupied row is legal. A row may be added once per update.
//! 4. **Moves.** `Unidirectional (from, to)` moves the request at `from` to `to`, replacing
//!    what was there and leaving `from` empty. `Swap (a, b)` trades the two requests. The rows
//!    a move reads must hold a request *at that point* of the update (after `removed`, `added`
//!    and the earlier moves). A move or swap of a row with itself changes nothing, but the
//!    row must hold a request like any other (else
//!    [`MoveFromEmptyRow`](crate::UpdateError::MoveFromEmptyRow) /
//!    [`SwapWithEmptyRow`](crate::UpdateError::SwapWithEmptyRow)).
//! 5. **Contiguity.** After the update, the rows that hold requests are exactly
//!    `0..batch_size`, and `apply` receives `batch_size` rows.
//! 6. **Bounds.** Every row and `batch_size` are below the processor's capacity.
//! 7. **No update** (`None`) means the batch did not change.
//!
//! What breaks a rule is an [`Error::Update`](crate::Error::Update) and leaves the ledger exactly as before the call.
//!
//! # A worked example
//!
//! Capacity 4. Rows `0..3` hold requests `a b c` (batch size 3). In one step `a` finishes, `d`
//! arrives and `b` finishes; the engine gives `d` the lowest freed row (0) and fills the hole at
//! row 1 with the last request, `c`:
//!
//! ```text
//! before            [a  b  c  _ ]   batch_size 3
//! removed [1]       [a  _  c  _ ]   (row 0 was freed too, but reused: not listed)
//! added   [(0, d)]  [d  _  c  _ ]   d replaces a
//! moved   [2 -> 1]  [d  c  _  _ ]   batch_size 2: rows 0..2 in use
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use logits_processors::{BatchUpdateBuilder, ExtraArg, RequestParams, RowLedger};
//!
//! let p = |tag: i64| Arc::new(RequestParams::new().with_extra("tag", ExtraArg::Int(tag)));
//! let mut ledger: RowLedger<i64> = RowLedger::new(4);
//! let state = |a: &logits_processors::AddedRequest| match a.params.extra.get("tag") {
//!     Some(ExtraArg::Int(t)) => Ok(Some(*t)),
//!     _ => Ok(None),
//! };
//!
//! let mut b = BatchUpdateBuilder::new();
//! for (row, tag) in [(0, 10), (1, 11), (2, 12)] {
//!     b.add(row, p(tag));
//! }
//! ledger.apply(b.build(3), state)?;
//!
//! b.remove(0);
//! b.remove(1);
//! let row = b.pop_removed().unwrap(); // 0
//! b.add(row, p(13));
//! b.move_request(2, 1);
//! ledger.apply(b.build(2), state)?;
//!
//! assert_eq!(ledger.batch_size(), 2);
//! assert_eq!(ledger.get(0), Some(&13));
//! assert_eq!(ledger.get(1), Some(&12));
//! assert_eq!(ledger.get(2), None);
//! # Ok::<(), logits_processors::Error>(())
//! ```
//!
//! # Cost
//!
//! Validation and commit cost O(number of listed changes): a step with one change does O(1)
//! work whatever the batch size, and no heap allocation once the ledger's scratch buffers have
//! grown to the largest step seen.

use crate::batch::{AddedRequest, BatchUpdate, MoveDirectionality};
use crate::error::{Result, UpdateError};

/// Per-row state of a persistent batch, updated by [`BatchUpdate`]s under the rules of this
/// module.
///
/// Each row is empty or holds a request; a request's processor state is `Option<T>` (`None`
/// for a request that does not use the processor). The ledger also reports which rows an
/// update touched ([`touched`](Self::touched)), so that device-resident copies can be
/// updated row by row.
#[derive(Debug, Clone)]
pub struct RowLedger<T> {
    slots: Vec<Slot<T>>,
    batch_size: usize,
    scratch: Scratch,
    pending: Vec<Option<T>>,
    touched: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Slot<T> {
    Empty,
    Occupied(Option<T>),
}

impl<T> Slot<T> {
    fn is_occupied(&self) -> bool {
        matches!(self, Slot::Occupied(_))
    }
}

/// Epoch-stamped overlay of the occupancy during validation: O(1) per change, no clearing.
#[derive(Debug, Clone)]
struct Scratch {
    epoch: u32,
    stamp: Vec<u32>,
    flags: Vec<u8>,
}

const OCCUPIED: u8 = 1;
const REMOVED: u8 = 2;
const ADDED: u8 = 4;

impl Scratch {
    fn new(capacity: usize) -> Self {
        Self {
            epoch: 0,
            stamp: vec![0; capacity],
            flags: vec![0; capacity],
        }
    }

    fn begin(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
    }

    /// The simulated flags of `row`, or `None` if the update has not touched it yet.
    fn get(&self, row: usize) -> Option<u8> {
        (self.stamp[row] == self.epoch).then(|| self.flags[row])
    }

    fn set(&mut self, row: usize, flags: u8) {
        self.stamp[row] = self.epoch;
        self.flags[row] = flags;
    }
}

impl<T> RowLedger<T> {
    /// A ledger for at most `capacity` rows, all empty (batch size 0).
    ///
    /// Allocates `O(capacity)` once.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| Slot::Empty).collect(),
            batch_size: 0,
            scratch: Scratch::new(capacity),
            pending: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// The number of rows the ledger can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The batch size after the last accepted update; rows `0..batch_size` hold requests.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether `row` holds a request.
    pub fn is_occupied(&self, row: usize) -> bool {
        self.slots.get(row).is_some_and(Slot::is_occupied)
    }

    /// The processor state of the request at `row`, if the row holds a request that has one.
    pub fn get(&self, row: usize) -> Option<&T> {
        match self.slots.get(row) {
            Some(Slot::Occupied(Some(t))) => Some(t),
            _ => None,
        }
    }

    /// The processor state of the request at `row`, mutably.
    pub fn get_mut(&mut self, row: usize) -> Option<&mut T> {
        match self.slots.get_mut(row) {
            Some(Slot::Occupied(Some(t))) => Some(t),
            _ => None,
        }
    }

    /// Rows `0..batch_size` with the state of each, mutably.
    pub fn rows_mut(&mut self) -> impl Iterator<Item = (usize, Option<&mut T>)> + '_ {
        self.slots[..self.batch_size]
            .iter_mut()
            .enumerate()
            .map(|(i, s)| match s {
                Slot::Occupied(t) => (i, t.as_mut()),
                Slot::Empty => (i, None),
            })
    }

    /// Rows `0..batch_size` with the state of each (`None` for requests without one).
    pub fn rows(&self) -> impl Iterator<Item = (usize, Option<&T>)> + '_ {
        self.slots[..self.batch_size]
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Slot::Occupied(t) => (i, t.as_ref()),
                Slot::Empty => (i, None),
            })
    }

    /// The distinct rows the last [`apply`](Self::apply) changed (in first-touched order):
    /// their state may have changed, all other rows are as before. Empty after `apply(None)`
    /// or a rejected update.
    pub fn touched(&self) -> &[usize] {
        &self.touched
    }

    /// Checks `update` against the rules without changing any row (it clears
    /// [`touched`](Self::touched)).
    ///
    /// # Errors
    ///
    /// The first broken rule, as an [`Error::Update`](crate::Error::Update).
    ///
    /// # Cost
    ///
    /// As [`apply`](Self::apply)'s checks: O(changes listed in the update), no allocation once
    /// the scratch buffers have grown to the largest update.
    pub fn validate(&mut self, update: &BatchUpdate) -> Result<()> {
        let result = self.check(update);
        self.touched.clear();
        Ok(result?)
    }

    /// Applies `update` (or nothing, for `None`), asking `state_of` for the state of each
    /// added request.
    ///
    /// `state_of` returns `Ok(None)` for a request that does not use the processor, or an error
    /// to reject the request's parameters (which rejects the whole update).
    ///
    /// # Errors
    ///
    /// A broken rule or an error from `state_of`; either way the ledger is unchanged.
    ///
    /// # Cost
    ///
    /// O(changes listed in the update).
    pub fn apply<F>(&mut self, update: Option<&BatchUpdate>, mut state_of: F) -> Result<()>
    where
        F: FnMut(&AddedRequest) -> Result<Option<T>>,
    {
        let Some(update) = update else {
            self.touched.clear();
            return Ok(());
        };
        if let Err(e) = self.check(update) {
            self.touched.clear();
            return Err(e.into());
        }
        self.pending.clear();
        for added in &update.added {
            match state_of(added) {
                Ok(state) => self.pending.push(state),
                Err(e) => {
                    self.pending.clear();
                    self.touched.clear();
                    return Err(e);
                }
            }
        }
        self.commit(update);
        Ok(())
    }

    /// Validation: simulates the update on the scratch overlay and records the rows it
    /// touches in `self.touched` (the overlay is discarded by the next call).
    fn check(&mut self, update: &BatchUpdate) -> Result<(), UpdateError> {
        let capacity = self.capacity();
        if update.batch_size > capacity {
            return Err(UpdateError::BatchSizeOverCapacity {
                batch_size: update.batch_size,
                capacity,
            });
        }
        self.scratch.begin();
        self.touched.clear();
        let slots = &self.slots;
        let scratch = &mut self.scratch;
        let touched = &mut self.touched;
        let flags = |scratch: &Scratch, row: usize| {
            scratch.get(row).unwrap_or_else(|| {
                if slots[row].is_occupied() {
                    OCCUPIED
                } else {
                    0
                }
            })
        };
        let in_range = |what, row: usize| {
            if row < capacity {
                Ok(())
            } else {
                Err(UpdateError::RowOutOfRange {
                    what,
                    row,
                    capacity,
                })
            }
        };
        let mut set = |scratch: &mut Scratch, row: usize, f: u8| {
            if scratch.get(row).is_none() {
                touched.push(row);
            }
            scratch.set(row, f);
        };

        for &row in &update.removed {
            in_range("removed", row)?;
            let f = flags(scratch, row);
            if f & REMOVED != 0 {
                return Err(UpdateError::RemovedTwice { row });
            }
            if f & OCCUPIED == 0 {
                return Err(UpdateError::RemovedEmptyRow { row });
            }
            set(scratch, row, (f & !OCCUPIED) | REMOVED);
        }
        for added in &update.added {
            let row = added.row;
            in_range("added", row)?;
            let f = flags(scratch, row);
            if f & ADDED != 0 {
                return Err(UpdateError::AddedTwice { row });
            }
            set(scratch, row, f | OCCUPIED | ADDED);
        }
        for m in &update.moved {
            in_range("moved", m.from)?;
            in_range("moved", m.to)?;
            let (ff, ft) = (flags(scratch, m.from), flags(scratch, m.to));
            match m.direction {
                MoveDirectionality::Unidirectional => {
                    if ff & OCCUPIED == 0 {
                        return Err(UpdateError::MoveFromEmptyRow {
                            from: m.from,
                            to: m.to,
                        });
                    }
                    if m.from != m.to {
                        set(scratch, m.from, ff & !OCCUPIED);
                        set(scratch, m.to, ft | OCCUPIED);
                    }
                }
                MoveDirectionality::Swap => {
                    for (row, f) in [(m.from, ff), (m.to, ft)] {
                        if f & OCCUPIED == 0 {
                            return Err(UpdateError::SwapWithEmptyRow {
                                a: m.from,
                                b: m.to,
                                empty: row,
                            });
                        }
                    }
                    set(scratch, m.from, ff);
                    set(scratch, m.to, ft);
                }
            }
        }

        // Contiguity. Before the update the occupied rows are exactly 0..old (an invariant of
        // every accepted update), so only touched rows can break it.
        let (old, new) = (self.batch_size, update.batch_size);
        let mut occupied = old;
        let mut stray_row = None;
        let mut touched_above_new_below_old = 0;
        for &row in touched.iter() {
            let after = scratch.flags[row] & OCCUPIED != 0;
            let before = slots[row].is_occupied();
            occupied = occupied + usize::from(after) - usize::from(before);
            if after && row >= new {
                stray_row.get_or_insert(row);
            }
            if row >= new && row < old {
                touched_above_new_below_old += 1;
            }
        }
        if stray_row.is_none() && old > new && touched_above_new_below_old < old - new {
            // An untouched, still occupied row lies in new..old.
            stray_row = (new..old).find(|&r| scratch.get(r).is_none());
        }
        if occupied != new || stray_row.is_some() {
            return Err(UpdateError::RowsNotContiguous {
                batch_size: new,
                occupied,
                stray_row,
            });
        }
        Ok(())
    }

    /// Applies a validated update; `self.pending` holds the added requests' states in order.
    fn commit(&mut self, update: &BatchUpdate) {
        for &row in &update.removed {
            self.slots[row] = Slot::Empty;
        }
        for (added, state) in update.added.iter().zip(self.pending.drain(..)) {
            self.slots[added.row] = Slot::Occupied(state);
        }
        for m in &update.moved {
            match m.direction {
                MoveDirectionality::Unidirectional if m.from != m.to => {
                    self.slots[m.to] = std::mem::replace(&mut self.slots[m.from], Slot::Empty);
                }
                MoveDirectionality::Unidirectional => {}
                MoveDirectionality::Swap => self.slots.swap(m.from, m.to),
            }
        }
        self.batch_size = update.batch_size;
    }
}
