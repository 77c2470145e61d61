//! One test per rule of `logits_processors::ledger`: each broken rule is the right typed error
//! and leaves the ledger as it was.

use std::sync::Arc;

use logits_processors::{
    AddedRequest, BatchUpdate, BatchUpdateBuilder, Error, ExtraArg, MoveDirectionality,
    MovedRequest, ParamsError, RequestParams, RowLedger, UpdateError,
};

fn params(tag: u32) -> Arc<RequestParams> {
    Arc::new(RequestParams::new().with_extra("tag", ExtraArg::Int(tag.into())))
}

fn added(row: usize, tag: u32) -> AddedRequest {
    AddedRequest::new(row, params(tag))
}

fn tag_of(a: &AddedRequest) -> logits_processors::Result<Option<u32>> {
    Ok(match a.params.extra.get("tag") {
        Some(ExtraArg::Int(t)) => Some(*t as u32),
        _ => None,
    })
}

/// A ledger of capacity 4 holding tags 10, 11, 12 in rows 0..3.
fn three() -> RowLedger<u32> {
    let mut l = RowLedger::new(4);
    let mut u = BatchUpdate::new(3);
    u.added.extend([added(0, 10), added(1, 11), added(2, 12)]);
    l.apply(Some(&u), tag_of).unwrap();
    l
}

fn snapshot(l: &RowLedger<u32>) -> (usize, Vec<(bool, Option<u32>)>) {
    let rows = (0..l.capacity())
        .map(|r| (l.is_occupied(r), l.get(r).copied()))
        .collect();
    (l.batch_size(), rows)
}

fn moved(from: usize, to: usize, direction: MoveDirectionality) -> MovedRequest {
    MovedRequest {
        from,
        to,
        direction,
    }
}

/// Applies `u` to a fresh `three()` ledger, expects an error, and checks nothing changed.
fn rejects(u: BatchUpdate) -> UpdateError {
    let mut l = three();
    let before = snapshot(&l);
    let err = l.apply(Some(&u), tag_of).unwrap_err();
    assert_eq!(snapshot(&l), before, "a rejected update changed the ledger");
    // The ledger still accepts a valid update afterwards.
    l.apply(Some(&BatchUpdate::new(3)), tag_of).unwrap();
    match err {
        Error::Update(e) => e,
        other => panic!("not an update error: {other}"),
    }
}

#[test]
fn batch_size_over_capacity() {
    let err = rejects(BatchUpdate::new(5));
    assert!(matches!(
        err,
        UpdateError::BatchSizeOverCapacity {
            batch_size: 5,
            capacity: 4
        }
    ));
}

#[test]
fn rows_out_of_range() {
    let mut u = BatchUpdate::new(3);
    u.removed.push(4);
    assert!(matches!(
        rejects(u),
        UpdateError::RowOutOfRange {
            what: "removed",
            row: 4,
            ..
        }
    ));
    let mut u = BatchUpdate::new(4);
    u.added.push(added(9, 1));
    assert!(matches!(
        rejects(u),
        UpdateError::RowOutOfRange {
            what: "added",
            row: 9,
            ..
        }
    ));
    let mut u = BatchUpdate::new(3);
    u.moved
        .push(moved(0, 7, MoveDirectionality::Unidirectional));
    assert!(matches!(
        rejects(u),
        UpdateError::RowOutOfRange {
            what: "moved",
            row: 7,
            ..
        }
    ));
}

#[test]
fn removed_twice_and_removed_empty() {
    let mut u = BatchUpdate::new(2);
    u.removed.extend([2, 2]);
    assert!(matches!(rejects(u), UpdateError::RemovedTwice { row: 2 }));
    let mut u = BatchUpdate::new(3);
    u.removed.push(3);
    assert!(matches!(
        rejects(u),
        UpdateError::RemovedEmptyRow { row: 3 }
    ));
}

#[test]
fn added_twice() {
    let mut u = BatchUpdate::new(4);
    u.added.extend([added(3, 1), added(3, 2)]);
    assert!(matches!(rejects(u), UpdateError::AddedTwice { row: 3 }));
}

#[test]
fn move_and_swap_from_empty_rows() {
    let mut u = BatchUpdate::new(3);
    u.moved
        .push(moved(3, 0, MoveDirectionality::Unidirectional));
    assert!(matches!(
        rejects(u),
        UpdateError::MoveFromEmptyRow { from: 3, to: 0 }
    ));
    let mut u = BatchUpdate::new(3);
    u.moved.push(moved(1, 3, MoveDirectionality::Swap));
    assert!(matches!(
        rejects(u),
        UpdateError::SwapWithEmptyRow { empty: 3, .. }
    ));
    // A row emptied by an earlier move in the same update is empty for later moves.
    let mut u = BatchUpdate::new(3);
    u.removed.push(0);
    u.moved
        .push(moved(2, 0, MoveDirectionality::Unidirectional));
    u.moved
        .push(moved(2, 1, MoveDirectionality::Unidirectional));
    assert!(matches!(
        rejects(u),
        UpdateError::MoveFromEmptyRow { from: 2, to: 1 }
    ));
}

#[test]
fn rows_must_end_contiguous() {
    // A hole at row 1.
    let mut u = BatchUpdate::new(2);
    u.removed.push(1);
    assert!(matches!(
        rejects(u),
        UpdateError::RowsNotContiguous {
            batch_size: 2,
            occupied: 2,
            stray_row: Some(2)
        }
    ));
    // batch_size that disagrees with the rows in use.
    assert!(matches!(
        rejects(BatchUpdate::new(2)),
        UpdateError::RowsNotContiguous {
            occupied: 3,
            stray_row: Some(2),
            ..
        }
    ));
    assert!(matches!(
        rejects(BatchUpdate::new(4)),
        UpdateError::RowsNotContiguous { occupied: 3, .. }
    ));
}

#[test]
fn vllm_style_step_is_accepted() {
    // The worked example of the module docs: a finishes, d reuses its row, b finishes, c fills
    // the hole.
    let mut l = three();
    let mut b = BatchUpdateBuilder::new();
    b.remove(0);
    b.remove(1);
    let row = b.pop_removed().unwrap();
    assert_eq!(row, 0);
    b.add(row, params(13));
    b.move_request(2, 1);
    let u = b.build(2).unwrap();
    assert_eq!(&u.removed[..], &[1]);
    l.apply(Some(u), tag_of).unwrap();
    assert_eq!(
        snapshot(&l),
        (
            2,
            vec![
                (true, Some(13)),
                (true, Some(12)),
                (false, None),
                (false, None)
            ]
        )
    );
    let mut touched = l.touched().to_vec();
    touched.sort_unstable();
    assert_eq!(touched, [0, 1, 2]);
}

#[test]
fn swaps_and_self_moves() {
    let mut l = three();
    let mut u = BatchUpdate::new(3);
    u.moved.push(moved(0, 2, MoveDirectionality::Swap));
    u.moved
        .push(moved(1, 1, MoveDirectionality::Unidirectional));
    l.apply(Some(&u), tag_of).unwrap();
    assert_eq!(
        (l.get(0), l.get(1), l.get(2)),
        (Some(&12), Some(&11), Some(&10))
    );
}

#[test]
fn none_means_unchanged_and_remove_everything_works() {
    let mut l = three();
    l.apply(None, tag_of).unwrap();
    assert_eq!(l.batch_size(), 3);
    assert!(l.touched().is_empty());
    let mut u = BatchUpdate::new(0);
    u.removed.extend([2, 0, 1]);
    l.apply(Some(&u), tag_of).unwrap();
    assert_eq!(l.batch_size(), 0);
    assert!((0..4).all(|r| !l.is_occupied(r)));
}

#[test]
fn state_errors_reject_the_whole_update() {
    let mut l = three();
    let before = snapshot(&l);
    let mut u = BatchUpdate::new(4);
    u.removed.push(0);
    u.added.extend([added(0, 20), added(3, 21)]);
    let err = l
        .apply(Some(&u), |a| {
            if a.row == 3 {
                Err(ParamsError::Rejected {
                    processor: "test",
                    reason: "no".into(),
                }
                .into())
            } else {
                tag_of(a)
            }
        })
        .unwrap_err();
    assert!(matches!(err, Error::Params(ParamsError::Rejected { .. })));
    assert_eq!(snapshot(&l), before);
}

#[test]
fn builder_reports_nothing_when_nothing_changed() {
    let mut b = BatchUpdateBuilder::new();
    assert!(b.build(0).is_none());
    b.remove(5);
    b.remove(2);
    b.remove(7);
    assert_eq!(b.peek_removed(), Some(2));
    assert_eq!(b.pop_removed(), Some(2));
    let u = b.build(1).unwrap();
    assert_eq!(&u.removed[..], &[7, 5]);
    assert!(!b.has_changes());
    // The next step starts empty, and reuses the lists.
    b.add(0, params(1));
    let u = b.build(1).unwrap();
    assert!(u.removed.is_empty());
    assert_eq!(u.added.len(), 1);
    assert!(b.pop_removed().is_none());
}
