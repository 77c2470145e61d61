//! Loading the tokenizer: a `tokenizer.json` (optionally fitted to a GGUF model's own
//! vocabulary), or the tokenizer a GGUF file carries.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use qwen2_prefill::gguf::TokenizerData;
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

/// Qwen2's pre-tokenizer split (GGUF `tokenizer.ggml.pre = "qwen2"`): contractions, letters,
/// single digits, punctuation runs, newlines and spaces.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the byte-level BPE tokenizer a Qwen2 GGUF carries: its vocabulary and merges, NFC
/// normalization and Qwen2's pre-tokenizer; control tokens (type 3) become special added tokens,
/// user-defined ones (type 4) plain added tokens, unused ids (type 5) are left out.
///
/// # Errors
/// The GGUF's tokenizer is not byte-level BPE with the `qwen2` pre-tokenizer (the message names
/// what it is), or the data is inconsistent.
pub fn tokenizer_from_gguf(data: &TokenizerData, source: &Path) -> Result<Tokenizer> {
    ensure!(
        data.model == "gpt2" && data.pre.as_deref() == Some("qwen2"),
        "GGUF {}: its tokenizer ({:?}, pre-tokenizer {:?}) is not Qwen2's byte-level BPE; pass \
         --tokenizer tokenizer.json",
        source.display(),
        data.model,
        data.pre
    );
    ensure!(
        data.tokens.len() == data.token_types.len(),
        "GGUF {}: {} tokens but {} token types",
        source.display(),
        data.tokens.len(),
        data.token_types.len()
    );
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (token, &kind)) in data.tokens.iter().zip(&data.token_types).enumerate() {
        match kind {
            1 => {
                vocab.insert(token.clone(), id.into());
            }
            3 | 4 => added.push(serde_json::json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": kind == 3,
            })),
            _ => {}
        }
    }
    let merges: Vec<serde_json::Value> = data
        .merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            serde_json::json!([a, b])
        })
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": { "type": "NFC" },
        "pre_tokenizer": { "type": "Sequence", "pretokenizers": [
            { "type": "Split", "pattern": { "Regex": QWEN2_SPLIT }, "behavior": "Isolated",
              "invert": false },
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    json.to_string()
        .parse()
        .map_err(|e| anyhow!("GGUF {}: cannot build its tokenizer: {e}", source.display()))
}
