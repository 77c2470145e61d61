//! The fused CUDA forward pass against the candle path on the same GPU (run on a GPU machine:
//! `cargo test -p qwen2-prefill --features cuda,synthetic --test cuda_fused -- --ignored`).
//!
//! Generated dense checkpoints with the head sizes the fused attention kernel takes (128 with
//! 8 query heads per key/value head, as Qwen2.5-3B; 64 with 4), rows whose lengths straddle the
//! kernel's 64-token tiles; the fused f16/bf16 logits are compared with the candle path in f32
//! (itself checked against PyTorch by `golden.rs`), beside the candle path's own f16/bf16 error
//! as the yardstick.

#![cfg(all(feature = "cuda", feature = "synthetic"))]

use candle_core::{DType, Device, Tensor};
use qwen2_prefill::synthetic::{write_checkpoint, Preset, WeightFormat};
use qwen2_prefill::{ForwardPath, Qwen2};

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device (build with --features cuda, run on a GPU machine)")
}

fn preset(name: &str, hidden: usize, heads: usize, kv_heads: usize) -> Preset {
    Preset {
        name: name.into(),
        vocab_size: 4096,
        hidden_size: hidden,
        intermediate_size: 3 * hidden - 64,
        num_hidden_layers: 3,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        max_position_embeddings: 4096,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        format: WeightFormat::Float16 { group_size: 64 },
        max_shard_bytes: None,
    }
}

/// Deterministic pseudo-random token rows of the given lengths.
fn rows(lens: &[usize], vocab: u32) -> Vec<Vec<u32>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    lens.iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % u64::from(vocab)) as u32
                })
                .collect()
        })
        .collect()
}

fn logits(model: &Qwen2, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let t: Tensor = model.last_logits(&refs).unwrap();
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn spread(a: &[Vec<f32>]) -> f32 {
    let v: Vec<f32> = a.iter().flatten().copied().collect();
    v.iter().copied().fold(f32::MIN, f32::max) - v.iter().copied().fold(f32::MAX, f32::min)
}

#[test]
#[ignore = "needs --features cuda and a GPU"]
fn fused_matches_candle_path() {
    let dev = cuda();
    let lens = [1, 5, 17, 63, 64, 65, 130, 700, 1500];
    for (p, seed) in [
        (preset("gqa8-hd128", 1024, 8, 1), 7),
        (preset("gqa4-hd64", 512, 8, 2), 8),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &p, seed).unwrap();
        let rows = rows(&lens, p.vocab_size as u32);
        let reference =
            Qwen2::load_with_path(dir.path(), &dev, DType::F32, ForwardPath::Candle).unwrap();
        let want = logits(&reference, &rows);
        drop(reference);
        let scale = spread(&want);
        for dtype in [DType::F16, DType::BF16] {
            let candle =
                Qwen2::load_with_path(dir.path(), &dev, dtype, ForwardPath::Candle).unwrap();
            let yardstick = max_diff(&logits(&candle, &rows), &want);
            drop(candle);
            let fused = Qwen2::load(dir.path(), &dev, dtype).unwrap();
            assert_eq!(
                fused.forward_path(),
                ForwardPath::Fused,
                "{}: fused path not taken",
                p.name
            );
            let got = logits(&fused, &rows);
            let diff = max_diff(&got, &want);
            // One row at a time gives the same logits as the packed batch (up to the GEMMs'
            // choice of algorithm for another row count).
            let alone: Vec<Vec<f32>> = rows
                .iter()
                .flat_map(|r| logits(&fused, std::slice::from_ref(r)))
                .collect();
            let packing = max_diff(&alone, &got);
            eprintln!(
                "{} {dtype:?}: max |fused - f32| = {diff:.3e}, candle path {dtype:?}: {yardstick:.3e}, \
                 one row at a time vs packed: {packing:.3e} (logit spread {scale:.2})",
                p.name
            );
            let tol = 2.0 * yardstick.max(scale * 2e-3);
            assert!(
                diff.is_finite() && diff <= tol,
                "{} {dtype:?}: {diff} > {tol}",
                p.name
            );
            assert!(
                packing <= tol,
                "{} {dtype:?}: packing changed logits by {packing}",
                p.name
            );
        }
    }
}
