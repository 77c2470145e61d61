//! The checkpoint file: appends, and resuming past a torn last line.

use std::collections::HashMap;
use std::io::Write;

use super::sample_predictions;
use crate::checkpoint::Checkpoint;
use crate::output::Prediction;

#[test]
fn checkpoint_resume_tolerates_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("submission.csv");
    let ckpt = crate::checkpoint::checkpoint_path(&out);
    assert_eq!(ckpt, dir.path().join("submission.csv.partial"));
    let preds = sample_predictions();

    // The uninterrupted run.
    let reference = dir.path().join("reference.csv");
    crate::output::write_submission(&reference, &preds).unwrap();

    // Interrupted run: two batches, then a kill in the middle of the third.
    let mut cp = Checkpoint::create(&ckpt).unwrap();
    cp.append(&preds[..2]).unwrap();
    cp.append(&preds[2..3]).unwrap();
    drop(cp);
    let torn = format!("{},0.33", preds[3].id);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&ckpt)
        .unwrap()
        .write_all(torn.as_bytes())
        .unwrap();

    let peek = crate::checkpoint::read_checkpoint(&ckpt).unwrap();
    assert_eq!(peek.predictions, preds[..3].to_vec());
    assert_eq!(peek.torn_bytes, torn.len());

    // Resume: the done rows are skipped, the torn tail is cut before appending.
    let (mut cp, resumed) = Checkpoint::resume(&ckpt).unwrap();
    assert_eq!(resumed.torn_bytes, torn.len());
    let done: HashMap<u64, [f64; 3]> = resumed
        .predictions
        .iter()
        .map(|p| (p.id, p.probs))
        .collect();
    assert_eq!(done.len(), 3);
    let todo: Vec<Prediction> = preds
        .iter()
        .filter(|p| !done.contains_key(&p.id))
        .copied()
        .collect();
    assert_eq!(todo, preds[3..].to_vec());
    cp.append(&todo).unwrap();
    let after = crate::checkpoint::read_checkpoint(&ckpt).unwrap();
    assert_eq!(after.torn_bytes, 0);
    assert_eq!(after.predictions, preds);

    // Final submission in input order, byte-identical to the uninterrupted run.
    let mut all: HashMap<u64, [f64; 3]> = done;
    all.extend(todo.iter().map(|p| (p.id, p.probs)));
    let merged: Vec<Prediction> = preds
        .iter()
        .map(|p| Prediction {
            id: p.id,
            probs: all[&p.id],
        })
        .collect();
    crate::output::write_submission(&out, &merged).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&reference).unwrap()
    );
    cp.remove().unwrap();
    assert!(!ckpt.exists());

    // Resuming without a checkpoint starts empty; a fresh create discards old content.
    let (cp, resumed) = Checkpoint::resume(&ckpt).unwrap();
    assert_eq!(resumed, crate::checkpoint::Resumed::default());
    cp.remove().unwrap();
    std::fs::write(&ckpt, "1,0.5,0.25,0.25\n").unwrap();
    let cp = Checkpoint::create(&ckpt).unwrap();
    assert_eq!(
        crate::checkpoint::read_checkpoint(&ckpt)
            .unwrap()
            .predictions,
        vec![]
    );
    cp.remove().unwrap();

    // A corrupt complete line is an error, not silently skipped.
    std::fs::write(&ckpt, "1,0.5,0.25,0.25\ngarbage\n2,1,0,0\n").unwrap();
    let err = format!(
        "{:#}",
        crate::checkpoint::read_checkpoint(&ckpt).unwrap_err()
    );
    assert!(err.contains("line 2"), "{err}");
}
