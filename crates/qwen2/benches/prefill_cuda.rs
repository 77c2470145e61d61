//! Prefill throughput on CUDA with the shapes of Qwen2.5-3B-Instruct-AWQ (random weights):
//! generates (or reuses, in `$QWEN2_3B_DIR`) the checkpoint, loads it in bf16 and f16 and times
//! prefill batches up to 8 × 8192 tokens (best of two after the first).
//!
//! ```text
//! cargo bench -p qwen2-prefill --features cuda,synthetic --bench prefill_cuda
//! ```

use std::path::PathBuf;

use candle_core::{DType, Device};
use qwen2_prefill::synthetic::{write_checkpoint, Preset};
use qwen2_prefill::Qwen2;
use rand::{Rng, SeedableRng};

fn main() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let dir = std::env::var_os("QWEN2_3B_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("qwen2.5-3b-awq-gen"));
    if !dir.join("config.json").is_file() {
        let t = std::time::Instant::now();
        write_checkpoint(&dir, &Preset::qwen25_3b(), 0).unwrap();
        eprintln!(
            "generated {} in {:.1} s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    for dtype in [DType::BF16, DType::F16] {
        let t = std::time::Instant::now();
        let model = Qwen2::load(&dir, &dev, dtype).unwrap();
        dev.synchronize().unwrap();
        eprintln!("{dtype:?}: loaded in {:.1} s", t.elapsed().as_secs_f64());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let shapes: &[(usize, usize)] = if dtype == DType::BF16 {
            &[
                (1, 64),
                (16, 512),
                (8, 2048),
                (4, 4096),
                (2, 8192),
                (8, 8192),
            ]
        } else {
            &[(1, 64), (8, 2048)]
        };
        for (i, &(batch, len)) in shapes.iter().enumerate() {
            // Lengths from len/2 to len, the last row full: padding is exercised.
            let rows: Vec<Vec<u32>> = (0..batch)
                .map(|r| {
                    let n = if r + 1 == batch {
                        len
                    } else {
                        rng.random_range(len / 2..=len)
                    };
                    (0..n).map(|_| rng.random_range(0..151_643u32)).collect()
                })
                .collect();
            let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
            let real: usize = rows.iter().map(|r| r.len()).sum();
            let reps = if i == 0 { 1 } else { 2 };
            let mut best = f64::MAX;
            let mut out = None;
            for _ in 0..reps {
                let t = std::time::Instant::now();
                let logits = model.last_logits(&refs).unwrap();
                let v = logits.to_vec2::<f32>().unwrap();
                best = best.min(t.elapsed().as_secs_f64());
                out = Some(v);
            }
            let v = out.unwrap();
            assert!(
                v.iter().flatten().all(|x| x.is_finite()),
                "non-finite logits"
            );
            let row0 = &v[0];
            let mean = row0.iter().sum::<f32>() / row0.len() as f32;
            let std =
                (row0.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / row0.len() as f32).sqrt();
            eprintln!(
                "{dtype:?} batch {batch} x {len} ({real} real tokens): {:.3} s, {:.0} tokens/s, logit std {std:.2}",
                best,
                real as f64 / best
            );
        }
    }
}
