//! Turning logits into predictions, writing the submission, resuming, and scoring.
//!
//! - [`softmax3`]: probabilities of (A, B, tie) from the three choice logits.
//! - [`write_submission`]: `id,winner_model_a,winner_model_b,winner_tie`, written atomically
//!   (temp file in the same directory, fsync, rename) so a crash never leaves a half-written file.
//! - [`Checkpoint`]: an append-only `<output>.partial` file of finished predictions, fsynced per
//!   batch; on resume a torn last line (from a kill mid-write) is dropped.
//! - [`log_loss`] and [`accuracy`]: the competition metric (as scikit-learn's `log_loss`) and
//!   argmax accuracy.
//!
//! Probabilities are written with Rust's shortest round-trip formatting of `f64`, so reading a
//! line back gives the identical number and a resumed run writes a byte-identical submission.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

/// Header line of a submission file.
pub const SUBMISSION_HEADER: &str = "id,winner_model_a,winner_model_b,winner_tie";
/// The prediction used for rows that could not be scored.
pub const UNIFORM: [f64; 3] = [1.0 / 3.0; 3];
/// Suffix appended to the output path to name its checkpoint.
pub const CHECKPOINT_SUFFIX: &str = ".partial";
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
pub fn read_submission(path: &Path) -> anyhow::Result<Vec<Prediction>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
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

/// Replaces `path` with what `write` produces, atomically.
///
/// The content goes to a temporary file in the same directory (`.<name>.XXXXXX.tmp`), which is
/// flushed, fsynced and then renamed over `path`; the directory is fsynced afterwards (best
/// effort). If `write` or any step fails, the temporary file is removed and `path` keeps its
/// old content. The new file gets the old file's permissions, or `0644` on Unix.
///
/// # Errors
/// The error of `write`, or an I/O error creating, writing, syncing or renaming the file.
pub fn write_atomically<F>(path: &Path, write: F) -> anyhow::Result<()>
where
    F: FnOnce(&mut dyn Write) -> anyhow::Result<()>,
{
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w).with_context(|| format!("writing {} failed", path.display()))?;
        w.flush()
            .with_context(|| format!("writing {} failed", path.display()))?;
    }
    let permissions = match fs::metadata(path) {
        Ok(m) => Some(m.permissions()),
        Err(_) => default_permissions(),
    };
    if let Some(perm) = permissions {
        tmp.as_file()
            .set_permissions(perm)
            .with_context(|| format!("cannot set permissions of {}", tmp.path().display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename the temporary file to {}", path.display()))?;
    sync_dir(&dir);
    Ok(())
}

#[cfg(unix)]
fn default_permissions() -> Option<fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Some(fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn default_permissions() -> Option<fs::Permissions> {
    None
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs a directory so a rename or a new entry in it survives a crash. Best effort: some
/// platforms and file systems do not support it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The checkpoint path of an output file: `<output>.partial`.
pub fn checkpoint_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(CHECKPOINT_SUFFIX);
    PathBuf::from(s)
}

/// What a checkpoint held when it was loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resumed {
    /// The finished predictions, in the order they were appended.
    pub predictions: Vec<Prediction>,
    /// Bytes of an incomplete last line that were ignored (and cut off by
    /// [`Checkpoint::resume`]); 0 when the file ended cleanly.
    pub torn_bytes: usize,
}

/// Reads a checkpoint without changing it. A missing file reads as empty.
///
/// Every line ending in `\n` must parse; bytes after the last `\n` are a torn write and are
/// ignored (counted in [`Resumed::torn_bytes`]).
///
/// # Errors
/// The file cannot be read, or a complete line does not parse (the message gives the line).
pub fn read_checkpoint(path: &Path) -> anyhow::Result<Resumed> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Resumed::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..complete])
        .with_context(|| format!("checkpoint {} is not UTF-8", path.display()))?;
    let mut predictions = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        predictions.push(parse_line(line).with_context(|| {
            format!(
                "checkpoint {} line {} is corrupt; delete the file to start over",
                path.display(),
                i + 1
            )
        })?);
    }
    Ok(Resumed {
        predictions,
        torn_bytes: bytes.len() - complete,
    })
}

/// An append-only file of finished predictions, for resuming an interrupted run.
#[derive(Debug)]
pub struct Checkpoint {
    file: File,
    path: PathBuf,
}

impl Checkpoint {
    /// Starts a fresh checkpoint at `path`, discarding any previous content.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path) -> anyhow::Result<Checkpoint> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create checkpoint {}", path.display()))?;
        sync_dir(&parent_dir(path));
        Ok(Checkpoint {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens the checkpoint at `path` for resuming: loads its finished predictions (see
    /// [`read_checkpoint`]), cuts off a torn last line so new lines start cleanly, and appends
    /// from there. A missing file starts empty.
    ///
    /// # Errors
    /// As [`read_checkpoint`], or the file cannot be opened or truncated.
    pub fn resume(path: &Path) -> anyhow::Result<(Checkpoint, Resumed)> {
        let resumed = read_checkpoint(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
        if resumed.torn_bytes > 0 {
            let len = file
                .metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len();
            file.set_len(len - resumed.torn_bytes as u64)
                .with_context(|| format!("cannot cut the torn line of {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot fsync {}", path.display()))?;
        }
        sync_dir(&parent_dir(path));
        Ok((
            Checkpoint {
                file,
                path: path.to_path_buf(),
            },
            resumed,
        ))
    }

    /// The checkpoint's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one batch of predictions with a single write, then flushes and fsyncs, so after
    /// it returns the batch survives a kill or a crash.
    ///
    /// # Errors
    /// A prediction fails [`validate`] (nothing is written then), or an I/O error occurs.
    pub fn append(&mut self, predictions: &[Prediction]) -> anyhow::Result<()> {
        let mut buf = String::new();
        for p in predictions {
            validate(p)?;
            buf.push_str(&format_line(p));
            buf.push('\n');
        }
        self.file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.flush())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("cannot append to checkpoint {}", self.path.display()))
    }

    /// Deletes the checkpoint file (after the final submission was written). A file that is
    /// already gone is fine.
    ///
    /// # Errors
    /// The file exists but cannot be removed.
    pub fn remove(self) -> anyhow::Result<()> {
        let Checkpoint { file, path } = self;
        drop(file);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&parent_dir(&path));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
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
pub fn log_loss(probs: &[[f64; 3]], labels: &[usize]) -> anyhow::Result<f64> {
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
pub fn accuracy(probs: &[[f64; 3]], labels: &[usize]) -> anyhow::Result<f64> {
    check_pairs(probs, labels)?;
    let hits = probs
        .iter()
        .zip(labels)
        .filter(|(p, &l)| argmax3(**p) == l)
        .count();
    Ok(hits as f64 / probs.len() as f64)
}

fn check_pairs(probs: &[[f64; 3]], labels: &[usize]) -> anyhow::Result<()> {
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
