//! `PersistentBatch`: random engine streams (adds, removes, swaps, sorts, refused calls, steps
//! with no change) go through the helper into a `Pipeline` of ForceToken, where every request
//! forces its own token. After every step:
//! - the helper's rows equal a naive model of vLLM's row policy (adds fill the lowest freed row,
//!   then append; holes filled from the top; swaps; stable sorts);
//! - the pipeline, fed only the helper's updates, agrees with the helper on which request sits
//!   on every row (the argmax of row r is the token of the request the helper puts on row r):
//!   no move was left unreported;
//! - refused calls return the right `BatchError` and change nothing.
//!
//! Plus the failure the helper prevents: an engine that swaps its rows without reporting it.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::{
    BatchError, BatchUpdateBuilder, Error, ForceToken, LogitsProcessor, PersistentBatch, Pipeline,
    ProcessorConfig, RequestParams,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// `prop_assert!(matches!(value, pattern))`, printing the value when it fails.
macro_rules! prop_assert_matches {
    ($value:expr, $($pattern:tt)+) => {{
        let value = &$value;
        prop_assert!(matches!(value, $($pattern)+), "{:?}", value);
    }};
}

const CAPACITY: usize = 8;
const VOCAB: usize = 64;

/// One engine call.
#[derive(Debug, Clone)]
enum Op {
    /// Add a new request.
    Add,
    /// Remove the live request this picks.
    Remove(Index),
    /// Swap two live requests by id.
    Swap(Index, Index),
    /// Swap two rows (possibly out of range).
    SwapRows(usize, usize),
    /// Sort by id, ascending or descending.
    Sort(bool),
    /// Remove an id that is not in the batch.
    RemoveUnknown,
    /// Add an id that is already in the batch.
    AddDuplicate(Index),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Add),
        3 => any::<Index>().prop_map(Op::Remove),
        2 => any::<(Index, Index)>().prop_map(|(a, b)| Op::Swap(a, b)),
        1 => (0..CAPACITY + 2, 0..CAPACITY + 2).prop_map(|(a, b)| Op::SwapRows(a, b)),
        1 => any::<bool>().prop_map(Op::Sort),
        1 => Just(Op::RemoveUnknown),
        1 => any::<Index>().prop_map(Op::AddDuplicate),
    ]
}

/// The naive model of the rows: vLLM's policy written as plainly as possible.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    rows: Vec<Option<u64>>,
    /// Whether the step's rows were reordered (adds and removes are then refused).
    reordered: bool,
}

impl Model {
    fn live(&self) -> Vec<u64> {
        self.rows.iter().flatten().copied().collect()
    }

    fn len(&self) -> usize {
        self.rows.iter().flatten().count()
    }

    fn condense(&mut self) {
        loop {
            let Some(hole) = self.rows.iter().position(Option::is_none) else {
                return;
            };
            let Some(last) = self.rows.iter().rposition(Option::is_some) else {
                return;
            };
            if last < hole {
                return;
            }
            self.rows[hole] = self.rows[last].take();
        }
    }
}

/// The helper's rows, `0..CAPACITY`.
fn rows_of(batch: &PersistentBatch<u64>) -> Vec<Option<u64>> {
    (0..CAPACITY).map(|r| batch.id_at(r).copied()).collect()
}

fn token_of(id: u64) -> u32 {
    (id % VOCAB as u64) as u32
}

fn params(id: u64) -> Arc<RequestParams> {
    Arc::new(RequestParams::new().with_allowed_token_ids([token_of(id)]))
}

/// A step: its calls, and whether the processors refuse its update (`step_with` then undoes
/// it).
fn run_stream(steps: Vec<(Vec<Op>, bool)>) -> Result<(), TestCaseError> {
    let config = ProcessorConfig::builder()
        .max_batch_size(CAPACITY)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut pipeline = Pipeline::builder(&config)
        .with(ForceToken::new(&config).unwrap())
        .build()
        .unwrap();
    let mut batch = PersistentBatch::<u64>::new(CAPACITY);
    let mut model = Model {
        rows: vec![None; CAPACITY],
        reordered: false,
    };
    // Ids are never reused, and the live ones (at most 8) have distinct tokens mod 64.
    let mut next_id = 0u64;

    for (ops, undo_after) in steps {
        model.reordered = false;
        let start = model.rows.clone();
        for op in ops {
            let before = rows_of(&batch);
            let live = model.live();
            let result = match op {
                Op::Add => {
                    let id = next_id;
                    let res = batch.add(id, params(id)).map(|a| a.row);
                    if model.reordered {
                        prop_assert_matches!(
                            res,
                            Err(Error::Batch(BatchError::AfterReorder { op: "add" }))
                        );
                    } else if model.len() == CAPACITY {
                        prop_assert_matches!(
                            res,
                            Err(Error::Batch(BatchError::Full { capacity: CAPACITY }))
                        );
                    } else {
                        let row = model.rows.iter().position(Option::is_none).unwrap();
                        prop_assert_eq!(res.ok(), Some(row), "adds take the lowest free row");
                        model.rows[row] = Some(id);
                        next_id += 1;
                    }
                    continue;
                }
                Op::Remove(i) if !live.is_empty() => {
                    let id = live[i.index(live.len())];
                    let res = batch.remove(&id);
                    if model.reordered {
                        prop_assert_matches!(
                            res,
                            Err(Error::Batch(BatchError::AfterReorder { op: "remove" }))
                        );
                    } else {
                        let row = model.rows.iter().position(|r| *r == Some(id)).unwrap();
                        prop_assert_eq!(res.ok(), Some(row));
                        model.rows[row] = None;
                    }
                    continue;
                }
                Op::Remove(_) | Op::RemoveUnknown => batch.remove(&u64::MAX).map(|_| ()),
                Op::Swap(a, b) if !live.is_empty() => {
                    let (a, b) = (live[a.index(live.len())], live[b.index(live.len())]);
                    batch.swap(&a, &b)?;
                    model.condense();
                    model.reordered = true;
                    let ra = model.rows.iter().position(|r| *r == Some(a)).unwrap();
                    let rb = model.rows.iter().position(|r| *r == Some(b)).unwrap();
                    model.rows.swap(ra, rb);
                    continue;
                }
                Op::Swap(..) => batch.swap(&u64::MAX, &u64::MAX),
                Op::SwapRows(a, b) => {
                    let res = batch.swap_rows(a, b);
                    let len = model.len();
                    if a < len && b < len {
                        prop_assert!(res.is_ok());
                        model.condense();
                        model.reordered = true;
                        model.rows.swap(a, b);
                        continue;
                    }
                    let bad = if a >= len { a } else { b };
                    prop_assert_matches!(
                        res,
                        Err(Error::Batch(BatchError::RowOutOfRange { row, batch_size }))
                            if *row == bad && *batch_size == len
                    );
                    prop_assert_eq!(rows_of(&batch), before);
                    continue;
                }
                Op::Sort(descending) => {
                    if descending {
                        batch.sort_by(|a, b| b.cmp(a))?;
                    } else {
                        batch.sort_by_key(|id| *id)?;
                    }
                    model.condense();
                    model.reordered = true;
                    let len = model.len();
                    let mut ids = model.live();
                    ids.sort_unstable();
                    if descending {
                        ids.reverse();
                    }
                    for (r, id) in ids.into_iter().enumerate() {
                        model.rows[r] = Some(id);
                    }
                    prop_assert!(model.rows[len..].iter().all(Option::is_none));
                    continue;
                }
                Op::AddDuplicate(i) if !live.is_empty() => {
                    let id = live[i.index(live.len())];
                    let res = batch.add(id, params(id)).map(|_| ());
                    if model.reordered {
                        prop_assert_matches!(
                            res,
                            Err(Error::Batch(BatchError::AfterReorder { .. }))
                        );
                    } else {
                        prop_assert_matches!(
                            res,
                            Err(Error::Batch(BatchError::DuplicateRequest { .. }))
                        );
                    }
                    prop_assert_eq!(rows_of(&batch), before);
                    continue;
                }
                Op::AddDuplicate(_) => continue,
            };
            // The calls that name an unknown id.
            if model.reordered && matches!(op, Op::Remove(_) | Op::RemoveUnknown) {
                prop_assert_matches!(result, Err(Error::Batch(BatchError::AfterReorder { .. })));
            } else {
                prop_assert_matches!(
                    result,
                    Err(Error::Batch(BatchError::UnknownRequest { id })) if id == "18446744073709551615"
                );
            }
            prop_assert_eq!(rows_of(&batch), before, "a refused call changed the rows");
        }

        // End of step: the update goes to the pipeline, which must accept it (or is undone).
        model.condense();
        if undo_after {
            let refused = batch.step_with(|_| Err("refused"));
            prop_assert_eq!(refused, Err("refused"));
            model.rows = start;
        } else {
            batch.step_with(|update| pipeline.update_state(update))?;
        }
        prop_assert_eq!(
            rows_of(&batch),
            model.rows.clone(),
            "rows differ from the model"
        );
        let len = model.len();
        prop_assert_eq!(batch.len(), len);
        for (row, id) in batch.iter() {
            prop_assert_eq!(batch.row_of(id), Some(row));
        }

        // Which request does the pipeline think is on each row?
        if len == 0 {
            continue;
        }
        let logits = Tensor::zeros((len, VOCAB), DType::F32, &Device::Cpu)?;
        pipeline.apply(&logits)?;
        let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        let expected: Vec<u32> = (0..len)
            .map(|r| token_of(*batch.id_at(r).unwrap()))
            .collect();
        prop_assert_eq!(
            argmax,
            expected,
            "a row's processor state is another request's"
        );
    }
    // A step with no change reports none.
    prop_assert!(batch.step().is_none());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn engine_streams_through_the_helper_keep_every_row_right(
        steps in prop::collection::vec(
            (prop::collection::vec(op_strategy(), 0..10), prop::bool::weighted(0.15)),
            1..25,
        )
    ) {
        run_stream(steps)?;
    }
}

/// A request removed in the step that added it is not reported at all; one added on a freed
/// row replaces the old request there (the row is not reported as removed).
#[test]
fn add_then_remove_in_one_step_is_not_reported() {
    let mut batch = PersistentBatch::<u64>::new(4);
    for id in 0..3 {
        batch.add(id, params(id)).unwrap();
    }
    batch.step().unwrap();

    batch.remove(&0).unwrap();
    assert_eq!(batch.add(7, params(7)).unwrap().row, 0); // reuses row 0
    batch.remove(&7).unwrap(); // cancelled: row 0 is free again, and its old request left
    assert_eq!(batch.add(8, params(8)).unwrap().row, 0);
    assert_eq!(batch.add(9, params(9)).unwrap().row, 3); // appended
    batch.remove(&9).unwrap();
    let update = batch.step().unwrap();
    assert!(update.removed.is_empty());
    assert_eq!(update.added.len(), 1);
    assert_eq!(update.added[0].row, 0);
    assert!(update.moved.is_empty());
    assert_eq!(update.batch_size, 3);
}

/// Removes and adds after a swap in the same step are refused; the next step takes them.
#[test]
fn membership_changes_after_a_reorder_wait_for_the_next_step() {
    let mut batch = PersistentBatch::<&str>::new(4);
    batch.add("a", Arc::new(RequestParams::new())).unwrap();
    batch.add("b", Arc::new(RequestParams::new())).unwrap();
    batch.swap(&"a", &"b").unwrap();
    let err = batch.add("c", Arc::new(RequestParams::new())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "persistent batch: add after a swap in the same step: remove and add first, then \
         reorder (or start the next step)"
    );
    assert!(batch.remove(&"a").is_err());
    assert_eq!(batch.step().unwrap().moved.len(), 1);
    batch.remove(&"a").unwrap();
    assert_eq!(
        batch.remove(&"a").unwrap_err().to_string(),
        "persistent batch: request \"a\" is not in the batch"
    );
}

/// The failure the helper prevents. An engine keeps its own row list and reorders it (say, to
/// put some requests first) but forgets to report the swap: the processors keep each request's
/// state on its old row, and every later step shapes those two rows with the other request's
/// parameters, silently. The same reorder through `PersistentBatch` is reported.
#[test]
fn unreported_swaps_are_what_the_helper_prevents() {
    let config = ProcessorConfig::builder()
        .max_batch_size(4)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let pipeline = || {
        Pipeline::builder(&config)
            .with(ForceToken::new(&config).unwrap())
            .build()
            .unwrap()
    };
    let forced_argmax = |p: &mut Pipeline, n: usize| -> Vec<u32> {
        let logits = Tensor::zeros((n, VOCAB), DType::F32, &Device::Cpu).unwrap();
        p.apply(&logits).unwrap();
        logits.argmax(1).unwrap().to_vec1().unwrap()
    };
    let ids = [5u64, 6, 7];

    // Hand bookkeeping: row list + BatchUpdateBuilder; the swap is done but not reported.
    let mut processors = pipeline();
    let mut rows: Vec<u64> = Vec::new();
    let mut changes = BatchUpdateBuilder::new();
    for id in ids {
        changes.add(rows.len(), params(id));
        rows.push(id);
    }
    processors.update_state(changes.build(rows.len())).unwrap();
    rows.swap(0, 2); // the engine reorders its batch...
    processors.update_state(changes.build(rows.len())).unwrap(); // ...and reports nothing
    let wanted: Vec<u32> = rows.iter().map(|&id| token_of(id)).collect();
    let got = forced_argmax(&mut processors, rows.len());
    assert_ne!(got, wanted, "the unreported swap went unnoticed");
    assert_eq!(got, [5, 6, 7]); // rows 0 and 2 are shaped for each other's request

    // Through the helper the same reorder is a reported swap.
    let mut processors = pipeline();
    let mut batch = PersistentBatch::<u64>::new(4);
    for id in ids {
        batch.add(id, params(id)).unwrap();
    }
    processors.update_state(batch.step()).unwrap();
    batch.swap(&5, &7).unwrap();
    processors.update_state(batch.step()).unwrap();
    let wanted: Vec<u32> = (0..3).map(|r| token_of(*batch.id_at(r).unwrap())).collect();
    assert_eq!(wanted, [7, 6, 5]);
    assert_eq!(forced_argmax(&mut processors, 3), wanted);
}

/// A comparator that is not a total order (here: answers at random) never panics; the rows stay
/// a permutation of the requests and the reported swaps say where each one went.
#[test]
fn sort_by_with_an_inconsistent_comparator_keeps_every_request() {
    let config = ProcessorConfig::builder()
        .max_batch_size(64)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut processors = Pipeline::builder(&config)
        .with(ForceToken::new(&config).unwrap())
        .build()
        .unwrap();
    let mut batch = PersistentBatch::<u64>::new(64);
    for id in 0..64 {
        batch.add(id, params(id)).unwrap();
    }
    processors.update_state(batch.step()).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..20 {
        batch
            .sort_by(|_, _| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                [
                    std::cmp::Ordering::Less,
                    std::cmp::Ordering::Equal,
                    std::cmp::Ordering::Greater,
                ][(state % 3) as usize]
            })
            .unwrap();
        processors.update_state(batch.step()).unwrap();
        let mut ids: Vec<u64> = (0..64).map(|r| *batch.id_at(r).unwrap()).collect();
        let logits = Tensor::zeros((64, VOCAB), DType::F32, &Device::Cpu).unwrap();
        processors.apply(&logits).unwrap();
        let rows = logits.to_vec2::<f32>().unwrap();
        for (row, id) in ids.iter().enumerate() {
            let kept: Vec<usize> = (0..VOCAB).filter(|&t| rows[row][t].is_finite()).collect();
            assert_eq!(kept, [token_of(*id) as usize], "row {row}");
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..64).collect::<Vec<_>>());
    }
}
