//! The submission file: exact round trips.

use super::*;

#[test]
fn submission_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("submission.csv");
    let preds = sample_predictions();
    crate::output::write_submission(&path, &preds).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(crate::output::SUBMISSION_HEADER));
    assert!(text.contains("\n4294947231,") && text.contains("\n5000000000,"));
    assert!(
        !text.contains("e-") && !text.contains("E"),
        "exponent notation: {text}"
    );
    for line in lines {
        let sum: f64 = line
            .split(',')
            .skip(1)
            .map(|f| f.parse::<f64>().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-12, "{line}");
    }
    let back = crate::output::read_submission(&path).unwrap();
    assert_eq!(back, preds);
    for (a, b) in back.iter().zip(&preds) {
        for k in 0..3 {
            assert_eq!(a.probs[k].to_bits(), b.probs[k].to_bits());
        }
    }

    // Kaggle's sample submission reads too and matches test.csv's ids.
    let sample = crate::output::read_submission(&data_dir().join("sample_submission.csv")).unwrap();
    let ids: Vec<u64> = sample.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![136060, 211333, 1233961]);
    assert!(sample
        .iter()
        .all(|p| (p.probs[0] - 1.0 / 3.0).abs() < 1e-15));
}
