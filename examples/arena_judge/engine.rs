//! Everything around arena_judge's engine loop (which lives in `main.rs`): reading and encoding
//! the rows, planning the batches, resuming from a checkpoint, metering, scoring, the summary,
//! and the generated checkpoints of the demo.
//!
//! The batch plan is a pure function of the encoded lengths and the two batch limits, so a
//! resumed run forms exactly the batches of the interrupted one and writes the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use tokenizers::Tokenizer;

use crate::checkpoint::{write_checkpoint, Preset};
use crate::data::{read_arena_csv, Format, Row};
use crate::output::{self, Checkpoint, Prediction};
use crate::prompt::{EncodedPrompt, PromptEncoder};

/// Preset of the demo's generated checkpoint.
pub const DEMO_PRESET: &str = "tiny";
/// Seed of the demo's generated checkpoint.
pub const DEMO_SEED: u64 = 20_240_501;
/// Written last into a generated demo checkpoint; its content says what was generated.
const DEMO_STAMP: &str = "arena_judge_demo.stamp";

/// The crate root (where `assets/`, `target/` and the bundled data live).
pub fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Qwen2.5 tokenizer fetched by `scripts/setup.sh`.
pub fn default_tokenizer() -> PathBuf {
    crate_root().join("assets/qwen2.5/tokenizer.json")
}

/// The bundled labelled rows the demo judges.
pub fn demo_data() -> PathBuf {
    crate_root().join("examples/arena_judge/data/train_first100.csv")
}

/// One line of the submission, in input order.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The row id.
    pub id: u64,
    /// The label as a class index (0 = A, 1 = B, 2 = tie), for train-layout rows.
    pub label: Option<usize>,
    /// The prompt's token ids; `None` for a malformed row, which is predicted uniform.
    pub prompt: Option<Arc<[u32]>>,
}

/// The rows of one input file, ready for the model.
#[derive(Debug)]
pub struct Inputs {
    /// The submission's rows, in input order.
    pub entries: Vec<Entry>,
    /// Rows that could not be used: predicted uniform, or left out when even the id is unusable
    /// (or, with `--validate`, when the label is).
    pub malformed: usize,
    /// Prompts cut to fit `--max-model-len`.
    pub truncated: usize,
}

/// Reads `path`, keeps the first `validate` labelled rows when asked, and encodes every usable
/// row. Each malformed row is reported on stderr with its file, row and id.
///
/// # Errors
/// The file cannot be read or lacks columns, `--validate` is given for an unlabelled file, or
/// nothing is left to judge.
pub fn load_inputs(
    path: &Path,
    validate: Option<usize>,
    encoder: &PromptEncoder,
) -> Result<Inputs> {
    let csv = read_arena_csv(path)?;
    if validate.is_some() && csv.format != Format::Train {
        bail!(
            "--validate needs labels, but {} is in the test layout (no winner_* columns)",
            path.display()
        );
    }
    let mut malformed = 0;
    let mut kept: Vec<(u64, Option<usize>, Option<&Row>)> = Vec::new();
    for row in &csv.rows {
        if validate.is_some_and(|n| kept.len() >= n) {
            break;
        }
        match row {
            Ok(r) => kept.push((r.id, r.label.map(|l| l.index()), Some(r))),
            Err(e) => {
                malformed += 1;
                match e.id {
                    Some(id) if validate.is_none() => {
                        eprintln!("warning: {e}; predicting uniform");
                        kept.push((id, None, None));
                    }
                    _ => eprintln!("warning: {e}; left out of the submission"),
                }
            }
        }
    }
    if let Some(n) = validate.filter(|&n| kept.len() < n) {
        eprintln!(
            "note: --validate {n}: {} has only {} usable labelled rows",
            path.display(),
            kept.len()
        );
    }
    ensure!(
        !kept.is_empty(),
        "{}: no usable rows to judge",
        path.display()
    );

    let rows: Vec<&Row> = kept.iter().filter_map(|k| k.2).collect();
    let mut encoded = encode_all(encoder, &rows).into_iter();
    let mut truncated = 0;
    let mut entries = Vec::with_capacity(kept.len());
    for (id, label, row) in kept {
        let prompt = match row.map(|_| encoded.next().expect("one encoding per row")) {
            None => None,
            Some(Ok(p)) => {
                truncated += usize::from(p.truncated);
                Some(Arc::from(p.ids))
            }
            Some(Err(e)) => {
                malformed += 1;
                eprintln!(
                    "warning: {}: id {id}: cannot encode the prompt: {e:#}; predicting uniform",
                    path.display()
                );
                None
            }
        };
        entries.push(Entry { id, label, prompt });
    }
    Ok(Inputs {
        entries,
        malformed,
        truncated,
    })
}

/// Encodes `rows` on every available core, keeping their order.
fn encode_all(encoder: &PromptEncoder, rows: &[&Row]) -> Vec<Result<EncodedPrompt>> {
    if rows.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|r| encoder.encode(&r.prompt, &r.response_a, &r.response_b))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("an encoder thread panicked"))
            .collect()
    })
}

/// One forward pass worth of rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Indices into [`Inputs::entries`], shortest prompt first.
    pub entries: Vec<usize>,
    /// Tokens of the longest prompt (every row is padded to it).
    pub longest: usize,
    /// Real (unpadded) tokens of all rows.
    pub tokens: usize,
}

impl Batch {
    /// Tokens after padding: rows × longest.
    pub fn padded(&self) -> usize {
        self.entries.len() * self.longest
    }
}

/// Packs the encoded entries into batches: sorted by token length (ties by input position, so
/// the plan is deterministic), each batch as large as `token_budget` padded tokens and
/// `max_rows` rows allow. A prompt longer than the budget gets a batch of its own.
pub fn plan_batches(entries: &[Entry], token_budget: usize, max_rows: usize) -> Vec<Batch> {
    let mut order: Vec<(usize, usize)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.prompt.as_ref().map(|p| (p.len(), i)))
        .collect();
    order.sort_unstable();
    let mut batches = Vec::new();
    let mut current = Batch::default();
    for (len, i) in order {
        let n = current.entries.len();
        let fits = n < max_rows && (n + 1) * len <= token_budget;
        if n > 0 && !fits {
            batches.push(std::mem::take(&mut current));
        }
        current.entries.push(i);
        current.longest = len; // ascending order: the newest row is the longest
        current.tokens += len;
    }
    if !current.entries.is_empty() {
        batches.push(current);
    }
    batches
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
    let path = output::checkpoint_path(out);
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
                None => output::UNIFORM,
                Some(_) => r.expect("every judged row has a prediction"),
            },
        })
        .collect()
}

/// Progress bar and counters of the rows judged by this process.
#[derive(Debug)]
pub struct Meter {
    bar: ProgressBar,
    start: Instant,
    /// Rows run through the model.
    pub rows: usize,
    /// Rows whose predictions are new (a batch that an interrupted run checkpointed only in
    /// part is run again whole, but only its missing rows are new).
    pub judged: usize,
    /// Real prompt tokens judged.
    pub tokens: usize,
    /// Padded tokens run through the model.
    pub padded: usize,
    /// Rows whose probabilities were not finite and fell back to uniform.
    pub fallbacks: usize,
}

impl Meter {
    /// A meter for `total` rows (shown only when stderr is a terminal).
    pub fn new(total: usize) -> Self {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} {wide_bar} {pos}/{len} rows {per_sec} {msg} eta {eta}",
            )
            .expect("valid template"),
        );
        Self {
            bar,
            start: Instant::now(),
            rows: 0,
            judged: 0,
            tokens: 0,
            padded: 0,
            fallbacks: 0,
        }
    }

    /// Records a finished batch, of which `new` rows had no prediction yet.
    pub fn record(&mut self, batch: &Batch, new: usize, fallbacks: usize) {
        self.rows += batch.entries.len();
        self.judged += new;
        self.tokens += batch.tokens;
        self.padded += batch.padded();
        self.fallbacks += fallbacks;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar
            .set_message(format!("{:.0} tokens/s", self.tokens as f64 / secs));
        self.bar.inc(batch.entries.len() as u64);
    }

    /// Removes the bar; returns the time since [`Meter::new`].
    pub fn finish(&self) -> Duration {
        self.bar.finish_and_clear();
        self.start.elapsed()
    }
}

/// Log loss and accuracy over the labelled entries, with their count; `None` without labels.
///
/// # Errors
/// Only on internal inconsistencies (see [`output::log_loss`]).
pub fn score(entries: &[Entry], predictions: &[Prediction]) -> Result<Option<(f64, f64, usize)>> {
    let (probs, labels): (Vec<[f64; 3]>, Vec<usize>) = entries
        .iter()
        .zip(predictions)
        .filter_map(|(e, p)| e.label.map(|l| (p.probs, l)))
        .unzip();
    if labels.is_empty() {
        return Ok(None);
    }
    let loss = output::log_loss(&probs, &labels)?;
    let acc = output::accuracy(&probs, &labels)?;
    Ok(Some((loss, acc, labels.len())))
}

/// Parses `--dtype`: `f16`, `bf16` or `f32`.
///
/// # Errors
/// Any other name.
pub fn parse_dtype(name: &str) -> std::result::Result<DType, String> {
    match name {
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        "f32" => Ok(DType::F32),
        other => Err(format!("{other:?} is not one of f16, bf16, f32")),
    }
}

/// The device (CUDA device 0 when available, unless `cpu`) and the compute dtype (`dtype`, else
/// f16 on CUDA and f32 on the CPU).
///
/// # Errors
/// CUDA is compiled in but fails to initialise.
pub fn device_and_dtype(cpu: bool, dtype: Option<DType>) -> Result<(Device, DType)> {
    let device = if cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0)?
    };
    let default = if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    };
    Ok((device, dtype.unwrap_or(default)))
}

/// Writes a generated checkpoint of `preset` into `dir` and copies `tokenizer` next to it.
///
/// # Errors
/// Unknown preset, a missing tokenizer (the message points at `scripts/setup.sh`), or I/O.
pub fn write_model_dir(dir: &Path, preset: &str, seed: u64, tokenizer: &Path) -> Result<()> {
    let preset = Preset::by_name(preset)?;
    ensure!(
        tokenizer.is_file(),
        "tokenizer {} not found: run `bash scripts/setup.sh` to fetch the Qwen2.5 tokenizer",
        tokenizer.display()
    );
    write_checkpoint(dir, &preset, seed)?;
    let dest = dir.join("tokenizer.json");
    std::fs::copy(tokenizer, &dest)
        .with_context(|| format!("cannot copy {} to {}", tokenizer.display(), dest.display()))?;
    Ok(())
}

/// The model directory to judge with, and the context length to use: `max_model_len` capped to
/// the model's positions. The directory is `model`, or the demo's generated random-weights
/// checkpoint (announced as such) when it is `None`.
///
/// # Errors
/// The directory does not exist, its config is missing or not Qwen2 (the message names the
/// file), or the demo checkpoint cannot be generated.
pub fn model_dir(model: Option<&Path>, max_model_len: usize) -> Result<(PathBuf, usize)> {
    let dir = match model {
        Some(dir) => dir.to_path_buf(),
        None => {
            println!(
                "demo: the model has RANDOM weights: the numbers only show that the pipeline works"
            );
            prepare_demo_model()?
        }
    };
    ensure!(
        dir.is_dir(),
        "model directory {} does not exist",
        dir.display()
    );
    // Read now, so that a checkpoint that is not Qwen2 fails before the slow encoding and load.
    let config = crate::model::Config::from_file(&dir.join("config.json"))?;
    let positions = config.max_position_embeddings;
    if max_model_len > positions {
        eprintln!(
            "note: --max-model-len {max_model_len} capped to the model's {positions} positions"
        );
    }
    Ok((dir, max_model_len.min(positions)))
}

/// The tokenizer: `explicit` when given, else `tokenizer.json` in the model directory.
///
/// # Errors
/// The file is missing or not a tokenizer (the message names it).
pub fn tokenizer(model_dir: &Path, explicit: Option<&Path>) -> Result<Tokenizer> {
    let path = explicit.map_or_else(|| model_dir.join("tokenizer.json"), Path::to_path_buf);
    crate::prompt::load_tokenizer(&path).with_context(|| {
        format!(
            "no tokenizer for {} (or pass --tokenizer PATH)",
            model_dir.display()
        )
    })
}

/// The demo's model directory, `target/arena_judge_demo/`: reused when a complete one is
/// there, else generated (the `tiny` preset, seeded, with the tokenizer copy) into a temporary
/// directory that is renamed into place, so an interrupted generation is never reused.
///
/// # Errors
/// As [`write_model_dir`].
pub fn prepare_demo_model() -> Result<PathBuf> {
    let target = crate_root().join("target");
    let dir = target.join("arena_judge_demo");
    let stamp = format!("preset={DEMO_PRESET} seed={DEMO_SEED}\n");
    if std::fs::read_to_string(dir.join(DEMO_STAMP)).is_ok_and(|s| s == stamp) {
        println!(
            "demo: reusing the generated checkpoint in {}",
            dir.display()
        );
        return Ok(dir);
    }
    println!(
        "demo: generating a `{DEMO_PRESET}` checkpoint (seed {DEMO_SEED}) in {}",
        dir.display()
    );
    let tmp = target.join(format!(".arena_judge_demo.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_model_dir(&tmp, DEMO_PRESET, DEMO_SEED, &default_tokenizer())?;
    let stamp_path = tmp.join(DEMO_STAMP);
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the stale {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    Ok(dir)
}

/// What the final summary reports.
#[derive(Debug)]
pub struct Summary<'a> {
    /// The written submission.
    pub out: &'a Path,
    /// Rows in the submission (malformed ones included).
    pub rows: usize,
    /// Rows taken from the checkpoint of an earlier run.
    pub resumed: usize,
    /// Malformed rows.
    pub malformed: usize,
    /// Truncated prompts and the context they were cut to.
    pub truncated: (usize, usize),
    /// The meter of this run's batches.
    pub meter: &'a Meter,
    /// Seconds spent judging (forward passes and all) in this run.
    pub seconds: f64,
    /// Log loss, accuracy and labelled rows, when the data has labels.
    pub score: Option<(f64, f64, usize)>,
}

impl Summary<'_> {
    /// Prints the summary on stdout.
    pub fn print(&self) {
        let m = self.meter;
        let secs = self.seconds.max(1e-9);
        println!("summary");
        println!(
            "  rows         {} in the submission ({} judged now, {} from the checkpoint)",
            self.rows, m.judged, self.resumed
        );
        println!("  tokens       {} real, {} padded", m.tokens, m.padded);
        println!(
            "  time         {:.2} s, {:.1} rows/s, {:.0} tokens/s",
            self.seconds,
            m.rows as f64 / secs,
            m.tokens as f64 / secs
        );
        println!(
            "  truncated    {} rows (to --max-model-len {})",
            self.truncated.0, self.truncated.1
        );
        println!("  malformed    {} rows", self.malformed);
        println!("  non-finite   {} rows fell back to uniform", m.fallbacks);
        if let Some((loss, acc, n)) = self.score {
            println!("  log loss     {loss:.6} ({n} labelled rows)");
            println!("  accuracy     {acc:.4}");
        }
        println!("  submission   {}", self.out.display());
    }
}
