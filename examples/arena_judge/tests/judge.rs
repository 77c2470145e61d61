//! Whole runs of the judge, in process (`crate::run` on parsed arguments), on a tiny generated
//! random-weights checkpoint with the real Qwen2.5 tokenizer: the submission's rows, ids and
//! distributions, the printed score, resuming, and errors that name the path at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use qwen2_prefill::synthetic::{write_checkpoint, Preset};
use tempfile::TempDir;

use super::{data_dir, tokenizer_path};
use crate::checkpoint::{checkpoint_path, Checkpoint};
use crate::output::{read_submission, Prediction, SUBMISSION_HEADER};
use crate::report::Summary;

/// Context length for the runs over many rows: keeps each run at a few seconds on a CPU.
const SHORT_CONTEXT: &str = "512";

/// Runs the judge on `args` (without the program name).
fn judge(args: &[&str]) -> anyhow::Result<Summary> {
    let cli =
        crate::Cli::try_parse_from(std::iter::once("arena_judge").chain(args.iter().copied()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::run(cli)
}

fn judge_ok(args: &[&str]) -> Summary {
    judge(args).unwrap_or_else(|e| panic!("arena_judge {args:?} failed: {e:#}"))
}

/// A temporary directory holding a tiny generated checkpoint (with the tokenizer) in `model/`.
fn tiny_model() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let model = dir.path().join("model");
    write_checkpoint(&model, &Preset::tiny(), 7).expect("the tiny checkpoint");
    std::fs::copy(tokenizer_path(), model.join("tokenizer.json")).expect("the tokenizer copy");
    (dir, model)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Ids and (for train files) label indices of a CSV, read straight with `csv`, in file order.
fn csv_rows(path: &Path) -> Vec<(u64, Option<usize>)> {
    let mut reader = csv::Reader::from_path(path).expect("readable CSV");
    let headers = reader.headers().expect("a header").clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let id = col("id").expect("an id column");
    let labels: Option<Vec<usize>> = ["winner_model_a", "winner_model_b", "winner_tie"]
        .iter()
        .map(|c| col(c))
        .collect();
    reader
        .records()
        .map(|r| {
            let r = r.expect("a CSV record");
            let label = labels.as_ref().map(|cols| {
                cols.iter()
                    .position(|&c| r[c].trim() == "1")
                    .expect("one-hot labels")
            });
            (r[id].parse().expect("integer id"), label)
        })
        .collect()
}

/// Every row a distribution: finite, in [0, 1], summing to 1.
fn assert_distributions(rows: &[Prediction]) {
    for p in rows {
        assert!(
            p.probs
                .iter()
                .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
            "id {}: {:?}",
            p.id,
            p.probs
        );
        let sum: f64 = p.probs.iter().sum();
        assert!((sum - 1.0).abs() <= 1e-6, "id {}: sum {sum}", p.id);
    }
}

#[test]
fn test_csv_gives_a_valid_non_uniform_submission() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data_dir().join("test.csv");
    judge_ok(&["--model", s(&model), "--data", s(&data), "--out", s(&out)]);

    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().next(), Some(SUBMISSION_HEADER));
    let rows = read_submission(&out).unwrap();
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let expected: Vec<u64> = csv_rows(&data).iter().map(|r| r.0).collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(ids, expected, "ids in input order");
    assert_distributions(&rows);
    // A judge that predicts 1/3 everywhere is no judge: the forced choices must carry the
    // model's preferences.
    assert!(
        rows.iter()
            .any(|p| p.probs.iter().any(|v| (v - 1.0 / 3.0).abs() > 1e-4)),
        "every row is uniform: {rows:?}"
    );
    assert!(
        !checkpoint_path(&out).exists(),
        "the checkpoint is removed at the end"
    );
}

/// The log loss of `rows` against `labels` as scikit-learn computes it (probabilities clipped
/// to [eps, 1 - eps]).
fn log_loss(rows: &[Prediction], labels: &HashMap<u64, usize>) -> f64 {
    let eps = f64::EPSILON;
    let total: f64 = rows
        .iter()
        .map(|p| -p.probs[labels[&p.id]].clamp(eps, 1.0 - eps).ln())
        .sum();
    total / rows.len() as f64
}

#[test]
fn validate_reports_the_log_loss_of_the_written_submission() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data_dir().join("train_first100.csv");
    let summary = judge_ok(&[
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--validate",
        "100",
        "--max-model-len",
        SHORT_CONTEXT,
    ]);
    let (reported, accuracy, n) = summary.score.expect("labelled rows are scored");
    assert_eq!(n, 100);
    assert!(
        reported.is_finite() && reported > 0.0,
        "log loss {reported}"
    );
    assert!((0.0..=1.0).contains(&accuracy));

    let rows = read_submission(&out).unwrap();
    let truth = csv_rows(&data);
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        truth.iter().map(|r| r.0).collect::<Vec<_>>(),
        "all 100 rows, in input order"
    );
    assert_distributions(&rows);
    let labels: HashMap<u64, usize> = truth
        .iter()
        .map(|(id, l)| (*id, l.expect("labelled")))
        .collect();
    let recomputed = log_loss(&rows, &labels);
    assert!(
        (reported - recomputed).abs() <= 1e-12,
        "reported log loss {reported} but the submission gives {recomputed}"
    );
}

/// An interrupted run leaves a checkpoint holding some finished rows and maybe a torn last line:
/// here it is made from the uninterrupted run's first 24 rows (they span several batches, so
/// some batches are checkpointed only in part) plus half a line.
#[test]
fn resumed_run_writes_the_same_bytes() {
    let (dir, model) = tiny_model();
    let data = data_dir().join("train_first100.csv");
    let args = |out: &Path| -> Vec<String> {
        [
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(out),
            "--validate",
            "40",
            "--max-batch-rows",
            "8",
            "--max-model-len",
            SHORT_CONTEXT,
        ]
        .map(String::from)
        .to_vec()
    };
    let strs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let run = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        judge(&refs)
    };

    let whole = dir.path().join("whole.csv");
    run(args(&whole)).unwrap();
    let whole_rows = read_submission(&whole).unwrap();

    let resumed = dir.path().join("resumed.csv");
    let partial = checkpoint_path(&resumed);
    let mut cp = Checkpoint::create(&partial).unwrap();
    cp.append(&whole_rows[..24]).unwrap();
    drop(cp);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .unwrap();
    std::io::Write::write_all(&mut f, b"4242,0.5,0.2").unwrap();
    drop(f);

    // Without --resume the checkpoint is not silently thrown away.
    let err = format!("{:#}", run(strs(&args(&resumed))).unwrap_err());
    assert!(
        err.contains("--resume") && err.contains(s(&partial)),
        "{err}"
    );
    assert!(!resumed.exists());

    let mut again = args(&resumed);
    again.push("--resume".into());
    let summary = run(again).unwrap();
    assert_eq!(summary.resumed, 24, "rows taken from the checkpoint");
    assert!(!partial.exists(), "the checkpoint is removed at the end");
    assert_eq!(
        std::fs::read_to_string(&whole).unwrap(),
        std::fs::read_to_string(&resumed).unwrap(),
        "the resumed submission differs from the uninterrupted one"
    );
}

#[test]
fn bad_inputs_fail_naming_the_path() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let test_csv = data_dir().join("test.csv");

    let missing = dir.path().join("no-such-model");
    let err = format!(
        "{:#}",
        judge(&[
            "--model",
            s(&missing),
            "--data",
            s(&test_csv),
            "--out",
            s(&out)
        ])
        .unwrap_err()
    );
    assert!(err.contains(s(&missing)), "message names the path: {err}");

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "id,prompt,response_a\n1,\"[\"\"hi\"\"]\",\"[\"\"yo\"\"]\"\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        judge(&["--model", s(&model), "--data", s(&bad), "--out", s(&out)]).unwrap_err()
    );
    assert!(
        err.contains(s(&bad)) && err.contains("response_b"),
        "message names the file and the column: {err}"
    );
    assert!(!out.exists());
}

#[test]
fn dump_prompts_holds_the_ids_and_batches_the_model_ran() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let dump = dir.path().join("prompts.jsonl");
    let data = data_dir().join("train_first100.csv");
    judge_ok(&[
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--validate",
        "12",
        "--max-model-len",
        "300",
        "--max-batch-rows",
        "5",
        "--dump-prompts",
        s(&dump),
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<u64> = csv_rows(&data).iter().take(12).map(|r| r.0).collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        ids,
        "one line per row, in input order"
    );
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let mut batches: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut truncated = 0;
    for l in &lines {
        let token_ids: Vec<u32> = l["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(l["tokens"].as_u64().unwrap() as usize, token_ids.len());
        assert!(token_ids.len() < 300, "prompt + answer fit --max-model-len");
        // The text is the decoded ids, chat template included.
        let prompt = l["prompt"].as_str().unwrap();
        assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt:?}");
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert_eq!(tok.decode(&token_ids, false).unwrap(), prompt);
        truncated += usize::from(l["truncated"].as_bool().unwrap());
        batches
            .entry(l["batch"].as_u64().unwrap())
            .or_default()
            .push(token_ids.len());
    }
    assert!(
        truncated > 0,
        "some of these rows need cutting at 300 tokens"
    );
    // The plan: at most 5 rows per batch, shortest first, batches in ascending length.
    let mut order: Vec<_> = batches.into_iter().collect();
    order.sort();
    assert_eq!(order.iter().map(|b| b.1.len()).sum::<usize>(), 12);
    let mut last = 0;
    for (_, lens) in &order {
        assert!(lens.len() <= 5);
        assert!(lens.iter().all(|&l| l >= last));
        last = *lens.iter().max().unwrap();
    }
}
