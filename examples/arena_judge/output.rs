//! The submission: one line per row, `id,winner_model_a,winner_model_b,winner_tie`, written
//! atomically (see [`crate::files::write_atomically`]) so a crash never leaves a half-written
//! file.
//!
//! Probabilities are written with Rust's shortest round-trip formatting of `f64`, so reading a
//! line back gives the identical number and a resumed run writes a byte-identical submission.

use std::path::Path;

use anyhow::{ensure, Context};

use crate::files::write_atomically;
use crate::inputs::Entry;

/// Header line of a submission file.
pub const SUBMISSION_HEADER: &str = "id,winner_model_a,winner_model_b,winner_tie";
/// The prediction used for rows that could not be scored.
pub const UNIFORM: [f64; 3] = [1.0 / 3.0; 3];
/// Largest deviation of a row's sum from 1 that [`write_submission`] accepts.
pub const SUM_TOLERANCE: f64 = 1e-6;

/// The prediction of one row, probabilities in column order (A, B, tie).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The row id.
    pub id: u64,
    /// P(A wins), P(B wins), P(tie).
    pub probs: [f64; 3],
}

/// One submission/checkpoint line (no newline): `id,pa,pb,pt`, the id as an integer and the
/// probabilities in shortest round-trip form.
pub fn format_line(p: &Prediction) -> String {
    format!("{},{},{},{}", p.id, p.probs[0], p.probs[1], p.probs[2])
}

/// Parses a line written by [`format_line`] (surrounding whitespace ignored).
///
/// # Errors
/// The line does not have four fields, the id is not an unsigned integer, or a probability is
/// not a number.
pub fn parse_line(line: &str) -> anyhow::Result<Prediction> {
    let fields: Vec<&str> = line.trim().split(',').collect();
    ensure!(
        fields.len() == 4,
        "expected 4 comma-separated fields, found {}: {line:?}",
        fields.len()
    );
    let id = fields[0]
        .parse::<u64>()
        .with_context(|| format!("bad id {:?} in {line:?}", fields[0]))?;
    let mut probs = [0.0; 3];
    for (p, f) in probs.iter_mut().zip(&fields[1..]) {
        *p = f
            .parse::<f64>()
            .with_context(|| format!("bad probability {f:?} in {line:?}"))?;
    }
    Ok(Prediction { id, probs })
}

/// Checks that a prediction is a probability distribution: finite, in [0, 1], summing to 1
/// within [`SUM_TOLERANCE`].
///
/// # Errors
/// A message naming the id and the bad values.
pub fn validate(p: &Prediction) -> anyhow::Result<()> {
    let ok_values = p
        .probs
        .iter()
        .all(|v| v.is_finite() && (0.0..=1.0).contains(v));
    let sum: f64 = p.probs.iter().sum();
    ensure!(
        ok_values && (sum - 1.0).abs() <= SUM_TOLERANCE,
        "id {}: {:?} is not a probability distribution (sum {sum})",
        p.id,
        p.probs
    );
    Ok(())
}

/// Writes a submission file atomically: header, then one line per prediction in the given
/// order.
///
/// # Errors
/// A prediction fails [`validate`] (nothing is written then), or an I/O error occurs; in every
/// error case an existing file at `path` is left untouched.
pub fn write_submission(path: &Path, predictions: &[Prediction]) -> anyhow::Result<()> {
    for p in predictions {
        validate(p).with_context(|| format!("refusing to write {}", path.display()))?;
    }
    write_atomically(path, |w| {
        writeln!(w, "{SUBMISSION_HEADER}")?;
        for p in predictions {
            writeln!(w, "{}", format_line(p))?;
        }
        Ok(())
    })
}

/// Reads a submission file written by [`write_submission`] (or Kaggle's sample submission).
///
/// # Errors
/// The file cannot be read, its header is not [`SUBMISSION_HEADER`], or a line does not parse
/// (the message gives the line number).
#[cfg(test)]
pub fn read_submission(path: &Path) -> anyhow::Result<Vec<Prediction>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("").trim_start_matches('\u{feff}');
    ensure!(
        header.trim() == SUBMISSION_HEADER,
        "{}: header is {header:?}, expected {SUBMISSION_HEADER:?}",
        path.display()
    );
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).with_context(|| format!("{}: line {}", path.display(), i + 2)))
        .collect()
}

/// The submission in input order: each judged entry's prediction, uniform for malformed ones.
///
/// # Panics
/// If a judged entry has no prediction (the run loop fills them all).
pub fn assemble(entries: &[Entry], results: &[Option<[f64; 3]>]) -> Vec<Prediction> {
    entries
        .iter()
        .zip(results)
        .map(|(e, r)| Prediction {
            id: e.id,
            probs: match e.prompt {
                None => UNIFORM,
                Some(_) => r.expect("every judged row has a prediction"),
            },
        })
        .collect()
}
