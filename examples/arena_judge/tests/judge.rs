//! Whole runs of the judge, in process (`crate::run` on parsed arguments), on a tiny generated
//! random-weights checkpoint with the real Qwen2.5 tokenizer: the submission's rows, ids and
//! distributions, the printed score, resuming, and errors that name the path at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use qwen2_prefill::synthetic::{write_checkpoint, Preset};
use tempfile::TempDir;

use super::{data_dir, tokenizer_path};
use crate::checkpoint::{checkpoint_path, Checkpoint, ItemResult};
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
fn csv_rows(path: &Path) -> Vec<(String, Option<usize>)> {
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
            (r[id].to_string(), label)
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
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let expected: Vec<String> = csv_rows(&data).into_iter().map(|r| r.0).collect();
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
fn log_loss(rows: &[Prediction], labels: &HashMap<String, usize>) -> f64 {
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
        rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        truth.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        "all 100 rows, in input order"
    );
    assert_distributions(&rows);
    let labels: HashMap<String, usize> = truth
        .iter()
        .map(|(id, l)| (id.clone(), l.expect("labelled")))
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
    // The settings line a run with these arguments writes.
    let cli = crate::Cli::try_parse_from(
        std::iter::once("arena_judge".to_string()).chain(args(&resumed)),
    )
    .unwrap();
    let settings = crate::prepare(cli).unwrap().settings;
    let mut cp = Checkpoint::create(&partial, &settings).unwrap();
    let done: Vec<ItemResult> = whole_rows[..24]
        .iter()
        .enumerate()
        .map(|(item, p)| ItemResult {
            item,
            prediction: p.clone(),
        })
        .collect();
    cp.append(&done).unwrap();
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
    let ids: Vec<String> = csv_rows(&data).into_iter().take(12).map(|r| r.0).collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
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

/// Runs the judge expecting an error; returns its message.
fn judge_err(args: &[&str]) -> String {
    match judge(args) {
        Ok(_) => panic!("arena_judge {args:?} succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn out_through_a_symlink_writes_the_target_and_keeps_the_link() {
    let (dir, model) = tiny_model();
    let target = dir.path().join("real.csv");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let data = data_dir().join("test.csv");
    judge_ok(&["--model", s(&model), "--data", s(&data), "--out", s(&link)]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still a link"
    );
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(text.starts_with(SUBMISSION_HEADER), "{text}");
}

#[test]
fn out_that_is_not_a_regular_file_or_is_the_data_is_refused_before_any_work() {
    let (dir, model) = tiny_model();
    let data = dir.path().join("rows.csv");
    std::fs::copy(data_dir().join("test.csv"), &data).unwrap();
    let before = std::fs::read(&data).unwrap();
    // The data file itself, directly and through a link.
    let err = judge_err(&["--model", s(&model), "--data", s(&data), "--out", s(&data)]);
    assert!(err.contains("is the input file"), "{err}");
    let link = dir.path().join("alias.csv");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let err = judge_err(&["--model", s(&model), "--data", s(&data), "--out", s(&link)]);
    assert!(err.contains("is the input file"), "{err}");
    assert_eq!(
        std::fs::read(&data).unwrap(),
        before,
        "the data is untouched"
    );
    // A device, a directory, a missing directory: refused, nothing left behind.
    for out in ["/dev/null", ".", "/no/such/dir/out.csv"] {
        let err = judge_err(&["--model", s(&model), "--data", s(&data), "--out", out]);
        assert!(err.contains(out), "{out}: {err}");
    }
    assert!(!Path::new("/dev/null.partial").exists());
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device_like(),
        "/dev/null is still a device"
    );
}

/// `std::fs::FileType::is_char_device` through the Unix extension trait.
trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

#[test]
fn a_load_error_leaves_no_checkpoint() {
    let (dir, model) = tiny_model();
    // A model whose config passes but whose weights are gone: the load fails after the checks.
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let out = dir.path().join("submission.csv");
    let data = data_dir().join("test.csv");
    let err = judge_err(&["--model", s(&model), "--data", s(&data), "--out", s(&out)]);
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(!checkpoint_path(&out).exists(), "no empty .partial");
    assert!(!out.exists());
}

#[test]
fn batch_limits_are_bounded() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data_dir().join("test.csv");
    for (flag, value) in [
        ("--max-batch-rows", "18446744073709551615"),
        ("--max-batch-rows", "10000000000"),
        ("--max-batch-rows", "0"),
        ("--token-budget", "0"),
        ("--token-budget", "99999999999"),
    ] {
        let err = judge_err(&[
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&out),
            flag,
            value,
        ]);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

#[test]
fn ids_are_kept_exactly_and_bad_or_duplicate_ids_fail_before_judging() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let row = |id: &str| format!("{id},\"[\"\"hi\"\"]\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\"\n");
    let write = |name: &str, ids: &[&str]| {
        let p = dir.path().join(name);
        let body: String = ids.iter().map(|id| row(id)).collect();
        std::fs::write(&p, format!("id,prompt,response_a,response_b\n{body}")).unwrap();
        p
    };
    let data = write("ids.csv", &["007", "7", "abc-1", "5000000000"]);
    judge_ok(&["--model", s(&model), "--data", s(&data), "--out", s(&out)]);
    let ids: Vec<String> = read_submission(&out)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["007", "7", "abc-1", "5000000000"]);

    let dup = write("dup.csv", &["1", "2", "1"]);
    let err = judge_err(&["--model", s(&model), "--data", s(&dup), "--out", s(&out)]);
    assert!(err.contains("id 1 is on data rows 1 and 3"), "{err}");
    let empty = write("empty.csv", &["1", ""]);
    let err = judge_err(&["--model", s(&model), "--data", s(&empty), "--out", s(&out)]);
    assert!(err.contains("row 2") && err.contains("empty"), "{err}");
}

#[test]
fn a_broken_config_is_rejected_and_an_all_uniform_run_fails() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data_dir().join("test.csv");
    let config = model.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["rope_theta"] = 0.into();
    std::fs::write(&config, cfg.to_string()).unwrap();
    let err = judge_err(&["--model", s(&model), "--data", s(&data), "--out", s(&out)]);
    assert!(
        err.contains("rope_theta 0") && err.contains("config.json"),
        "{err}"
    );

    // Weights that make every logit NaN: each row falls back to uniform, and the run fails.
    std::fs::write(&config, &original).unwrap();
    let st = model.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let poisoned: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            if k == "model.norm.weight" {
                let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
                (k, nan)
            } else {
                (k, t)
            }
        })
        .collect();
    candle_core::safetensors::save(&poisoned, &st).unwrap();
    let err = judge_err(&["--model", s(&model), "--data", s(&data), "--out", s(&out)]);
    assert!(err.contains("fell back to uniform"), "{err}");
    assert!(!out.exists(), "no submission of uniform rows");
}

#[test]
fn model_and_tokenizer_errors_say_what_is_wrong() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data_dir().join("test.csv");
    let file = model.join("config.json");
    let err = judge_err(&["--model", s(&file), "--data", s(&data), "--out", s(&out)]);
    assert!(err.contains("is a file but not a GGUF file"), "{err}");
    assert!(!err.contains("does not exist"), "{err}");

    let bad = dir.path().join("tok.json");
    std::fs::write(&bad, "{}").unwrap();
    let err = judge_err(&[
        "--model",
        s(&model),
        "--tokenizer",
        s(&bad),
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains(s(&bad)) && err.contains("--tokenizer"),
        "{err}"
    );
    assert!(
        !err.contains(&format!("tokenizer of {}", model.display())),
        "{err}"
    );
}

#[test]
fn resume_refuses_a_checkpoint_of_other_settings() {
    let (dir, model) = tiny_model();
    let data = data_dir().join("train_first100.csv");
    let out = dir.path().join("submission.csv");
    let args = |len: &'static str| -> Vec<String> {
        [
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--validate",
            "6",
            "--max-model-len",
            len,
        ]
        .map(String::from)
        .to_vec()
    };
    let cli =
        crate::Cli::try_parse_from(std::iter::once("arena_judge".to_string()).chain(args("256")))
            .unwrap();
    let settings = crate::prepare(cli).unwrap().settings;
    Checkpoint::create(&checkpoint_path(&out), &settings).unwrap();
    let mut again = args("8192");
    again.push("--resume".into());
    let refs: Vec<&str> = again.iter().map(String::as_str).collect();
    let err = judge_err(&refs);
    assert!(
        err.contains("max_model_len: 8192 now, 256 in the checkpoint"),
        "{err}"
    );
    // The same rows with A and B exchanged are other data.
    let swapped = dir.path().join("swapped.csv");
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(
        &swapped,
        text.replacen(
            "winner_model_a,winner_model_b",
            "winner_model_b,winner_model_a",
            1,
        ),
    )
    .unwrap();
    let mut other = args("256");
    other[3] = s(&swapped).to_string();
    other.push("--resume".into());
    let refs: Vec<&str> = other.iter().map(String::as_str).collect();
    let err = judge_err(&refs);
    assert!(err.contains("data:"), "{err}");
}

#[test]
fn swap_judges_both_orders_and_calibration_round_trips() {
    let (dir, model) = tiny_model();
    let data = data_dir().join("train_first100.csv");
    let out = dir.path().join("submission.csv");
    let dump = dir.path().join("prompts.jsonl");
    let fit = dir.path().join("calibration.json");
    let base = [
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--validate",
        "20",
        "--max-model-len",
        "256",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--out",
        s(&out),
        "--swap",
        "--dump-prompts",
        s(&dump),
        "--calibrate",
        s(&fit),
    ]);
    let summary = judge_ok(&args);
    assert_eq!(summary.counts.rows, 40, "20 rows in two orders");
    let (raw, swapped) = (summary.raw.unwrap().0, summary.swapped.unwrap().0);
    assert_eq!(
        summary.score.unwrap().0,
        swapped,
        "the submission is the mean of both orders"
    );
    assert!(raw.is_finite() && swapped.is_finite());
    // The dump holds each row twice, the second time with the responses exchanged.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    assert_eq!(lines[0]["id"], lines[20]["id"]);
    assert_eq!(
        (
            lines[0]["swapped"].as_bool(),
            lines[20]["swapped"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let (a, b) = (
        lines[0]["prompt"].as_str().unwrap(),
        lines[20]["prompt"].as_str().unwrap(),
    );
    let part = |p: &str, h: &str| {
        let rest = p.split(h).nth(1).unwrap();
        let section = rest.split("#####").next().unwrap();
        section
            .split("<|im_end|>")
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(part(a, "RESPONSE A:"), part(b, "RESPONSE B:"));
    assert_eq!(part(a, "RESPONSE B:"), part(b, "RESPONSE A:"));

    // The fit: cross-validated losses reported, and never worse than uniform on held-out folds.
    let (_, report) = summary.fit.unwrap();
    let written = crate::calibration::load(&fit).unwrap();
    assert_eq!(written.calibration, report.calibration);
    let best = report
        .cv
        .iter()
        .filter(|(f, _, _)| *f != crate::calibration::Features::LengthOnly)
        .map(|c| c.1)
        .fold(f64::INFINITY, f64::min);
    if best >= report.uniform_log_loss {
        assert_eq!(
            written.calibration,
            crate::calibration::Calibration::uniform()
        );
    }
    // Applying it: every row a distribution, the reported score that of the written file.
    let out2 = dir.path().join("calibrated.csv");
    let mut args = base.to_vec();
    args.extend(["--out", s(&out2), "--swap", "--calibration", s(&fit)]);
    let applied = judge_ok(&args);
    let rows = read_submission(&out2).unwrap();
    assert_distributions(&rows);
    assert_eq!(applied.calibrated, applied.score);
}
