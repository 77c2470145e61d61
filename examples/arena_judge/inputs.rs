//! The rows of one input file, read, encoded and ready for the model: each becomes an
//! [`Entry`] of the submission.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Result};

use crate::data::{read_arena_csv, Format, Row};
use crate::prompt::{EncodedPrompt, PromptEncoder};

/// One line of the submission, in input order.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The row id.
    pub id: u64,
    /// The label as a class index (0 = A, 1 = B, 2 = tie), for train-layout rows.
    pub label: Option<usize>,
    /// The prompt's token ids; `None` for a malformed row, which is predicted uniform.
    pub prompt: Option<Arc<[u32]>>,
    /// Whether the prompt was cut to fit `--max-model-len`.
    pub truncated: bool,
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
        let mut cut = false;
        let prompt = match row.map(|_| encoded.next().expect("one encoding per row")) {
            None => None,
            Some(Ok(p)) => {
                truncated += usize::from(p.truncated);
                cut = p.truncated;
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
        entries.push(Entry {
            id,
            label,
            prompt,
            truncated: cut,
        });
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
