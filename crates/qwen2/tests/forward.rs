//! The forward pass's invariants: a row's logits do not depend on the other rows of its batch
//! (padding), f16 compute tracks f32, and bad rows are rejected with the row named.

use std::path::Path;

use candle_core::{DType, Device};
use qwen2_prefill::synthetic::{write_checkpoint, Preset};
use qwen2_prefill::Qwen2;
use rand::{Rng, SeedableRng};

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

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn padding_invariance() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &Preset::tiny(), 5).unwrap();
    let mut model = load_cpu(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let vocab = model.config().vocab_size as u32;
    let rows: Vec<Vec<u32>> = [3usize, 1, 30, 12, 30, 2]
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    for chunk in [512usize, 4] {
        model.set_query_chunk(chunk);
        let batched = logits_of(&model, &rows);
        let mut worst = 0f32;
        for (i, row) in rows.iter().enumerate() {
            let alone = logits_of(&model, std::slice::from_ref(row));
            worst = worst.max(max_abs_diff(&alone[0], &batched[i]));
        }
        eprintln!("chunk {chunk}: max |alone - batched| = {worst:e}");
        assert!(
            worst <= 1e-5,
            "chunk {chunk}: padding changed logits by {worst}"
        );
    }
    // Logits are informative, not constant.
    let l = logits_of(&model, &rows[..1]);
    let (mn, mx) = l[0]
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(mx - mn > 1.0, "logit range {mn}..{mx} is too flat");
}

#[test]
fn f16_compute_tracks_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &Preset::tiny(), 9).unwrap();
    let f32m = Qwen2::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let f16m = Qwen2::load(dir.path(), &Device::Cpu, DType::F16).unwrap();
    let rows: Vec<Vec<u32>> = vec![(0..20).collect(), vec![151000, 5, 77]];
    let a = logits_of(&f32m, &rows);
    let b = logits_of(&f16m, &rows);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0f32, f32::max);
    eprintln!("f16 vs f32 compute: max |diff| = {worst:e}");
    assert!(worst < 0.05, "f16 compute drifts by {worst}");
    let err = Qwen2::load(dir.path(), &Device::Cpu, DType::BF16)
        .err()
        .expect("bf16 on cpu is refused");
    assert!(format!("{err:#}").contains("BF16"));
}

#[test]
fn bad_rows_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &Preset::tiny_dense(), 1).unwrap();
    let model = load_cpu(dir.path());
    assert!(model.last_logits(&[]).is_err());
    let e = model.last_logits(&[&[1, 2], &[]]).unwrap_err();
    assert!(format!("{e}").contains("row 1"), "{e}");
    let e = model.last_logits(&[&[1, 4096]]).unwrap_err();
    assert!(format!("{e}").contains("4096"), "{e}");
}
