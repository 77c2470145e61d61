//! OutputTokens and OutputCursor: appends, rollbacks and incremental reads, several readers,
//! no deadlock when the engine appends from inside a reader's callback.

use logits_processors::{OutputChange, OutputTokens};

/// Replays a cursor's changes onto a copy: the copy must equal the list after every sync.
fn replay(copy: &mut Vec<u32>, c: OutputChange) {
    match c {
        OutputChange::Removed(t) => assert_eq!(copy.pop(), Some(t)),
        OutputChange::Appended(t) => copy.push(t),
    }
}

#[test]
fn cursors_follow_appends_and_rollbacks_exactly() {
    let out = OutputTokens::from(vec![1, 2]);
    let mut a = out.cursor();
    let mut copy_a = Vec::new();
    assert_eq!(a.sync(|c| replay(&mut copy_a, c)), 2);
    assert_eq!(copy_a, [1, 2]);
    let mut b = out.cursor(); // a second reader, opened later
    let mut copy_b = Vec::new();

    out.extend(&[3, 4, 5]);
    out.truncate(3); // drops 4 and 5 before anyone saw them
    out.truncate(1); // and then 2 and 3
    out.push(6);
    a.sync(|c| replay(&mut copy_a, c));
    assert_eq!(copy_a, [1, 6]);
    assert_eq!(a.tokens(), [1, 6]);
    b.sync(|c| replay(&mut copy_b, c));
    assert_eq!(copy_b, [1, 6]);

    // Nothing changed: nothing reported.
    assert_eq!(a.sync(|_| panic!("no change expected")), 0);
    // A truncation to the current length is no change.
    out.truncate(2);
    assert_eq!(a.sync(|_| panic!("no change expected")), 0);
    // Rollback then re-append of the same token is reported as both.
    out.truncate(1);
    out.push(6);
    let mut seen = Vec::new();
    a.sync(|c| seen.push(c));
    assert_eq!(seen, [OutputChange::Removed(6), OutputChange::Appended(6)]);
    assert_eq!(out.to_vec(), [1, 6]);
    assert_eq!(out.last(), Some(6));
    assert_eq!(out.len(), 2);
}

#[test]
fn the_engine_may_append_while_a_reader_handles_changes() {
    let out = OutputTokens::new();
    let mut cursor = out.cursor();
    out.push(1);
    let engine = out.clone();
    let mut n = 0;
    cursor.sync(|_| {
        engine.push(2); // would deadlock if the list's lock were held here
        n += 1;
    });
    assert_eq!(n, 1);
    assert_eq!(out.len(), 2);
    assert_eq!(cursor.sync(|_| {}), 1);
}

#[test]
fn dropped_cursors_free_their_slot() {
    let out = OutputTokens::new();
    for _ in 0..100 {
        let mut c = out.cursor();
        out.push(1);
        c.sync(|_| {});
    }
    let mut buf = Vec::new();
    out.copy_into(&mut buf);
    assert_eq!(buf.len(), 100);
    assert!(out.same_list(&out.clone()));
    assert!(!out.same_list(&OutputTokens::new()));
}
