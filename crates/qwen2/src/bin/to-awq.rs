//! Converts a Qwen2 GGUF into an AutoAWQ GEMM checkpoint (4-bit, zero points) directory.
//!
//! ```text
//! cargo run --release -p qwen2-prefill --bin to-awq -- MODEL.gguf OUT_DIR [--group 128] \
//!     [--tokenizer tokenizer.json]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: to-awq MODEL.gguf OUT_DIR [--group N] [--tokenizer PATH]";

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut paths, mut group, mut tokenizer) = (Vec::new(), 128usize, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--group" => {
                let v = args.next().ok_or("--group needs a value")?;
                group = v.parse().map_err(|e| format!("--group {v:?}: {e}"))?;
            }
            "--tokenizer" => {
                tokenizer = Some(PathBuf::from(
                    args.next().ok_or("--tokenizer needs a value")?,
                ))
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}\n{USAGE}").into()),
            s => paths.push(PathBuf::from(s)),
        }
    }
    if paths.len() != 2 {
        return Err(USAGE.into());
    }
    let (gguf, out) = (&paths[0], &paths[1]);
    let n = qwen2_prefill::convert::gguf_to_awq(gguf, out, group)?;
    if let Some(t) = tokenizer {
        let dest = out.join("tokenizer.json");
        std::fs::copy(&t, &dest)
            .map_err(|e| format!("cannot copy {} to {}: {e}", t.display(), dest.display()))?;
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
            eprintln!("to-awq: error: {}", qwen2_prefill::report(&*e));
            ExitCode::FAILURE
        }
    }
}
