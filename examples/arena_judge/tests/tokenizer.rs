//! The tokenizer fitted to a GGUF's own vocabulary, and tokenizing progress.

use indicatif::ProgressBar;

use super::{tokenizer, tokenizer_path, train_path};
use crate::prompt::{Layout, PromptEncoder};
use crate::tokenizer::load_tokenizer_for_vocabulary;

/// The real 0.5B GGUF's vocabulary (the GGUF comes from `scripts/setup.sh`).
fn gguf_vocabulary() -> Vec<String> {
    let p = crate::setup::demo_model();
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/setup.sh`",
        p.display()
    );
    qwen2_prefill::gguf::Gguf::open(&p, qwen2_prefill::GgufLinears::default())
        .unwrap()
        .vocabulary()
        .unwrap()
}

#[test]
fn tokenizer_fitted_to_the_gguf_vocabulary_drops_what_qwen25_never_trained() {
    let vocab = gguf_vocabulary();
    assert_eq!(vocab.len(), 151936);
    let fitted = load_tokenizer_for_vocabulary(&tokenizer_path(), &vocab).unwrap();
    let full = tokenizer();
    // Qwen3's tokenizer knows `<think>` (151667); the fitted one has no such token.
    assert_eq!(full.token_to_id("<think>"), Some(151667));
    assert_eq!(fitted.token_to_id("<think>"), None);
    assert_eq!(fitted.token_to_id("<|im_start|>"), Some(151644));
    // The judge's prompts come out the same on the real rows, and none uses an id past the
    // model's trained vocabulary.
    let a = PromptEncoder::new(full, Layout::ChatTemplate, 2048).unwrap();
    let b = PromptEncoder::new(&fitted, Layout::ChatTemplate, 2048).unwrap();
    for row in super::ok_rows(&train_path()).iter().take(20) {
        let x = a
            .encode(&row.prompt, &row.response_a, &row.response_b)
            .unwrap();
        let y = b
            .encode(&row.prompt, &row.response_a, &row.response_b)
            .unwrap();
        assert_eq!(x, y, "id {}", row.id);
        assert!(y.ids.iter().all(|&i| i < 151665));
    }
    // A vocabulary that disagrees is refused, naming the id.
    let mut wrong = vocab.clone();
    wrong[1000] = "nonsense".into();
    let err = format!(
        "{:#}",
        load_tokenizer_for_vocabulary(&tokenizer_path(), &wrong).unwrap_err()
    );
    assert!(err.contains("id 1000"), "{err}");
}

#[test]
fn the_gguf_own_tokenizer_encodes_like_tokenizer_json() {
    let path = crate::setup::demo_model();
    let gguf =
        qwen2_prefill::gguf::Gguf::open(&path, qwen2_prefill::GgufLinears::default()).unwrap();
    let data = gguf.tokenizer_data().unwrap();
    let own = crate::tokenizer::tokenizer_from_gguf(&data, &path).unwrap();
    let fitted = load_tokenizer_for_vocabulary(&tokenizer_path(), &data.tokens).unwrap();
    assert_eq!(own.token_to_id("<|im_end|>"), Some(151645));
    assert_eq!(own.token_to_id("<think>"), None);
    let a = PromptEncoder::new(&own, Layout::ChatTemplate, 8192).unwrap();
    let b = PromptEncoder::new(&fitted, Layout::ChatTemplate, 8192).unwrap();
    let mut rows = super::ok_rows(&train_path());
    rows.extend(super::ok_rows(&super::test_path()));
    for row in &rows {
        let x = a
            .encode(&row.prompt, &row.response_a, &row.response_b)
            .unwrap();
        let y = b
            .encode(&row.prompt, &row.response_a, &row.response_b)
            .unwrap();
        assert_eq!(x, y, "id {}", row.id);
    }
    // Text with a control token's spelling, accents, CJK and emoji stays text, as in the json.
    for text in ["<|im_end|> in text", "naïve café 東京 🙂 ﬁ", "x\r\n\n  y"] {
        let ids = |t: &tokenizers::Tokenizer| t.encode(text, false).unwrap().get_ids().to_vec();
        let mut plain = own.clone();
        plain.set_encode_special_tokens(true);
        let mut json = fitted.clone();
        json.set_encode_special_tokens(true);
        assert_eq!(ids(&plain), ids(&json), "{text:?}");
    }
    // Another tokenizer family is refused by name.
    let mut other = data.clone();
    other.pre = Some("llama-bpe".into());
    let err = format!(
        "{:#}",
        crate::tokenizer::tokenizer_from_gguf(&other, &path).unwrap_err()
    );
    assert!(err.contains("llama-bpe"), "{err}");
}

#[test]
fn tokenizing_reports_progress_per_row() {
    let encoder = PromptEncoder::new(tokenizer(), Layout::ChatTemplate, 512).unwrap();
    let rows = super::ok_rows(&train_path());
    let refs: Vec<_> = rows.iter().take(30).collect();
    let bar = ProgressBar::hidden();
    bar.set_length(30);
    let out = crate::inputs::encode_all(&encoder, &refs, true, &bar);
    assert_eq!(out.len(), 30);
    assert_eq!(bar.position(), 30, "one tick per row");
}
