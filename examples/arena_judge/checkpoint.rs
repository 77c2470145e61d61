//! The checkpoint of a run: an append-only `<output>.partial` file of finished predictions,
//! fsynced per batch, from which `--resume` continues; on resume a torn last line (from a kill
//! mid-write) is dropped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::files::{parent_dir, sync_dir};
use crate::inputs::Entry;
use crate::output::{format_line, parse_line, validate, Prediction};

/// Suffix appended to the output path to name its checkpoint.
pub const CHECKPOINT_SUFFIX: &str = ".partial";

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
pub fn read_checkpoint(path: &Path) -> Result<Resumed> {
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
    pub fn create(path: &Path) -> Result<Checkpoint> {
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
    pub fn resume(path: &Path) -> Result<(Checkpoint, Resumed)> {
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

    /// Appends one batch of predictions with a single write, then flushes and fsyncs, so after
    /// it returns the batch survives a kill or a crash.
    ///
    /// # Errors
    /// A prediction fails [`validate`] (nothing is written then), or an I/O error occurs.
    pub fn append(&mut self, predictions: &[Prediction]) -> Result<()> {
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
    pub fn remove(self) -> Result<()> {
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

/// The probabilities of each entry (A, B, tie), by entry index; `None` until judged.
pub type Results = Vec<Option<[f64; 3]>>;

/// Opens the checkpoint of `out`: a fresh one, or with `resume` the existing one. Returns it
/// with the prediction of every entry it already holds (by entry index) and their count.
///
/// # Errors
/// Without `resume`, a non-empty checkpoint already exists (it is never silently discarded). With
/// `resume`, the data has duplicate ids, or the checkpoint is corrupt or holds an id that this
/// run does not judge (it was written for other data or another `--validate`).
pub fn open_checkpoint(
    out: &Path,
    resume: bool,
    data: &Path,
    entries: &[Entry],
) -> Result<(Checkpoint, Results, usize)> {
    let path = checkpoint_path(out);
    let mut results = vec![None; entries.len()];
    if !resume {
        // An empty one (a run that failed before its first batch) holds nothing to lose.
        let holds_work = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        ensure!(
            !holds_work,
            "checkpoint {} exists from an interrupted run: pass --resume to continue it, or delete \
             it to start over",
            path.display()
        );
        return Ok((Checkpoint::create(&path)?, results, 0));
    }
    let mut judged = HashMap::new();
    for (i, e) in entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.prompt.is_some())
    {
        ensure!(
            judged.insert(e.id, i).is_none(),
            "--resume needs unique ids, but {} has id {} twice",
            data.display(),
            e.id
        );
    }
    if !path.exists() {
        eprintln!(
            "note: no checkpoint at {}: starting from the beginning",
            path.display()
        );
    }
    let (checkpoint, resumed) = Checkpoint::resume(&path)?;
    if resumed.torn_bytes > 0 {
        eprintln!(
            "note: dropped the torn last line ({} bytes) of {}",
            resumed.torn_bytes,
            path.display()
        );
    }
    for p in resumed.predictions {
        let Some(&i) = judged.get(&p.id) else {
            bail!(
                "cannot resume from {}: it holds id {}, which is not among the rows this run \
                 judges from {} (was it written for other --data or --validate? delete it to \
                 start over)",
                path.display(),
                p.id,
                data.display()
            );
        };
        results[i] = Some(p.probs);
    }
    let n = results.iter().flatten().count();
    Ok((checkpoint, results, n))
}
