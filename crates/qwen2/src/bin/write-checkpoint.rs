//! Writes a deterministic random Qwen2 checkpoint (see `qwen2_prefill::synthetic`).
//!
//! ```text
//! cargo run --release -p qwen2-prefill --features synthetic --bin write-checkpoint -- \
//!     DIR [--preset tiny|tiny-dense|qwen2.5-3b] [--seed N] [--tokenizer tokenizer.json]
//! ```
//!
//! With `--tokenizer`, the file is copied into `DIR/tokenizer.json` so the directory is a
//! complete model for the arena_judge example. The directory is written under a temporary name
//! and renamed into place, so an interrupted run never leaves a half-written model.

use std::path::PathBuf;
use std::process::ExitCode;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
use qwen2_prefill::synthetic::{write_checkpoint, Preset};

const USAGE: &str = "usage: write-checkpoint DIR [--preset NAME] [--seed N] [--tokenizer PATH]";

struct Args {
    dir: PathBuf,
    preset: String,
    seed: u64,
    tokenizer: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let (mut dir, mut preset, mut seed, mut tokenizer) = (None, "tiny".to_string(), 0, None);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--preset" => preset = value("--preset")?,
            "--seed" => {
                let v = value("--seed")?;
                seed = v
                    .parse()
                    .map_err(|e| format!("--seed {v:?} is not a u64: {e}"))?;
            }
            "--tokenizer" => tokenizer = Some(PathBuf::from(value("--tokenizer")?)),
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}\n{USAGE}").into()),
            s => {
                if dir.is_some() {
                    return Err(format!("more than one DIR given\n{USAGE}").into());
                }
                dir = Some(PathBuf::from(s));
            }
        }
    }
    let dir = dir.ok_or_else(|| format!("no DIR given\n{USAGE}"))?;
    Ok(Args {
        dir,
        preset,
        seed,
        tokenizer,
    })
}

fn run(args: Args) -> Result<()> {
    let preset = Preset::by_name(&args.preset)?;
    if let Some(t) = &args.tokenizer {
        if !t.is_file() {
            return Err(format!("tokenizer {} not found", t.display()).into());
        }
    }
    let name = args.dir.file_name().ok_or("DIR has no file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = args.dir.with_file_name(tmp_name);
    let _ = std::fs::remove_dir_all(&tmp);
    write_checkpoint(&tmp, &preset, args.seed)?;
    if let Some(t) = &args.tokenizer {
        let dest = tmp.join("tokenizer.json");
        std::fs::copy(t, &dest)
            .map_err(|e| format!("cannot copy {} to {}: {e}", t.display(), dest.display()))?;
    }
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .map_err(|e| format!("cannot remove the old {}: {e}", args.dir.display()))?;
    }
    std::fs::rename(&tmp, &args.dir).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            args.dir.display()
        )
    })?;
    println!(
        "wrote a `{}` checkpoint (seed {}) to {}",
        args.preset,
        args.seed,
        args.dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write-checkpoint: error: {}", qwen2_prefill::report(&*e));
            ExitCode::FAILURE
        }
    }
}
