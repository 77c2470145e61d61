//! Atomic replacement: a failed write keeps the old file and leaves nothing behind.

use super::*;

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn atomic_write_keeps_old_file_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("submission.csv");
    crate::output::write_submission(&path, &sample_predictions()).unwrap();
    let before = std::fs::read(&path).unwrap();

    // Fail midway through writing.
    let err = crate::files::write_atomically(&path, |w| {
        writeln!(w, "{}", crate::output::SUBMISSION_HEADER)?;
        w.write_all(b"1,0.5,0.5")?;
        anyhow::bail!("simulated crash while writing")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("simulated crash"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), vec!["submission.csv"]);

    // Invalid probabilities are refused before anything is written.
    let bad = [Prediction {
        id: 1,
        probs: [f64::NAN, 0.5, 0.5],
    }];
    assert!(crate::output::write_submission(&path, &bad).is_err());
    let bad = [Prediction {
        id: 1,
        probs: [0.5, 0.5, 0.5],
    }];
    assert!(crate::output::write_submission(&path, &bad).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), vec!["submission.csv"]);

    // A successful rewrite replaces the content, still without leftovers.
    crate::output::write_submission(&path, &sample_predictions()[..1]).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), vec!["submission.csv"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
