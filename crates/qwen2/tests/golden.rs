//! The Qwen2 prefill against PyTorch/Transformers golden logits, on the generated tiny
//! checkpoints (AWQ with GQA and an untied lm_head; dense f16 with tied embeddings).
//!
//! Fixture (never skipped; a missing one fails with the command that makes it):
//! `tests/fixtures/qwen2_tiny_logits.json` from `scripts/reference_logits.py` run with PyTorch
//! on the checkpoints written by the ignored test `write_dev_checkpoints`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qwen2_prefill::synthetic::{write_checkpoint, Preset};
use qwen2_prefill::Qwen2;

/// Golden tolerance: max |ours − PyTorch| over every stored logit (top-50, probes) and the
/// logsumexp over the whole vocabulary. Both sides compute in f32 from identical f32 weights;
/// what remains is summation order and transcendental rounding (~1e-6 relative on logits of a few
/// units), so 1e-4 leaves a wide margin while any real bug (nibble order, RoPE, mask, GQA
/// mapping) moves logits by 1e-2 or more.
const GOLDEN_TOL: f32 = 1e-4;

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo sets it; set it by hand when running a
/// test binary built elsewhere), else the one this file was compiled in.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixture(name: &str, how: &str) -> PathBuf {
    let p = manifest_dir().join("tests/fixtures").join(name);
    assert!(
        p.is_file(),
        "missing fixture {}: make it with {how}",
        p.display()
    );
    p
}

const LOGITS_HOW: &str =
    "`cargo test --release -p qwen2-prefill --test golden -- --ignored write_dev_checkpoints` \
     then, in crates/qwen2, `python3 scripts/reference_logits.py .devbin/tiny-ckpt .devbin/tiny-dense-ckpt \
     --out tests/fixtures/qwen2_tiny_logits.json` on a machine with torch + transformers";

/// The generated checkpoints the golden fixture was computed on: (fixture key, preset, seed).
fn golden_checkpoints() -> Vec<(&'static str, Preset, u64)> {
    vec![
        ("tiny-ckpt", Preset::tiny(), 0),
        ("tiny-dense-ckpt", Preset::tiny_dense(), 1),
    ]
}

/// Position-weighted checksum of a file (also computed by reference_logits.py): the bytes,
/// zero-padded to a multiple of 8, as little-endian u64 words `w_i`, summed as
/// `Σ w_i · (2i + 1) mod 2^64`.
fn checksum(path: &Path) -> u64 {
    let mut bytes = std::fs::read(path).unwrap();
    while !bytes.len().is_multiple_of(8) {
        bytes.push(0);
    }
    bytes.chunks_exact(8).enumerate().fold(0u64, |acc, (i, c)| {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        acc.wrapping_add(w.wrapping_mul(2 * i as u64 + 1))
    })
}

fn load_cpu(dir: &Path) -> Qwen2 {
    Qwen2::load(dir, &Device::Cpu, DType::F32).unwrap()
}

fn logits_of(model: &Qwen2, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let t = model.last_logits(&refs).unwrap();
    assert_eq!(t.dims(), &[rows.len(), model.config().vocab_size]);
    assert_eq!(t.dtype(), DType::F32);
    t.to_vec2::<f32>().unwrap()
}

fn logsumexp(v: &[f32]) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

fn json_u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn json_f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Writes the golden checkpoints to `crates/qwen2/.devbin/` for scripts/reference_logits.py.
#[test]
#[ignore = "writes .devbin/ checkpoints for the reference script"]
fn write_dev_checkpoints() {
    for (key, preset, seed) in golden_checkpoints() {
        let dir = manifest_dir().join(".devbin").join(key);
        write_checkpoint(&dir, &preset, seed).unwrap();
        eprintln!(
            "{}: checksum {}",
            dir.display(),
            checksum(&dir.join("model.safetensors"))
        );
    }
}

struct Golden {
    rows: Vec<Vec<u32>>,
    checksum: u64,
    top_ids: Vec<Vec<u32>>,
    top_values: Vec<Vec<f32>>,
    probe_ids: Vec<Vec<u32>>,
    probe_values: Vec<Vec<f32>>,
    logsumexp: Vec<f64>,
}

fn golden(key: &str) -> Golden {
    let path = fixture("qwen2_tiny_logits.json", LOGITS_HOW);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let c = &json["checkpoints"][key];
    assert!(c.is_object(), "{} has no checkpoint {key}", path.display());
    let results = c["results"].as_array().unwrap();
    Golden {
        rows: c["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(json_u32s)
            .collect(),
        checksum: c["weights_checksum"].as_str().unwrap().parse().unwrap(),
        top_ids: results.iter().map(|r| json_u32s(&r["top_ids"])).collect(),
        top_values: results
            .iter()
            .map(|r| json_f32s(&r["top_values"]))
            .collect(),
        probe_ids: results.iter().map(|r| json_u32s(&r["probe_ids"])).collect(),
        probe_values: results
            .iter()
            .map(|r| json_f32s(&r["probe_values"]))
            .collect(),
        logsumexp: results
            .iter()
            .map(|r| r["logsumexp"].as_f64().unwrap())
            .collect(),
    }
}

/// Max |ours − golden| over all stored values of every row.
fn golden_diff(g: &Golden, ours: &[Vec<f32>]) -> f32 {
    let mut worst = 0f32;
    for (i, row) in ours.iter().enumerate() {
        for (ids, vals) in [
            (&g.top_ids[i], &g.top_values[i]),
            (&g.probe_ids[i], &g.probe_values[i]),
        ] {
            for (&id, &v) in ids.iter().zip(vals.iter()) {
                worst = worst.max((row[id as usize] - v).abs());
            }
        }
        worst = worst.max((logsumexp(row) - g.logsumexp[i]).abs() as f32);
        // The golden argmax is ours too unless the top two are within tolerance.
        let ours_max = row
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |a, (j, &x)| {
                if x > a.1 {
                    (j, x)
                } else {
                    a
                }
            });
        if g.top_values[i][0] - g.top_values[i][1] > 2.0 * GOLDEN_TOL {
            assert_eq!(ours_max.0 as u32, g.top_ids[i][0], "argmax of row {i}");
        }
    }
    worst
}

fn check_golden(key: &str, preset: Preset, seed: u64) {
    let g = golden(key);
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &preset, seed).unwrap();
    assert_eq!(
        checksum(&dir.path().join("model.safetensors")),
        g.checksum,
        "the generator's {key} differs from the checkpoint the golden logits were computed on; \
         regenerate the fixture: {LOGITS_HOW}"
    );
    let mut model = load_cpu(dir.path());
    let lens: Vec<usize> = g.rows.iter().map(|r| r.len()).collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "golden rows must have different lengths"
    );
    let ours = logits_of(&model, &g.rows);
    let diff = golden_diff(&g, &ours);
    eprintln!("{key}: max |candle - torch| = {diff:e} (rows of lengths {lens:?})");
    assert!(diff <= GOLDEN_TOL, "{key}: max diff {diff} > {GOLDEN_TOL}");

    // Several query chunks per row take the same path to the same numbers.
    model.set_query_chunk(7);
    let chunked = logits_of(&model, &g.rows);
    let diff = golden_diff(&g, &chunked);
    eprintln!("{key}: query chunk 7: max |candle - torch| = {diff:e}");
    assert!(
        diff <= GOLDEN_TOL,
        "{key} (chunk 7): max diff {diff} > {GOLDEN_TOL}"
    );
}

#[test]
fn golden_logits_tiny_awq() {
    let (key, preset, seed) = golden_checkpoints().remove(0);
    check_golden(key, preset, seed);
}

#[test]
fn golden_logits_tiny_dense_tied() {
    let (key, preset, seed) = golden_checkpoints().remove(1);
    check_golden(key, preset, seed);
}

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device (build with --features cuda, run on a GPU machine)")
}

/// The golden batches on the GPU: f32 within the CPU tolerance, f16/bf16 within their rounding.
#[test]
#[ignore = "needs --features cuda and a GPU"]
fn cuda_matches_golden() {
    let dev = cuda();
    for (key, preset, seed) in golden_checkpoints() {
        let g = golden(key);
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &preset, seed).unwrap();
        for (dtype, tol) in [
            (DType::F32, GOLDEN_TOL),
            (DType::F16, 0.05),
            (DType::BF16, 0.3),
        ] {
            let mut model = Qwen2::load(dir.path(), &dev, dtype).unwrap();
            let ours = logits_of(&model, &g.rows);
            let diff = golden_diff_loose(&g, &ours);
            model.set_query_chunk(7);
            let chunked = logits_of(&model, &g.rows);
            let diff_chunked = golden_diff_loose(&g, &chunked);
            eprintln!(
                "cuda {key} {dtype:?}: max |gpu - torch| = {diff:e} (chunk 7: {diff_chunked:e})"
            );
            assert!(
                diff <= tol && diff_chunked <= tol,
                "{key} {dtype:?}: {diff} > {tol}"
            );
        }
    }
}

/// Like [`golden_diff`] without the argmax check (low-precision ties may swap).
fn golden_diff_loose(g: &Golden, ours: &[Vec<f32>]) -> f32 {
    let mut worst = 0f32;
    for (i, row) in ours.iter().enumerate() {
        for (ids, vals) in [
            (&g.top_ids[i], &g.top_values[i]),
            (&g.probe_ids[i], &g.probe_values[i]),
        ] {
            for (&id, &v) in ids.iter().zip(vals.iter()) {
                worst = worst.max((row[id as usize] - v).abs());
            }
        }
        worst = worst.max((logsumexp(row) - g.logsumexp[i]).abs() as f32);
    }
    worst
}
