//! The rows of one input file, read, encoded and ready for the model: each becomes an
//! [`Entry`] of the submission, and one or two *items* (the row as given and, with `--swap`, with
//! its two responses exchanged) that the model judges.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::{read_arena_csv, Format, Row};
use crate::prompt::{EncodedPrompt, PromptEncoder};

/// One line of the submission, in input order.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The row id, exactly as in the file.
    pub id: String,
    /// The label as a class index (0 = A, 1 = B, 2 = tie), for train-layout rows.
    pub label: Option<usize>,
    /// The prompt's token ids; `None` for a malformed row, which is predicted uniform.
    pub prompt: Option<Arc<[u32]>>,
    /// With `--swap`: the ids of the prompt with response A and response B exchanged.
    pub swapped: Option<Arc<[u32]>>,
    /// Whether the prompt was cut to fit `--max-model-len`.
    pub truncated: bool,
    /// Response lengths in characters (A, B), a cheap feature for calibration.
    pub response_chars: [usize; 2],
}

/// The rows of one input file, ready for the model.
#[derive(Debug)]
pub struct Inputs {
    /// The submission's rows, in input order.
    pub entries: Vec<Entry>,
    /// Whether every row is judged in both orders.
    pub swap: bool,
    /// Rows whose text could not be used: predicted uniform (with `--validate`, rows whose label
    /// is unusable are left out instead, as they cannot be scored).
    pub malformed: usize,
    /// Prompts cut to fit `--max-model-len`.
    pub truncated: usize,
}

impl Inputs {
    /// Items the model judges: one per entry, two with `--swap` (item `i < n` is entry `i` as
    /// given, item `n + i` entry `i` swapped).
    pub fn items(&self) -> usize {
        self.entries.len() * if self.swap { 2 } else { 1 }
    }

    /// The entry of an item and whether it is the swapped order.
    pub fn item_entry(&self, item: usize) -> (usize, bool) {
        let n = self.entries.len();
        if item < n {
            (item, false)
        } else {
            (item - n, true)
        }
    }

    /// The token ids of an item; `None` for a malformed row.
    pub fn item_prompt(&self, item: usize) -> Option<&Arc<[u32]>> {
        let (e, swapped) = self.item_entry(item);
        let entry = &self.entries[e];
        if swapped {
            entry.swapped.as_ref()
        } else {
            entry.prompt.as_ref()
        }
    }
}

/// Reads `path`, keeps the first `validate` labelled rows when asked, and encodes every usable
/// row (twice with `swap`), showing progress. Each malformed row is reported on stderr with its
/// file, row and id.
///
/// # Errors
/// The file cannot be read or lacks columns, `--validate` is given for an unlabelled file, a row
/// has an unusable id or an id another row has (a submission needs each row's id once), or
/// nothing is left to judge.
pub fn load_inputs(
    path: &Path,
    validate: Option<usize>,
    encoder: &PromptEncoder,
    swap: bool,
) -> Result<Inputs> {
    let csv = read_arena_csv(path)?;
    if validate.is_some() && csv.format != Format::Train {
        bail!(
            "--validate needs labels, but {} is in the test layout (no winner_* columns)",
            path.display()
        );
    }
    let mut malformed = 0;
    let mut kept: Vec<(String, Option<usize>, Option<&Row>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, row) in csv.rows.iter().enumerate() {
        if validate.is_some_and(|n| kept.len() >= n) {
            break;
        }
        let id = match row {
            Ok(r) => &r.id,
            Err(e) => match &e.id {
                Some(id) => id,
                None => bail!("{e}; every row needs a usable id (fix the file)"),
            },
        };
        if let Some(first) = seen.insert(id.clone(), i + 1) {
            bail!(
                "{}: id {id} is on data rows {first} and {}; a submission needs each id once",
                path.display(),
                i + 1
            );
        }
        match row {
            Ok(r) => kept.push((r.id.clone(), r.label.map(|l| l.index()), Some(r))),
            Err(e) => {
                malformed += 1;
                if validate.is_none() {
                    eprintln!("warning: {e}; predicting uniform");
                    kept.push((id.clone(), None, None));
                } else {
                    eprintln!("warning: {e}; not scored");
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
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} {wide_bar} {pos}/{len} rows tokenized")
            .expect("valid template"),
    );
    let mut encoded = encode_all(encoder, &rows, swap, &bar).into_iter();
    bar.finish_and_clear();
    let mut truncated = 0;
    let mut entries = Vec::with_capacity(kept.len());
    for (id, label, row) in kept {
        let chars = row.map_or([0, 0], |r| {
            let len = |t: &[Option<String>]| t.iter().flatten().map(|s| s.chars().count()).sum();
            [len(&r.response_a), len(&r.response_b)]
        });
        let mut entry = Entry {
            id,
            label,
            prompt: None,
            swapped: None,
            truncated: false,
            response_chars: chars,
        };
        if row.is_some() {
            let (given, exchanged) = encoded.next().expect("one encoding per row");
            match (given, exchanged.transpose()) {
                (Ok(p), Ok(q)) => {
                    entry.truncated = p.truncated || q.as_ref().is_some_and(|q| q.truncated);
                    truncated += usize::from(entry.truncated);
                    entry.prompt = Some(Arc::from(p.ids));
                    entry.swapped = q.map(|q| Arc::from(q.ids));
                }
                (Err(e), _) | (_, Err(e)) => {
                    malformed += 1;
                    eprintln!(
                        "warning: {}: id {}: cannot encode the prompt: {e:#}; predicting uniform",
                        path.display(),
                        entry.id
                    );
                }
            }
        }
        entries.push(entry);
    }
    Ok(Inputs {
        entries,
        swap,
        malformed,
        truncated,
    })
}

/// An encoded row: as given, and with `swap` with its responses exchanged.
pub type Encoded = (Result<EncodedPrompt>, Option<Result<EncodedPrompt>>);

/// Encodes `rows` on every available core, keeping their order, advancing `bar` by one per row
/// (shown on a terminal: 25k rows take about a minute).
pub fn encode_all(
    encoder: &PromptEncoder,
    rows: &[&Row],
    swap: bool,
    bar: &ProgressBar,
) -> Vec<Encoded> {
    if rows.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads);
    let encoded = std::thread::scope(|s| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                s.spawn(move || {
                    part.iter()
                        .map(|r| {
                            let given = encoder.encode(&r.prompt, &r.response_a, &r.response_b);
                            let exchanged = swap
                                .then(|| encoder.encode(&r.prompt, &r.response_b, &r.response_a));
                            bar.inc(1);
                            (given, exchanged)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("an encoder thread panicked"))
            .collect()
    });
    encoded
}
