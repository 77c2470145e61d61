//! Loading the tokenizer: a `tokenizer.json`, optionally fitted to a GGUF model's own
//! vocabulary.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokenizers::Tokenizer;

/// Loads a `tokenizer.json`.
///
/// # Errors
/// The file is missing or is not a valid tokenizer (the message names the file).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        bail!("tokenizer {} not found", path.display());
    }
    Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

/// Loads a `tokenizer.json` for a model whose vocabulary is `vocabulary` (token strings by id,
/// as a GGUF stores them).
///
/// Added tokens the vocabulary does not hold at their id are dropped before loading (the Qwen3
/// tokenizer fetched by `scripts/setup.sh` adds four tokens past Qwen2.5's vocabulary, which a
/// Qwen2.5 model never trained), so the tokenizer cannot produce them. Every other id the
/// tokenizer knows must be the vocabulary's token at that id.
///
/// # Errors
/// The file is missing or not a tokenizer, or a token differs from the vocabulary's (the message
/// names the file, the id and both tokens).
pub fn load_tokenizer_for_vocabulary(path: &Path, vocabulary: &[String]) -> Result<Tokenizer> {
    if !path.is_file() {
        bail!("tokenizer {} not found", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("tokenizer {} is not JSON", path.display()))?;
    let mut dropped = Vec::new();
    if let Some(added) = json.get_mut("added_tokens").and_then(|a| a.as_array_mut()) {
        added.retain(|t| {
            let id = t.get("id").and_then(|v| v.as_u64()).map(|v| v as usize);
            let content = t.get("content").and_then(|v| v.as_str());
            let keep = matches!((id, content), (Some(id), Some(c)) if vocabulary.get(id).is_some_and(|v| v == c));
            if !keep {
                dropped.push(content.unwrap_or("?").to_string());
            }
            keep
        });
    }
    let tokenizer: Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
    let size = tokenizer.get_vocab_size(true);
    ensure!(
        size <= vocabulary.len(),
        "tokenizer {} has {size} tokens, the model's vocabulary only {}",
        path.display(),
        vocabulary.len()
    );
    for (id, token) in vocabulary.iter().enumerate() {
        if let Some(ours) = tokenizer.id_to_token(id as u32) {
            ensure!(
                &ours == token,
                "tokenizer {} does not match the model's vocabulary: id {id} is {ours:?} there \
                 but {token:?} in the model",
                path.display()
            );
        }
    }
    if !dropped.is_empty() {
        eprintln!(
            "note: tokenizer {}: dropped {} added tokens the model's vocabulary lacks ({})",
            path.display(),
            dropped.len(),
            dropped.join(" ")
        );
    }
    Ok(tokenizer)
}
