#![cfg(feature = "cuda")]
//! The fused CUDA kernel against the CPU path: random persistent batches driven by random
//! update sequences, for ForceToken, AllowedIds (both modes) and Pipelines of both, in f32, f16
//! and bf16, with vocabularies that are not a multiple of anything and logits that hold NaN and
//! ±inf. The logits are a view at a row offset into a larger buffer, so that the kernel sees
//! an unaligned start, and the rows around the view are poison that must stay untouched.
//!
//! Run on a machine with an NVIDIA GPU: `cargo test --release --features cuda --test cuda_parity`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::{
    AllowedIds, AllowedMode, BatchUpdate, BatchUpdateBuilder, ForceToken, LogitsProcessor,
    Pipeline, ProcessorConfig, RequestParams,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Force,
    AllowedBoost,
    AllowedMask,
    ForceThenBoost,
    ForceThenMask,
    MaskThenForce,
}

const KINDS: [Kind; 6] = [
    Kind::Force,
    Kind::AllowedBoost,
    Kind::AllowedMask,
    Kind::ForceThenBoost,
    Kind::ForceThenMask,
    Kind::MaskThenForce,
];

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device")
}

/// The same processor twice: on the CPU and on `gpu`.
fn build(
    kind: Kind,
    cap: usize,
    vocab: usize,
    _max_tokens: usize,
    allowed: &[u32],
    boost: f32,
    gpu: &Device,
) -> [Box<dyn LogitsProcessor>; 2] {
    [Device::Cpu, gpu.clone()].map(|device| {
        let cfg = ProcessorConfig::builder()
            .max_batch_size(cap)
            .vocab_size(vocab)
            .device(device)
            .build()
            .unwrap();
        let force = || ForceToken::new(&cfg).unwrap();
        let ids = allowed.iter().copied();
        let boosted = || AllowedIds::new(&cfg, ids.clone(), AllowedMode::Boost(boost)).unwrap();
        let masked = || AllowedIds::new(&cfg, ids.clone(), AllowedMode::Mask).unwrap();
        let p: Box<dyn LogitsProcessor> = match kind {
            Kind::Force => Box::new(force()),
            Kind::AllowedBoost => Box::new(boosted()),
            Kind::AllowedMask => Box::new(masked()),
            Kind::ForceThenBoost => Box::new(
                Pipeline::builder(&cfg)
                    .with(force())
                    .with(boosted())
                    .build()
                    .unwrap(),
            ),
            Kind::ForceThenMask => Box::new(
                Pipeline::builder(&cfg)
                    .with(force())
                    .with(masked())
                    .build()
                    .unwrap(),
            ),
            Kind::MaskThenForce => Box::new(
                Pipeline::builder(&cfg)
                    .with(masked())
                    .with(force())
                    .build()
                    .unwrap(),
            ),
        };
        p
    })
}

/// Random token ids, biased towards the ends of the vocabulary (the unaligned heads and tails).
fn random_ids(rng: &mut StdRng, vocab: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(0..vocab.min(3)) as u32,
            1 => (vocab - 1 - rng.random_range(0..vocab.min(3))) as u32,
            _ => rng.random_range(0..vocab) as u32,
        })
        .collect()
}

/// One engine step in vLLM's style: some requests finish, new ones take the lowest freed rows
/// (then the end of the batch), the last requests move into the holes, sometimes a swap.
/// Returns the update (if anything changed) and the new batch size; `forced[row]` follows.
fn random_step(
    rng: &mut StdRng,
    batch: usize,
    cap: usize,
    vocab: usize,
    max_tokens: usize,
    forced: &mut [Option<Vec<u32>>],
) -> (Option<BatchUpdate>, usize) {
    let mut b = BatchUpdateBuilder::new();
    let mut occupied: Vec<bool> = (0..cap).map(|r| r < batch).collect();
    let mut state: Vec<Option<Option<Vec<u32>>>> = (0..cap)
        .map(|r| (r < batch).then(|| forced[r].clone()))
        .collect();
    if rng.random_bool(0.2) {
        return (None, batch);
    }
    for r in 0..batch {
        if rng.random_bool(0.25) {
            b.remove(r);
            occupied[r] = false;
            state[r] = None;
        }
    }
    let adds = rng.random_range(0..4usize);
    for _ in 0..adds {
        let row = match b.pop_removed() {
            Some(row) => row,
            None => match (0..cap).find(|&r| !occupied[r] && r >= batch) {
                Some(row) => row,
                None => break,
            },
        };
        let tokens = if rng.random_bool(0.75) {
            let n = rng.random_range(1..=max_tokens);
            Some(random_ids(rng, vocab, n))
        } else {
            None
        };
        let mut params = RequestParams::new();
        if let Some(t) = &tokens {
            params = params.with_allowed_token_ids(t.iter().copied());
        }
        b.add(row, Arc::new(params));
        occupied[row] = true;
        state[row] = Some(tokens.map(|mut t| {
            t.sort_unstable();
            t.dedup();
            t
        }));
    }
    // Compact: move the last request into the lowest hole until rows 0..n are full.
    while let Some(last) = (0..cap).rev().find(|&r| occupied[r]) {
        let Some(hole) = (0..last).find(|&r| !occupied[r]) else {
            break;
        };
        b.move_request(last, hole);
        occupied[hole] = true;
        occupied[last] = false;
        state[hole] = state[last].take();
    }
    let n = occupied.iter().filter(|&&o| o).count();
    if n >= 2 && rng.random_bool(0.3) {
        let (x, y) = (rng.random_range(0..n), rng.random_range(0..n));
        b.swap(x, y);
        state.swap(x, y);
    }
    for (r, slot) in forced.iter_mut().enumerate() {
        *slot = state[r].clone().flatten();
    }
    (b.build(n).cloned(), n)
}

/// Random logits with NaN, ±inf, huge values (that a boost rounds to inf in f16) and
/// subnormals.
fn random_values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.random_range(0..100) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 => f32::INFINITY,
            3 => 65_450.0,
            4 => 1e-40,
            5 => -3.0e38,
            _ => rng.random_range(-30.0f32..30.0),
        })
        .collect()
}

fn to_host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

struct Case {
    kind: Kind,
    dtype: DType,
    vocab: usize,
    seed: u64,
    steps: usize,
}

fn run_case(c: &Case, gpu: &Device) {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let cap = if c.vocab > 10_000 { 12 } else { 40 };
    let max_tokens = rng.random_range(1..=6);
    let n_allowed = if rng.random_bool(0.5) {
        rng.random_range(1..=4)
    } else {
        rng.random_range(1..=c.vocab.max(2) / 2)
    };
    let allowed = random_ids(&mut rng, c.vocab, n_allowed);
    let boost = if rng.random_bool(0.5) { 100.0 } else { 0.37 };
    let [mut cpu, mut dev] = build(c.kind, cap, c.vocab, max_tokens, &allowed, boost, gpu);
    let mut forced: Vec<Option<Vec<u32>>> = vec![None; cap];
    let mut batch = 0;
    let ctx = |step: usize| {
        format!(
            "{:?} {:?} vocab {} seed {} step {step}",
            c.kind, c.dtype, c.vocab, c.seed
        )
    };
    for step in 0..c.steps {
        let (update, n) = random_step(&mut rng, batch, cap, c.vocab, max_tokens, &mut forced);
        batch = n;
        cpu.update_state(update.as_ref())
            .unwrap_or_else(|e| panic!("{}: cpu {e}", ctx(step)));
        dev.update_state(update.as_ref())
            .unwrap_or_else(|e| panic!("{}: cuda {e}", ctx(step)));
        // A buffer of `pad + batch + 2` rows; the logits are rows pad..pad + batch.
        let pad = rng.random_range(0..2usize);
        let rows = pad + batch + 2;
        let values = random_values(&mut rng, rows * c.vocab);
        let host = Tensor::from_vec(values, (rows, c.vocab), &Device::Cpu)
            .unwrap()
            .to_dtype(c.dtype)
            .unwrap();
        let original = to_host(&host);
        let on_gpu = host.to_device(gpu).unwrap();
        let on_cpu = host.copy().unwrap();
        for (p, buf) in [(&mut cpu, &on_cpu), (&mut dev, &on_gpu)] {
            let view = buf.narrow(0, pad, batch).unwrap();
            assert!(view.is_contiguous());
            p.apply(&view)
                .unwrap_or_else(|e| panic!("{}: apply {e}", ctx(step)));
        }
        let (want, got) = (to_host(&on_cpu), to_host(&on_gpu));
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let (row, tok) = (i / c.vocab, i % c.vocab);
            assert!(
                same(*w, *g),
                "{}: row {row} (logits row {}) token {tok}: cuda {g} cpu {w} (was {})",
                ctx(step),
                row as isize - pad as isize,
                original[i]
            );
        }
        // Poison: the rows around the view are untouched; so are unforced rows of ForceToken.
        for (i, g) in got.iter().enumerate() {
            let row = i / c.vocab;
            let outside = row < pad || row >= pad + batch;
            let unforced = matches!(c.kind, Kind::Force) && !outside && forced[row - pad].is_none();
            if outside || unforced {
                assert!(
                    same(*g, original[i]),
                    "{}: untouched row {row} changed",
                    ctx(step)
                );
            }
        }
        // Forced rows keep exactly their ids (where those were not −inf or NaN already).
        if matches!(c.kind, Kind::Force) {
            for (r, ids) in forced.iter().enumerate().take(batch) {
                if let Some(ids) = ids {
                    let row = &got[(pad + r) * c.vocab..(pad + r + 1) * c.vocab];
                    for (t, v) in row.iter().enumerate() {
                        if !ids.contains(&(t as u32)) {
                            assert_eq!(*v, f32::NEG_INFINITY, "{}: row {r} token {t}", ctx(step));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn cuda_matches_cpu_on_random_update_sequences() {
    let gpu = cuda();
    let mut cases = 0;
    for (k, kind) in KINDS.into_iter().enumerate() {
        for (d, dtype) in DTYPES.into_iter().enumerate() {
            for (v, vocab) in [37usize, 1009, 151_936, 4099].into_iter().enumerate() {
                let steps = if vocab > 10_000 { 6 } else { 25 };
                let seed = (k * 100 + d * 10 + v) as u64;
                run_case(
                    &Case {
                        kind,
                        dtype,
                        vocab,
                        seed,
                        steps,
                    },
                    &gpu,
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 6 * 3 * 4);
}

#[test]
fn a_vocabulary_of_one_and_a_full_batch() {
    let gpu = cuda();
    for kind in KINDS {
        for dtype in DTYPES {
            run_case(
                &Case {
                    kind,
                    dtype,
                    vocab: 1,
                    seed: 7,
                    steps: 12,
                },
                &gpu,
            );
            run_case(
                &Case {
                    kind,
                    dtype,
                    vocab: 33,
                    seed: 8,
                    steps: 40,
                },
                &gpu,
            );
        }
    }
}

#[test]
fn unchanged_steps_need_no_upload_and_give_the_same_logits() {
    // Apply twice on one batch (update None in between): the kernel reads state that was
    // uploaded asynchronously the step before.
    let gpu = cuda();
    let vocab = 151_936;
    let cfg = ProcessorConfig::builder()
        .max_batch_size(256)
        .vocab_size(vocab)
        .device(gpu.clone())
        .build()
        .unwrap();
    let mut p = Pipeline::builder(&cfg)
        .with(ForceToken::new(&cfg).unwrap())
        .with(AllowedIds::new(&cfg, [32, 33, 48_731], AllowedMode::Boost(100.0)).unwrap())
        .build()
        .unwrap();
    let mut b = BatchUpdateBuilder::new();
    for row in 0..256 {
        let params = if row % 3 == 0 {
            RequestParams::new()
        } else {
            RequestParams::new().with_allowed_token_ids([32, 33, 48_731, row as u32])
        };
        b.add(row, Arc::new(params));
    }
    p.update_state(b.build(256)).unwrap();
    for _ in 0..3 {
        let logits = Tensor::ones((256, vocab), DType::BF16, &gpu).unwrap();
        p.apply(&logits).unwrap();
        let rows = logits
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (r, row) in rows.iter().enumerate() {
            let finite: Vec<usize> = (0..vocab).filter(|&t| row[t].is_finite()).collect();
            if r % 3 == 0 {
                assert_eq!(finite.len(), vocab, "row {r}");
                assert_eq!(row[32], 101.0);
                assert_eq!(row[48_731], 101.0);
            } else {
                let mut want = vec![32, 33, 48_731, r];
                want.sort_unstable();
                want.dedup();
                assert_eq!(finite, want, "row {r}");
                assert_eq!(row[33], 101.0);
                if r != 32 && r != 33 {
                    assert_eq!(row[r], 1.0);
                }
            }
        }
        p.update_state(None).unwrap();
    }
}
