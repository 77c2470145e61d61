//! The checkpoint of a run: `<output>.partial`, an append-only file of finished items, fsynced
//! per batch, from which `--resume` continues.
//!
//! The first line records what produced the checkpoint ([`Settings`]: the data file's hash, the
//! model's identity, layout, context length, dtype, `--swap`, `--validate`, the calibration, the
//! batch limits); a resume with other settings is refused, naming what differs. Every other line
//! is `item,id,p_a,p_b,p_tie` and is validated when loaded (a known item with its own id, each
//! item once, a probability distribution), so a bad checkpoint fails before any judging, naming
//! the file and line. A torn last line (a kill mid-write) is dropped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::files::{parent_dir, sync_dir};
use crate::inputs::Inputs;
use crate::output::{validate, Prediction};

/// Suffix appended to the output path to name its checkpoint.
pub const CHECKPOINT_SUFFIX: &str = ".partial";

/// Key of the header line's object.
const HEADER_KEY: &str = "arena_judge_checkpoint";

/// The checkpoint path of an output file: `<output>.partial`.
pub fn checkpoint_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(CHECKPOINT_SUFFIX);
    PathBuf::from(s)
}

/// What produced a run's predictions, by name; two runs may share a checkpoint only when these
/// are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(pub BTreeMap<String, String>);

impl Settings {
    /// Adds one setting.
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.0.insert(name.to_string(), value.to_string());
        self
    }

    fn header(&self) -> String {
        serde_json::json!({ HEADER_KEY: 1, "settings": self.0 }).to_string()
    }

    fn parse(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get(HEADER_KEY)? == 1).then_some(())?;
        let map = v.get("settings")?.as_object()?;
        Some(Settings(
            map.iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect::<Option<_>>()?,
        ))
    }

    /// The settings that differ, as `name: ours vs theirs`.
    fn differences(&self, other: &Settings) -> Vec<String> {
        let none = String::from("(none)");
        let mut names: Vec<&String> = self.0.keys().chain(other.0.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| self.0.get(*n) != other.0.get(*n))
            .map(|n| {
                format!(
                    "{n}: {} now, {} in the checkpoint",
                    self.0.get(n).unwrap_or(&none),
                    other.0.get(n).unwrap_or(&none)
                )
            })
            .collect()
    }
}

/// One finished item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// The item ([`Inputs::items`]).
    pub item: usize,
    /// Its row's id and probabilities (A, B, tie, in the item's own order).
    pub prediction: Prediction,
}

/// What a checkpoint held when it was loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resumed {
    /// The finished items, in the order they were appended.
    pub results: Vec<ItemResult>,
    /// Bytes of an incomplete last line that were ignored (and are cut off when the checkpoint
    /// is opened again); 0 when the file ended cleanly.
    pub torn_bytes: usize,
    /// Whether the file exists.
    pub exists: bool,
}

/// Reads and validates a checkpoint without changing it. A missing file reads as empty.
///
/// # Errors
/// The file cannot be read; its header is missing or records other settings (the message lists
/// them); or a complete line is not `item,id,p_a,p_b,p_tie` for an item of `inputs` with that
/// id, is a duplicate, or is not a distribution (the message gives the file and line).
pub fn read_checkpoint(path: &Path, settings: &Settings, inputs: &Inputs) -> Result<Resumed> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Resumed::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..complete])
        .with_context(|| format!("checkpoint {} is not UTF-8", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let Some(theirs) = Settings::parse(header) else {
        bail!(
            "{} is not an arena_judge checkpoint (no settings line); delete it to start over",
            path.display()
        );
    };
    let diff = settings.differences(&theirs);
    ensure!(
        diff.is_empty(),
        "cannot resume from {}: it was written with other settings ({}); rerun with those, or \
         delete it to start over",
        path.display(),
        diff.join("; ")
    );
    let mut seen = vec![false; inputs.items()];
    let mut results = Vec::new();
    for (i, line) in lines.enumerate() {
        let at = || format!("checkpoint {} line {}", path.display(), i + 2);
        let r = parse_item(line).with_context(|| format!("{}: corrupt", at()))?;
        ensure!(
            r.item < inputs.items(),
            "{}: item {} is not an item of this run",
            at(),
            r.item
        );
        let (e, _) = inputs.item_entry(r.item);
        let entry = &inputs.entries[e];
        ensure!(
            entry.id == r.prediction.id && inputs.item_prompt(r.item).is_some(),
            "{}: item {} is id {}, but this run's item {} is id {}",
            at(),
            r.item,
            r.prediction.id,
            r.item,
            entry.id
        );
        ensure!(!seen[r.item], "{}: item {} appears twice", at(), r.item);
        seen[r.item] = true;
        validate(&r.prediction).with_context(at)?;
        results.push(r);
    }
    Ok(Resumed {
        results,
        torn_bytes: bytes.len() - complete,
        exists: true,
    })
}

fn format_item(r: &ItemResult) -> String {
    let p = &r.prediction;
    format!(
        "{},{},{},{},{}",
        r.item, p.id, p.probs[0], p.probs[1], p.probs[2]
    )
}

fn parse_item(line: &str) -> Result<ItemResult> {
    let f: Vec<&str> = line.split(',').collect();
    ensure!(f.len() == 5, "expected 5 comma-separated fields: {line:?}");
    let item = f[0]
        .parse()
        .with_context(|| format!("bad item {:?}", f[0]))?;
    let mut probs = [0.0; 3];
    for (p, v) in probs.iter_mut().zip(&f[2..]) {
        *p = v
            .parse()
            .with_context(|| format!("bad probability {v:?}"))?;
    }
    Ok(ItemResult {
        item,
        prediction: Prediction {
            id: f[1].to_string(),
            probs,
        },
    })
}

/// An append-only file of finished items, for resuming an interrupted run.
#[derive(Debug)]
pub struct Checkpoint {
    file: File,
    path: PathBuf,
}

impl Checkpoint {
    /// Starts a fresh checkpoint at `path` holding only the settings line, discarding any
    /// previous content.
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn create(path: &Path, settings: &Settings) -> Result<Checkpoint> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create checkpoint {}", path.display()))?;
        writeln!(file, "{}", settings.header())
            .and_then(|_| file.sync_all())
            .with_context(|| format!("cannot write checkpoint {}", path.display()))?;
        sync_dir(&parent_dir(path));
        Ok(Checkpoint {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Continues the checkpoint at `path` that [`read_checkpoint`] loaded as `resumed` (creates
    /// it when it did not exist): cuts off a torn last line so new lines start cleanly.
    ///
    /// # Errors
    /// The file cannot be opened or truncated.
    pub fn resume(path: &Path, settings: &Settings, resumed: &Resumed) -> Result<Checkpoint> {
        if !resumed.exists {
            return Self::create(path, settings);
        }
        let file = OpenOptions::new()
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
        Ok(Checkpoint {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one batch of results with a single write, then flushes and fsyncs, so after it
    /// returns the batch survives a kill or a crash.
    ///
    /// # Errors
    /// A prediction fails [`validate`] (nothing is written then), or an I/O error occurs.
    pub fn append(&mut self, results: &[ItemResult]) -> Result<()> {
        let mut buf = String::new();
        for r in results {
            validate(&r.prediction)?;
            buf.push_str(&format_item(r));
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

/// The probabilities of each item (A, B, tie in the item's own order); `None` until judged.
pub type Results = Vec<Option<[f64; 3]>>;

/// Loads what an earlier run left in the checkpoint of `out` (nothing is written here; the
/// checkpoint file is created or continued later, by [`Checkpoint::create`] or
/// [`Checkpoint::resume`], once the model has loaded).
///
/// # Errors
/// Without `resume`, a checkpoint holding work exists (it is never silently discarded). With
/// `resume`, as [`read_checkpoint`].
pub fn load(
    out: &Path,
    resume: bool,
    settings: &Settings,
    inputs: &Inputs,
) -> Result<(Resumed, Results)> {
    let path = checkpoint_path(out);
    let mut results = vec![None; inputs.items()];
    if !resume {
        ensure!(
            !path.exists(),
            "checkpoint {} exists from an interrupted run: pass --resume to continue it, or delete \
             it to start over",
            path.display()
        );
        return Ok((Resumed::default(), results));
    }
    if !path.exists() {
        eprintln!(
            "note: no checkpoint at {}: starting from the beginning",
            path.display()
        );
    }
    let resumed = read_checkpoint(&path, settings, inputs)?;
    if resumed.torn_bytes > 0 {
        eprintln!(
            "note: dropping the torn last line ({} bytes) of {}",
            resumed.torn_bytes,
            path.display()
        );
    }
    for r in &resumed.results {
        results[r.item] = Some(r.prediction.probs);
    }
    Ok((resumed, results))
}
