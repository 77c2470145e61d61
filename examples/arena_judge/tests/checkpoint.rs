//! The checkpoint file: settings line, appends, resuming past a torn last line, and every kind of
//! bad line refused at load, naming the file and line.

use std::io::Write;
use std::sync::Arc;

use crate::checkpoint::{
    checkpoint_path, read_checkpoint, Checkpoint, ItemResult, Resumed, Settings,
};
use crate::inputs::{Entry, Inputs};
use crate::output::Prediction;

/// Four judged rows, ids as a file may hold them (`007` is not `7`).
fn inputs() -> Inputs {
    let entry = |id: &str| Entry {
        id: id.to_string(),
        label: None,
        prompt: Some(Arc::from(vec![1u32, 2, 3])),
        swapped: None,
        truncated: false,
        response_chars: [1, 1],
    };
    Inputs {
        entries: vec![entry("007"), entry("7"), entry("5000000000"), entry("a-b")],
        swap: false,
        malformed: 0,
        truncated: 0,
    }
}

fn result(inputs: &Inputs, item: usize, probs: [f64; 3]) -> ItemResult {
    ItemResult {
        item,
        prediction: Prediction {
            id: inputs.entries[item].id.clone(),
            probs,
        },
    }
}

fn settings() -> Settings {
    Settings::default()
        .with("data", "abc")
        .with("max_model_len", 512)
}

#[test]
fn checkpoint_resume_tolerates_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint_path(&dir.path().join("submission.csv"));
    let inputs = inputs();
    let rows = [
        result(&inputs, 0, [0.5, 0.25, 0.25]),
        result(&inputs, 1, [0.1, 0.2, 0.7000000000000001]),
        result(&inputs, 2, [1.0 / 3.0; 3]),
    ];
    let mut cp = Checkpoint::create(&path, &settings()).unwrap();
    cp.append(&rows[..2]).unwrap();
    cp.append(&rows[2..]).unwrap();
    drop(cp);
    // A kill in the middle of the next write leaves half a line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"3,a-b,0.2,0.")
        .unwrap();

    let resumed = read_checkpoint(&path, &settings(), &inputs).unwrap();
    assert_eq!(
        resumed.results,
        rows.to_vec(),
        "every complete line, exactly"
    );
    assert_eq!(resumed.torn_bytes, 12);
    let mut cp = Checkpoint::resume(&path, &settings(), &resumed).unwrap();
    let last = result(&inputs, 3, [0.2, 0.3, 0.5]);
    cp.append(std::slice::from_ref(&last)).unwrap();
    drop(cp);
    let again = read_checkpoint(&path, &settings(), &inputs).unwrap();
    assert_eq!(
        again.torn_bytes, 0,
        "the torn line was cut before appending"
    );
    assert_eq!(again.results.len(), 4);
    assert_eq!(again.results[3], last);
    cp_remove(&path);
}

fn cp_remove(path: &std::path::Path) {
    let resumed = Resumed {
        exists: true,
        ..Resumed::default()
    };
    Checkpoint::resume(path, &settings(), &resumed)
        .unwrap()
        .remove()
        .unwrap();
    assert!(!path.exists());
}

#[test]
fn other_settings_are_refused_naming_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.partial");
    let inputs = inputs();
    Checkpoint::create(&path, &settings()).unwrap();
    let other = settings().with("max_model_len", 8192).with("swap", true);
    let err = format!("{:#}", read_checkpoint(&path, &other, &inputs).unwrap_err());
    assert!(
        err.contains("max_model_len: 8192 now, 512 in the checkpoint"),
        "{err}"
    );
    assert!(err.contains("swap: true now, (none)"), "{err}");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    // A file without the settings line is not a checkpoint of ours.
    std::fs::write(&path, "0,007,0.5,0.25,0.25\n").unwrap();
    let err = format!(
        "{:#}",
        read_checkpoint(&path, &settings(), &inputs).unwrap_err()
    );
    assert!(err.contains("not an arena_judge checkpoint"), "{err}");
}

#[test]
fn bad_lines_are_refused_at_load_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.partial");
    let inputs = inputs();
    let header = {
        Checkpoint::create(&path, &settings()).unwrap();
        std::fs::read_to_string(&path).unwrap()
    };
    let cases = [
        ("0,007,1.5,-0.25,-0.25\n", "not a probability distribution"),
        ("0,007,NaN,0.5,0.5\n", "not a probability distribution"),
        (
            "0,007,0.5,0.25,0.25\n0,007,0.5,0.25,0.25\n",
            "appears twice",
        ),
        ("0,7,0.5,0.25,0.25\n", "this run's item 0 is id 007"),
        ("9,007,0.5,0.25,0.25\n", "not an item of this run"),
        ("0,007,0.5,0.25\n", "corrupt"),
    ];
    for (lines, expected) in cases {
        std::fs::write(&path, format!("{header}{lines}")).unwrap();
        let err = format!(
            "{:#}",
            read_checkpoint(&path, &settings(), &inputs).unwrap_err()
        );
        assert!(err.contains(expected), "{lines:?}: {err}");
        assert!(err.contains(&format!("{} line ", path.display())), "{err}");
    }
}
