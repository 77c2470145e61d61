//! The example's tests, one file per concern. Those that need the real Qwen2.5 tokenizer
//! (`scripts/setup.sh` fetches it) fail, never skip, when it is missing.
//!
//! Run them with `cargo test --release --example arena_judge` (or `bash scripts/test.sh`).

mod checkpoint;
mod data;
mod files;
mod judge;
mod metrics;
mod output;
mod prompt;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenizers::Tokenizer;

use crate::data::Row;
use crate::output::Prediction;

const IM_START_ID: u32 = 151644;
const IM_END_ID: u32 = 151645;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/arena_judge/data")
}

fn train_path() -> PathBuf {
    data_dir().join("train_first100.csv")
}

fn test_path() -> PathBuf {
    data_dir().join("test.csv")
}

/// The real Qwen2.5 tokenizer fetched by `scripts/setup.sh` (a missing one fails the test).
fn tokenizer_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen2.5/tokenizer.json");
    assert!(
        path.is_file(),
        "tokenizer fixture {} is missing: run `bash scripts/setup.sh`",
        path.display()
    );
    path
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = tokenizer_path();
        assert!(
            path.is_file(),
            "tokenizer fixture {} is missing: run scripts/setup.sh",
            path.display()
        );
        crate::prompt::load_tokenizer(&path)
            .unwrap_or_else(|e| panic!("{e:#} (run scripts/setup.sh to refetch it)"))
    })
}

fn ok_rows(path: &Path) -> Vec<Row> {
    crate::data::read_rows(path)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("row failed: {e}")))
        .collect()
}

/// `(id, [winner_model_a, winner_model_b, winner_tie] if present)` read straight with `csv`.
fn direct_csv(path: &Path) -> Vec<(u64, Option<[f64; 3]>)> {
    let mut rd = csv::Reader::from_path(path).unwrap();
    let headers = rd.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n);
    let (id, wa, wb, wt) = (
        col("id").unwrap(),
        col("winner_model_a"),
        col("winner_model_b"),
        col("winner_tie"),
    );
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            let labels = wa.map(|wa| {
                [
                    r[wa].parse().unwrap(),
                    r[wb.unwrap()].parse().unwrap(),
                    r[wt.unwrap()].parse().unwrap(),
                ]
            });
            (r[id].parse().unwrap(), labels)
        })
        .collect()
}

fn write_temp_csv(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

/// Predictions covering the formatting cases: long decimals, large ids, tiny probabilities.
fn sample_predictions() -> Vec<Prediction> {
    vec![
        Prediction {
            id: 136060,
            probs: crate::metrics::softmax3([1.5, -0.25, 0.75]).probs,
        },
        Prediction {
            id: 4_294_947_231,
            probs: [0.1, 0.2, 0.7000000000000001],
        },
        Prediction {
            id: 5_000_000_000,
            probs: crate::metrics::softmax3([30.0, -40.0, 0.0]).probs,
        },
        Prediction {
            id: 7,
            probs: crate::output::UNIFORM,
        },
    ]
}
