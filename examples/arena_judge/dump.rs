//! `--dump-prompts FILE`: what the model sees, one JSON line per row, for prompt work and for
//! replaying the judge's exact work elsewhere (a PyTorch peer runs the same ids in the same
//! batches).
//!
//! Each line: `id`, `batch` (index of the forward pass in the batch plan, `null` for a malformed
//! row), `position` (the row's place in that batch's plan, shortest first), `tokens`,
//! `truncated`, `token_ids`, and `prompt` (the ids decoded with special tokens kept: the exact
//! text the model saw, truncation marks included). The file is written atomically, in input
//! order.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::files::write_atomically;
use crate::inputs::Entry;
use crate::plan::Batch;

/// One line of the dump.
#[derive(Debug, Serialize)]
struct Line<'a> {
    id: u64,
    batch: Option<usize>,
    position: Option<usize>,
    tokens: usize,
    truncated: bool,
    prompt: Option<String>,
    token_ids: Option<&'a [u32]>,
}

/// Writes the dump of `entries` under the batch `plan` to `path`.
///
/// # Errors
/// Decoding a prompt fails, or the file cannot be written (the message names it).
pub fn write_prompts(
    path: &Path,
    entries: &[Entry],
    plan: &[Batch],
    tokenizer: &Tokenizer,
) -> Result<()> {
    let mut place = vec![None; entries.len()];
    for (b, batch) in plan.iter().enumerate() {
        for (k, &e) in batch.entries.iter().enumerate() {
            place[e] = Some((b, k));
        }
    }
    let mut text = String::new();
    for (entry, place) in entries.iter().zip(&place) {
        let ids = entry.prompt.as_deref();
        let prompt = ids
            .map(|ids| {
                tokenizer
                    .decode(ids, false)
                    .map_err(|e| anyhow!("cannot decode the prompt of id {}: {e}", entry.id))
            })
            .transpose()?;
        let line = Line {
            id: entry.id,
            batch: place.map(|p| p.0),
            position: place.map(|p| p.1),
            tokens: ids.map_or(0, <[u32]>::len),
            truncated: entry.truncated,
            prompt,
            token_ids: ids,
        };
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    write_atomically(path, |w| Ok(w.write_all(text.as_bytes())?))
        .with_context(|| format!("cannot write the prompt dump {}", path.display()))
}
