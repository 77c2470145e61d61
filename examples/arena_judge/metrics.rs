//! Scores: the three choice probabilities from their logits, the competition's log loss (as
//! scikit-learn's `log_loss`) and argmax accuracy.

use anyhow::{bail, ensure, Result};

use crate::inputs::Entry;
use crate::output::{Prediction, UNIFORM};

/// Result of [`softmax3`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChoiceProbs {
    /// Probabilities of (A, B, tie); they sum to 1.
    pub probs: [f64; 3],
    /// True when the logits gave no usable distribution (a NaN, +inf, or all -inf) and
    /// [`UNIFORM`] was used instead; callers count these.
    pub fallback: bool,
}

/// Numerically stable softmax of the three choice logits, computed in `f64`.
///
/// A `-inf` logit gets probability 0 as long as another logit is finite. Any NaN, a `+inf`, or
/// all logits `-inf` give [`UNIFORM`] with `fallback = true`.
pub fn softmax3(logits: [f32; 3]) -> ChoiceProbs {
    let x = logits.map(f64::from);
    let fallback = ChoiceProbs {
        probs: UNIFORM,
        fallback: true,
    };
    if x.iter().any(|v| v.is_nan()) {
        return fallback;
    }
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return fallback;
    }
    let e = x.map(|v| (v - max).exp());
    let sum: f64 = e.iter().sum();
    let probs = e.map(|v| v / sum);
    if probs.iter().any(|p| !p.is_finite()) {
        return fallback;
    }
    ChoiceProbs {
        probs,
        fallback: false,
    }
}

/// Index of the largest probability (the first one on ties), like NumPy's `argmax`.
pub fn argmax3(p: [f64; 3]) -> usize {
    let mut best = 0;
    for i in 1..3 {
        if p[i] > p[best] {
            best = i;
        }
    }
    best
}

/// Multi-class log loss, as scikit-learn (>= 1.5) `log_loss`: each probability is clipped to
/// `[eps, 1 - eps]` with `eps = f64::EPSILON` (no renormalisation), and the result is the mean of
/// `-ln p[label]`. Labels are class indices 0 = A, 1 = B, 2 = tie.
///
/// # Errors
/// The slices differ in length or are empty, or a label is not 0, 1 or 2.
pub fn log_loss(probs: &[[f64; 3]], labels: &[usize]) -> Result<f64> {
    check_pairs(probs, labels)?;
    let eps = f64::EPSILON;
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(p, &l)| -p[l].clamp(eps, 1.0 - eps).ln())
        .sum();
    Ok(total / probs.len() as f64)
}

/// Fraction of rows whose [`argmax3`] equals the label.
///
/// # Errors
/// As [`log_loss`].
pub fn accuracy(probs: &[[f64; 3]], labels: &[usize]) -> Result<f64> {
    check_pairs(probs, labels)?;
    let hits = probs
        .iter()
        .zip(labels)
        .filter(|(p, &l)| argmax3(**p) == l)
        .count();
    Ok(hits as f64 / probs.len() as f64)
}

fn check_pairs(probs: &[[f64; 3]], labels: &[usize]) -> Result<()> {
    ensure!(
        probs.len() == labels.len(),
        "{} predictions but {} labels",
        probs.len(),
        labels.len()
    );
    ensure!(!probs.is_empty(), "no labelled rows to score");
    if let Some(bad) = labels.iter().find(|&&l| l > 2) {
        bail!("label {bad} is not a class index (0 = A, 1 = B, 2 = tie)");
    }
    Ok(())
}

/// Log loss and accuracy over the labelled entries, with their count; `None` without labels.
///
/// # Errors
/// Only on internal inconsistencies (see [`log_loss`]).
pub fn score(entries: &[Entry], predictions: &[Prediction]) -> Result<Option<(f64, f64, usize)>> {
    let (probs, labels): (Vec<[f64; 3]>, Vec<usize>) = entries
        .iter()
        .zip(predictions)
        .filter_map(|(e, p)| e.label.map(|l| (p.probs, l)))
        .unzip();
    if labels.is_empty() {
        return Ok(None);
    }
    let loss = log_loss(&probs, &labels)?;
    let acc = accuracy(&probs, &labels)?;
    Ok(Some((loss, acc, labels.len())))
}
