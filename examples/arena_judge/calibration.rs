//! Calibration of the judge's probabilities: `--calibrate OUT.json` fits it on labelled rows and
//! reports its k-fold cross-validated log loss; `--calibration FILE` applies a fit to new rows.
//!
//! The calibrated logits are `z_c = s·ln p_c + b_c (+ w·f for A, − w·f for B)`, softmaxed: `s` a
//! temperature (1/T), `b` a class bias (`b_tie = 0`), and optionally `w` the weight of one cheap
//! feature, `f = ln((chars_A + 1) / (chars_B + 1))` (longer answers win more often in the arena).
//! The mean log loss is convex in these parameters; it is minimised by gradient descent with
//! backtracking, with a small ridge penalty pulling toward `s = w = b = 0`, which is uniform.
//!
//! Which features to use is decided on held-out folds: the model alone, or the model and the
//! length feature, whichever has the lower cross-validated log loss. If neither beats uniform on
//! held-out folds, the written calibration is uniform itself (all zero), so a calibrated run is
//! never worse than uniform as far as cross-validation can tell.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::files::write_atomically;
use crate::inputs::Entry;
use crate::metrics::{accuracy, log_loss};

/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// Ridge penalty per parameter (on the mean log loss).
const RIDGE: f64 = 1e-3;
/// Smallest probability fed to `ln` (a 0 from the model would be `-inf`).
const FLOOR: f64 = 1e-12;

/// Which inputs a calibration uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Features {
    /// The model's log-probabilities.
    Model,
    /// The model's log-probabilities and the response-length feature.
    ModelAndLength,
    /// The response-length feature alone (a baseline that ignores the model).
    LengthOnly,
    /// Nothing: uniform.
    Uniform,
}

/// A fitted calibration (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The inputs used.
    pub features: Features,
    /// `s`, the scale of the log-probabilities (1 / temperature).
    pub scale: f64,
    /// `w`, the weight of the length feature.
    pub length_weight: f64,
    /// `b`, the class biases (A, B, tie; tie is 0).
    pub bias: [f64; 3],
}

/// One row as the calibration sees it: the judge's probabilities and the length feature.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The judge's probabilities (A, B, tie).
    pub probs: [f64; 3],
    /// `ln((chars_A + 1) / (chars_B + 1))`.
    pub length: f64,
}

impl Sample {
    /// The sample of an entry with probabilities `probs`.
    pub fn new(entry: &Entry, probs: [f64; 3]) -> Self {
        let [a, b] = entry.response_chars;
        Self {
            probs,
            length: ((a as f64 + 1.0) / (b as f64 + 1.0)).ln(),
        }
    }
}

/// What `--calibrate` writes: the fit and how it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fit {
    /// The calibration to apply.
    pub calibration: Calibration,
    /// Labelled rows it was fitted on.
    pub rows: usize,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// Log loss of the judge's own probabilities.
    pub raw_log_loss: f64,
    /// Cross-validated log loss and accuracy of each candidate (features, log loss, accuracy).
    pub cv: Vec<(Features, f64, f64)>,
    /// Accuracy of the judge's own probabilities.
    pub raw_accuracy: f64,
    /// Log loss of uniform predictions (ln 3).
    pub uniform_log_loss: f64,
    /// What the probabilities came from (model, `--swap`, …), for the record.
    pub source: String,
}

impl Calibration {
    /// Uniform: every row gets (1/3, 1/3, 1/3).
    pub fn uniform() -> Self {
        Self {
            features: Features::Uniform,
            scale: 0.0,
            length_weight: 0.0,
            bias: [0.0; 3],
        }
    }

    /// The calibrated probabilities of one row.
    pub fn apply(&self, s: &Sample) -> [f64; 3] {
        let lp = s.probs.map(|p| p.max(FLOOR).ln());
        let f = self.length_weight * s.length;
        let z = [
            self.scale * lp[0] + f + self.bias[0],
            self.scale * lp[1] - f + self.bias[1],
            self.scale * lp[2] + self.bias[2],
        ];
        softmax(z)
    }

    /// Fits a calibration with `features` to `samples` and their `labels` (0 = A, 1 = B,
    /// 2 = tie).
    pub fn fit(features: Features, samples: &[Sample], labels: &[usize]) -> Self {
        // θ = [s, w, b_A, b_B]; which of them are free.
        let free = match features {
            Features::Model => [true, false, true, true],
            Features::ModelAndLength => [true, true, true, true],
            Features::LengthOnly => [false, true, true, true],
            Features::Uniform => return Self::uniform(),
        };
        let make = |t: &[f64; 4]| Calibration {
            features,
            scale: t[0],
            length_weight: t[1],
            bias: [t[2], t[3], 0.0],
        };
        let objective = |t: &[f64; 4]| -> f64 {
            let c = make(t);
            let n = samples.len() as f64;
            let nll: f64 = samples
                .iter()
                .zip(labels)
                .map(|(s, &l)| -c.apply(s)[l].max(f64::MIN_POSITIVE).ln())
                .sum::<f64>()
                / n;
            nll + RIDGE * t.iter().map(|v| v * v).sum::<f64>()
        };
        let gradient = |t: &[f64; 4]| -> [f64; 4] {
            let c = make(t);
            let n = samples.len() as f64;
            let mut g = [0.0; 4];
            for (s, &l) in samples.iter().zip(labels) {
                let p = c.apply(s);
                let lp = s.probs.map(|p| p.max(FLOOR).ln());
                for k in 0..3 {
                    let d = p[k] - f64::from(u8::from(k == l));
                    g[0] += d * lp[k];
                    g[1] += d * [s.length, -s.length, 0.0][k];
                    if k < 2 {
                        g[2 + k] += d;
                    }
                }
            }
            let mut out = [0.0; 4];
            for i in 0..4 {
                out[i] = if free[i] {
                    g[i] / n + 2.0 * RIDGE * t[i]
                } else {
                    0.0
                };
            }
            out
        };
        let mut t = [0.0; 4];
        let mut value = objective(&t);
        let mut step = 1.0;
        for _ in 0..2000 {
            let g = gradient(&t);
            let norm2: f64 = g.iter().map(|v| v * v).sum();
            if norm2 < 1e-18 {
                break;
            }
            // Backtracking: halve the step until the objective drops enough (Armijo).
            loop {
                let next: [f64; 4] = std::array::from_fn(|i| t[i] - step * g[i]);
                let v = objective(&next);
                if v <= value - 0.5 * step * norm2 {
                    t = next;
                    value = v;
                    step *= 2.0;
                    break;
                }
                step *= 0.5;
                if step < 1e-12 {
                    return make(&t);
                }
            }
        }
        make(&t)
    }
}

fn softmax(z: [f64; 3]) -> [f64; 3] {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = z.map(|v| (v - m).exp());
    let sum: f64 = e.iter().sum();
    e.map(|v| v / sum)
}

/// The mean held-out log loss and accuracy of fitting `features` on `k - 1` folds and scoring
/// the left-out one, over all `k` folds (row `i` is in fold `i mod k`).
///
/// # Errors
/// Fewer rows than folds.
pub fn cross_validate(
    features: Features,
    samples: &[Sample],
    labels: &[usize],
    k: usize,
) -> Result<(f64, f64)> {
    ensure!(
        samples.len() >= k,
        "cross-validation needs at least {k} labelled rows, got {}",
        samples.len()
    );
    let (mut total, mut hits) = (0.0, 0.0);
    for fold in 0..k {
        let (mut train_s, mut train_l, mut test_s, mut test_l) = (vec![], vec![], vec![], vec![]);
        for (i, (s, &l)) in samples.iter().zip(labels).enumerate() {
            if i % k == fold {
                test_s.push(*s);
                test_l.push(l);
            } else {
                train_s.push(*s);
                train_l.push(l);
            }
        }
        let c = Calibration::fit(features, &train_s, &train_l);
        let probs: Vec<[f64; 3]> = test_s.iter().map(|s| c.apply(s)).collect();
        total += log_loss(&probs, &test_l)? * test_s.len() as f64;
        hits += accuracy(&probs, &test_l)? * test_s.len() as f64;
    }
    let n = samples.len() as f64;
    Ok((total / n, hits / n))
}

/// Fits the calibration `--calibrate` writes: cross-validates the model alone and the model
/// with the length feature, keeps the better, falls back to uniform when neither beats it on
/// held-out folds, and refits the choice on all rows. `length_only` adds the length-only
/// baseline to the report.
///
/// # Errors
/// Fewer labelled rows than [`FOLDS`].
pub fn fit_with_cv(samples: &[Sample], labels: &[usize], source: String) -> Result<Fit> {
    let raw: Vec<[f64; 3]> = samples.iter().map(|s| s.probs).collect();
    let raw_log_loss = log_loss(&raw, labels)?;
    let raw_accuracy = accuracy(&raw, labels)?;
    let uniform_log_loss = 3f64.ln();
    let mut cv = Vec::new();
    for f in [
        Features::Model,
        Features::ModelAndLength,
        Features::LengthOnly,
    ] {
        let (loss, acc) = cross_validate(f, samples, labels, FOLDS)?;
        cv.push((f, loss, acc));
    }
    let best = cv
        .iter()
        .filter(|(f, _, _)| *f != Features::LengthOnly)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("two candidates");
    let calibration = if best.1 < uniform_log_loss {
        Calibration::fit(best.0, samples, labels)
    } else {
        Calibration::uniform()
    };
    Ok(Fit {
        calibration,
        rows: samples.len(),
        folds: FOLDS,
        raw_log_loss,
        raw_accuracy,
        cv,
        uniform_log_loss,
        source,
    })
}

/// Writes a fit as pretty JSON, atomically.
///
/// # Errors
/// The file cannot be written.
pub fn save(path: &Path, fit: &Fit) -> Result<()> {
    let text = serde_json::to_string_pretty(fit)?;
    write_atomically(path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")?;
        Ok(())
    })
    .with_context(|| format!("cannot write calibration {}", path.display()))
}

/// Reads a fit written by `--calibrate`.
///
/// # Errors
/// The file cannot be read or is not such a fit (the message names it).
pub fn load(path: &Path) -> Result<Fit> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read calibration {}", path.display()))?;
    let fit: Fit = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a calibration written by --calibrate",
            path.display()
        )
    })?;
    let c = &fit.calibration;
    ensure!(
        [c.scale, c.length_weight, c.bias[0], c.bias[1], c.bias[2]]
            .iter()
            .all(|v| v.is_finite()),
        "calibration {} holds a non-finite parameter",
        path.display()
    );
    Ok(fit)
}
