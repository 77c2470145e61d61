//! Converts a Qwen2 GGUF into an AutoAWQ GEMM checkpoint (4-bit, zero points) directory.
//!
//! ```text
//! cargo run --release -p qwen2-prefill --bin to-awq -- MODEL.gguf OUT_DIR [--group 128] \
//!     [--tokenizer tokenizer.json]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};

const USAGE: &str = "usage: to-awq MODEL.gguf OUT_DIR [--group N] [--tokenizer PATH]";

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut paths, mut group, mut tokenizer) = (Vec::new(), 128usize, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--group" => {
                let v = args.next().context("--group needs a value")?;
                group = v.parse().with_context(|| format!("--group {v:?}"))?;
            }
            "--tokenizer" => {
                tokenizer = Some(PathBuf::from(
                    args.next().context("--tokenizer needs a value")?,
                ))
            }
            "-h" | "--help" => bail!("{USAGE}"),
            s if s.starts_with('-') => bail!("unknown option {s:?}\n{USAGE}"),
            s => paths.push(PathBuf::from(s)),
        }
    }
    ensure!(paths.len() == 2, "{USAGE}");
    let (gguf, out) = (&paths[0], &paths[1]);
    let n = qwen2_prefill::convert::gguf_to_awq(gguf, out, group)?;
    if let Some(t) = tokenizer {
        let dest = out.join("tokenizer.json");
        std::fs::copy(&t, &dest)
            .with_context(|| format!("cannot copy {} to {}", t.display(), dest.display()))?;
    }
    println!(
        "wrote {} ({n} linear layers, AWQ GEMM 4-bit, group {group})",
        out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("to-awq: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
