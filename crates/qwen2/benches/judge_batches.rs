//! The judge's batches through the model alone, on CUDA: the Rust side of
//! `benches/peer_judge_torch.py`, which runs PyTorch + transformers on the same file.
//!
//! ```text
//! arena_judge --model DIR --validate 100 --dump-prompts prompts.jsonl ...   # the batches
//! cargo bench -p qwen2-prefill --features cuda --bench judge_batches -- \
//!     --model DIR --prompts prompts.jsonl [--dtype f16|bf16] [--path fused|candle] \
//!     [--passes 3] [--out probs.csv] [--choices 32,33,48731]
//! ```
//!
//! Reads the dump (JSON lines; `id`, `token_ids` and `batch`, the index of the batch the row ran
//! in), loads the model, runs [`Qwen2::prepare`] (first-use costs, outside the timing), then runs
//! every batch in order `--passes` times, synchronising only at the end of a pass. Prints each
//! pass's time and real tokens/s, the GPU memory in use on the device (`cuMemGetInfo`, the same
//! figure the peer prints from `torch.cuda.mem_get_info`) before loading, after loading and
//! after the passes, and writes the softmax over the A/B/tie logits of each row to `--out`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use qwen2_prefill::{ForwardPath, Qwen2};

const USAGE: &str = "usage: judge_batches --model DIR --prompts FILE [--dtype f16|bf16] \
                     [--path fused|candle] [--passes N] [--out FILE] [--choices A,B,TIE]";

struct Args {
    model: PathBuf,
    prompts: PathBuf,
    dtype: DType,
    path: ForwardPath,
    passes: usize,
    out: Option<PathBuf>,
    choices: Vec<u32>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let (mut model, mut prompts, mut out) = (None, None, None);
    let (mut dtype, mut path, mut passes) = (DType::F16, ForwardPath::Fused, 3);
    let mut choices = vec![32, 33, 48731];
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value("--model")?)),
            "--prompts" => prompts = Some(PathBuf::from(value("--prompts")?)),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--dtype" => {
                dtype = match value("--dtype")?.as_str() {
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => bail!("--dtype {other:?}: f16 or bf16"),
                }
            }
            "--path" => {
                path = match value("--path")?.as_str() {
                    "fused" => ForwardPath::Fused,
                    "candle" => ForwardPath::Candle,
                    other => bail!("--path {other:?}: fused or candle"),
                }
            }
            "--passes" => passes = value("--passes")?.parse().context("--passes")?,
            "--choices" => {
                choices = value("--choices")?
                    .split(',')
                    .map(|c| c.parse().context("--choices takes three token ids"))
                    .collect::<Result<_>>()?
            }
            "--bench" => {} // added by `cargo bench`
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(choices.len() == 3, "--choices takes three token ids");
    Ok(Args {
        model: model.context(USAGE)?,
        prompts: prompts.context(USAGE)?,
        dtype,
        path,
        passes: passes.max(1),
        out,
        choices,
    })
}

/// The rows of each batch, in batch order: `(id, token ids)`.
type Batches = Vec<Vec<(String, Vec<u32>)>>;

fn read_batches(path: &PathBuf) -> Result<Batches> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut batches: BTreeMap<u64, Vec<(String, Vec<u32>)>> = BTreeMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), n + 1))?;
        let field = |k: &str| {
            v.get(k)
                .with_context(|| format!("{}: line {} has no `{k}`", path.display(), n + 1))
        };
        let id = match field("id")? {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let batch = field("batch")?
            .as_u64()
            .context("`batch` is not an integer")?;
        let ids: Vec<u32> = field("token_ids")?
            .as_array()
            .context("`token_ids` is not an array")?
            .iter()
            .map(|t| {
                t.as_u64()
                    .map(|t| t as u32)
                    .context("a token id is not an integer")
            })
            .collect::<Result<_>>()?;
        ensure!(
            !ids.is_empty(),
            "{}: line {}: no tokens",
            path.display(),
            n + 1
        );
        batches.entry(batch).or_default().push((id, ids));
    }
    ensure!(!batches.is_empty(), "{}: no rows", path.display());
    Ok(batches.into_values().collect())
}

/// GPU memory in use on the whole device, MiB.
fn used_mib(dev: &Device) -> Result<f64> {
    let Device::Cuda(cuda) = dev else {
        bail!("not a CUDA device")
    };
    let ctx = cuda.cuda_stream().context().clone();
    ctx.bind_to_thread()?;
    let (free, total) = ctx.mem_get_info()?;
    Ok((total - free) as f64 / (1u64 << 20) as f64)
}

/// Returns the unused memory of the device's default pool (where candle's allocations come
/// from) to the driver.
fn trim_pool(dev: &Device) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let Device::Cuda(cuda) = dev else {
        bail!("not a CUDA device")
    };
    let ctx = cuda.cuda_stream().context().clone();
    ctx.bind_to_thread()?;
    // SAFETY: the device handle comes from a live context; the pool is the device's own.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device())?;
        result::mem_pool::trim_to(pool, 0)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse(std::env::args().skip(1))?;
    let dev = Device::new_cuda(0)?;
    let batches = read_batches(&args.prompts)?;
    let rows: usize = batches.iter().map(Vec::len).sum();
    let real: usize = batches.iter().flatten().map(|(_, t)| t.len()).sum();
    let before = used_mib(&dev)?;
    let t = Instant::now();
    let model = Qwen2::load_with_path(&args.model, &dev, args.dtype, args.path)?;
    dev.synchronize()?;
    let after_load = used_mib(&dev)?;
    // What the stream-ordered allocator's pool still holds from loading, for the record.
    let after_trim = trim_pool(&dev).and_then(|()| used_mib(&dev))?;
    let max_tokens = batches
        .iter()
        .map(|b| b.iter().map(|(_, t)| t.len()).sum::<usize>())
        .max()
        .unwrap_or(1);
    let max_rows = batches.iter().map(Vec::len).max().unwrap_or(1);
    model.prepare(max_tokens, max_rows)?;
    dev.synchronize()?;
    let loaded = used_mib(&dev)?;
    println!(
        "ours: {:?} {:?} forward pass, {rows} rows in {} batches, {real} real tokens; loaded and prepared in {:.1} s",
        args.dtype,
        model.forward_path(),
        batches.len(),
        t.elapsed().as_secs_f64()
    );
    let choices = candle_core::Tensor::new(&args.choices[..], &dev)?;
    let mut probs: Vec<(String, Vec<f32>)> = Vec::with_capacity(rows);
    for pass in 1..=args.passes {
        probs.clear();
        let mut pending = Vec::with_capacity(batches.len());
        let t = Instant::now();
        for batch in &batches {
            let refs: Vec<&[u32]> = batch.iter().map(|(_, ids)| ids.as_slice()).collect();
            let logits = model.last_logits(&refs)?;
            // A/B/tie only, as the judge's ForceToken leaves them; read back after the pass.
            let p = candle_nn::ops::softmax_last_dim(&logits.index_select(&choices, 1)?)?;
            pending.push(p);
        }
        let pending: Vec<Vec<Vec<f32>>> = pending
            .iter()
            .map(|p| p.to_dtype(DType::F32)?.to_vec2())
            .collect::<candle_core::Result<_>>()?;
        let secs = t.elapsed().as_secs_f64();
        for (batch, p) in batches.iter().zip(pending) {
            for ((id, _), row) in batch.iter().zip(p) {
                probs.push((id.clone(), row));
            }
        }
        println!(
            "ours {:?} pass {pass}: {secs:.3} s, {real} real tokens, {:.0} real tokens/s",
            args.dtype,
            real as f64 / secs
        );
    }
    println!(
        "ours {:?} GPU memory in use on the device (cuMemGetInfo): {before:.0} MiB before loading, \
         {after_load:.0} MiB loaded ({after_trim:.0} MiB with the allocator's pool trimmed), \
         {loaded:.0} MiB prepared, {:.0} MiB after the passes",
        args.dtype,
        used_mib(&dev)?
    );
    if let Some(out) = &args.out {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(out)
                .with_context(|| format!("cannot create {}", out.display()))?,
        );
        writeln!(f, "id,winner_model_a,winner_model_b,winner_tie")?;
        for (id, p) in &probs {
            writeln!(f, "{id},{:.6},{:.6},{:.6}", p[0], p[1], p[2])?;
        }
        f.flush()?;
    }
    Ok(())
}
