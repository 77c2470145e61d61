//! End-to-end tests of the `arena_judge` example binary: it is run as a user would run it, on a
//! tiny random-weights checkpoint that the binary itself writes (`--write-checkpoint`) into a
//! temporary directory, with the real Qwen2.5 tokenizer from `scripts/setup.sh`.
//!
//! The binary is looked up next to this test executable (`target/<profile>/examples/`). Cargo
//! builds examples for a plain `cargo test`, but not for `cargo test --test arena_judge_e2e`, so
//! the tests first run `cargo build --example arena_judge` with the same profile and features
//! (a no-op when it is up to date). Nothing is skipped: a missing tokenizer or binary fails with
//! the command that fixes it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

const HEADER: &str = "id,winner_model_a,winner_model_b,winner_tie";
/// Context length for the runs over 100 rows: keeps each run at a few seconds on a CPU.
const SHORT_CONTEXT: &str = "512";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data(name: &str) -> PathBuf {
    root().join("examples/arena_judge/data").join(name)
}

/// The example binary, built (once per test process) for this test's profile and features.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let tokenizer = root().join("assets/qwen2.5/tokenizer.json");
        assert!(
            tokenizer.is_file(),
            "{} is missing: run `bash scripts/setup.sh` first",
            tokenizer.display()
        );
        // target/<profile>/deps/arena_judge_e2e-<hash> → target/<profile>
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in target/<profile>/deps");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a profile directory name");
        if let Ok(cargo) = std::env::var("CARGO") {
            let mut cmd = Command::new(cargo);
            let target_dir = profile_dir.parent().expect("target/<profile>");
            cmd.current_dir(root())
                .args(["build", "--example", "arena_judge", "--profile"])
                .arg(if profile == "debug" { "dev" } else { profile })
                .arg("--target-dir")
                .arg(target_dir);
            if cfg!(feature = "cuda") {
                cmd.args(["--features", "cuda"]);
            }
            let status = cmd.status().expect("cannot run cargo to build the example");
            assert!(status.success(), "building the arena_judge example failed");
        }
        let bin = profile_dir
            .join("examples")
            .join(format!("arena_judge{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "the example binary {} is missing: build it with `cargo build --release --example \
             arena_judge` (or run `cargo test`, which builds examples)",
            bin.display()
        );
        bin
    })
}

/// Runs the binary with `args` from the crate root.
fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(binary())
        .current_dir(root())
        .args(args)
        .output()
        .expect("cannot start the arena_judge binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary and asserts that it succeeded; returns stdout.
fn run_ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "arena_judge {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A temporary directory holding a tiny generated checkpoint (with the tokenizer) in `model/`.
fn tiny_model() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let model = dir.path().join("model");
    run_ok(&[
        "--write-checkpoint",
        s(&model),
        "--preset",
        "tiny",
        "--seed",
        "7",
    ]);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(model.join(f).is_file(), "--write-checkpoint wrote no {f}");
    }
    (dir, model)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Reads a submission: checks the header and returns `(id, [pa, pb, pt])` per line.
fn read_submission(path: &Path) -> Vec<(u64, [f64; 3])> {
    let content = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = content.lines();
    assert_eq!(lines.next(), Some(HEADER), "submission header");
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4, "line {line:?}");
            let p = |i: usize| {
                f[i].parse::<f64>()
                    .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            };
            (f[0].parse().expect("integer id"), [p(1), p(2), p(3)])
        })
        .collect()
}

/// Ids and (for train files) label indices of a CSV, in file order.
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
fn assert_distributions(rows: &[(u64, [f64; 3])]) {
    for (id, p) in rows {
        assert!(
            p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
            "id {id}: {p:?}"
        );
        let sum: f64 = p.iter().sum();
        assert!((sum - 1.0).abs() <= 1e-6, "id {id}: sum {sum}");
    }
}

#[test]
fn test_csv_gives_a_valid_non_uniform_submission() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data("test.csv");
    run_ok(&["--model", s(&model), "--data", s(&data), "--out", s(&out)]);

    let rows = read_submission(&out);
    let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let expected: Vec<u64> = csv_rows(&data).iter().map(|r| r.0).collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(ids, expected, "ids in input order");
    assert_distributions(&rows);
    // The Python original predicted exactly 1/3 everywhere: the forced choices must carry the
    // model's preferences.
    assert!(
        rows.iter()
            .any(|(_, p)| p.iter().any(|v| (v - 1.0 / 3.0).abs() > 1e-4)),
        "every row is uniform: {rows:?}"
    );
    assert!(
        !output_checkpoint(&out).exists(),
        "the checkpoint is removed at the end"
    );
}

/// The log loss of `rows` against `labels` as scikit-learn computes it (probabilities clipped
/// to [eps, 1 - eps]).
fn log_loss(rows: &[(u64, [f64; 3])], labels: &HashMap<u64, usize>) -> f64 {
    let eps = f64::EPSILON;
    let total: f64 = rows
        .iter()
        .map(|(id, p)| -p[labels[id]].clamp(eps, 1.0 - eps).ln())
        .sum();
    total / rows.len() as f64
}

#[test]
fn validate_prints_the_log_loss_of_the_written_submission() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let data = data("train_first100.csv");
    let stdout = run_ok(&[
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
    let printed: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("log loss"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `log loss <value>` line in:\n{stdout}"));
    assert!(printed.is_finite() && printed > 0.0, "log loss {printed}");
    assert!(stdout.lines().any(|l| l.trim().starts_with("accuracy")));

    let rows = read_submission(&out);
    let truth = csv_rows(&data);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
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
        (printed - recomputed).abs() <= 1e-6,
        "printed log loss {printed} but the submission gives {recomputed}"
    );
}

fn output_checkpoint(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

#[test]
fn killed_then_resumed_run_writes_the_same_bytes() {
    let (dir, model) = tiny_model();
    let data = data("train_first100.csv");
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

    let whole = dir.path().join("whole.csv");
    run_ok(&args(&whole));

    let resumed = dir.path().join("resumed.csv");
    let checkpoint = output_checkpoint(&resumed);
    let mut killed = args(&resumed);
    killed.extend(["--abort-after-batches".into(), "3".into()]);
    let out = run(&killed);
    assert!(
        !out.status.success(),
        "the aborted run must fail, got {}",
        out.status
    );
    assert!(
        !resumed.exists(),
        "an aborted run must not write the submission"
    );
    let lines = std::fs::read_to_string(&checkpoint)
        .unwrap_or_else(|e| panic!("no checkpoint {} after the kill: {e}", checkpoint.display()))
        .lines()
        .count();
    assert_eq!(lines, 24, "three batches of 8 rows are checkpointed");

    // Without --resume the checkpoint is not silently thrown away.
    let refused = run(&args(&resumed));
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("--resume") && err.contains(s(&checkpoint)),
        "{err}"
    );

    let mut again = args(&resumed);
    again.push("--resume".into());
    let stdout = run_ok(&again);
    assert!(stdout.contains("24 from the checkpoint"), "{stdout}");
    assert!(!checkpoint.exists(), "the checkpoint is removed at the end");
    let (a, b) = (
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap(),
    );
    assert_eq!(
        String::from_utf8_lossy(&a),
        String::from_utf8_lossy(&b),
        "the resumed submission differs from the uninterrupted one"
    );
}

#[test]
fn bad_inputs_fail_naming_the_path() {
    let (dir, model) = tiny_model();
    let out = dir.path().join("submission.csv");
    let test_csv = data("test.csv");

    let missing = dir.path().join("no-such-model");
    let r = run(&[
        "--model",
        s(&missing),
        "--data",
        s(&test_csv),
        "--out",
        s(&out),
    ]);
    let err = text(&r.stderr);
    assert!(!r.status.success(), "a missing model dir must fail");
    assert!(err.contains(s(&missing)), "message names the path: {err}");

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "id,prompt,response_a\n1,\"[\"\"hi\"\"]\",\"[\"\"yo\"\"]\"\n",
    )
    .unwrap();
    let r = run(&["--model", s(&model), "--data", s(&bad), "--out", s(&out)]);
    let err = text(&r.stderr);
    assert!(!r.status.success(), "a CSV without response_b must fail");
    assert!(
        err.contains(s(&bad)) && err.contains("response_b"),
        "message names the file and the column: {err}"
    );
    assert!(!out.exists());
}
