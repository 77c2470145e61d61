#![cfg(feature = "cuda")]
//! Every built-in processor on CUDA against the CPU path, bit for bit: random engine streams
//! (adds with prompts, removes, moves, swaps, output tokens appended — through the handles or
//! `Pipeline::append_sampled` — and rolled back, grammar
//! bitmasks given as a host slice on the CPU and as a device tensor on CUDA) drive two
//! pipelines with the same random subset and order of stages, in f32, f16 and bf16, for small
//! and real-sized vocabularies. Min-p and the penalties are computed with the same f32
//! operations on both sides, so no tolerance is needed.
//!
//! Run on a machine with an NVIDIA GPU: `cargo test --release --features cuda --test
//! cuda_processors`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Force,
    Bitmask,
    AllowedMask,
    AllowedBoost,
    BadWords,
    MinTokens,
    Bias,
    Penalties,
    Temperature,
    MinP,
}

const ALL: [Kind; 10] = [
    Kind::Force,
    Kind::Bitmask,
    Kind::AllowedMask,
    Kind::AllowedBoost,
    Kind::BadWords,
    Kind::MinTokens,
    Kind::Bias,
    Kind::Penalties,
    Kind::Temperature,
    Kind::MinP,
];

fn stage(kind: Kind, c: &ProcessorConfig, global: &[u32]) -> Stage {
    let eos = (c.vocab_size() - 1) as u32;
    match kind {
        Kind::Force => ForceToken::new(c).unwrap().into(),
        Kind::Bitmask => TokenBitmask::new(c).unwrap().into(),
        Kind::AllowedMask => AllowedIds::new(c, global.iter().copied(), AllowedMode::Mask)
            .unwrap()
            .into(),
        Kind::AllowedBoost => AllowedIds::new(c, global.iter().copied(), AllowedMode::Boost(3.25))
            .unwrap()
            .into(),
        Kind::BadWords => BadWords::new(c).unwrap().into(),
        Kind::MinTokens => MinTokens::new(c, [eos]).unwrap().into(),
        Kind::Bias => LogitBias::new(c).unwrap().into(),
        Kind::Penalties => Penalties::new(c).unwrap().into(),
        Kind::Temperature => Temperature::new(c).unwrap().into(),
        Kind::MinP => MinP::new(c).unwrap().into(),
    }
}

fn ids(rng: &mut StdRng, vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn small(rng: &mut StdRng) -> u32 {
    rng.random_range(0..8)
}

fn random_params(rng: &mut StdRng, vocab: usize) -> RequestParams {
    let mut p = RequestParams::new();
    if rng.random_bool(0.3) {
        let n = if rng.random_bool(0.5) {
            rng.random_range(1..10)
        } else {
            rng.random_range(1..vocab.min(3000) + 1)
        };
        let mut allowed = ids(rng, vocab, n);
        allowed.push(small(rng));
        p = p.with_allowed_token_ids(allowed);
    }
    if rng.random_bool(0.4) {
        let n = rng.random_range(1..50);
        let mut bias: Vec<(u32, f32)> = ids(rng, vocab, n)
            .into_iter()
            .map(|t| (t, rng.random_range(-8.0f32..8.0)))
            .collect();
        bias.push((small(rng), 1.5));
        p = p.with_logit_bias(bias);
    }
    if rng.random_bool(0.4) {
        p = p.with_min_tokens(rng.random_range(1..5));
        let n = rng.random_range(0..3);
        p = p.with_stop_token_ids(ids(rng, vocab, n));
    }
    if rng.random_bool(0.4) {
        p = p.with_min_p([0.01, 0.2, 0.5, 1.0][rng.random_range(0..4)]);
    }
    if rng.random_bool(0.4) {
        let n = rng.random_range(1..4);
        let words: Vec<Vec<u32>> = (0..n)
            .map(|_| (0..rng.random_range(1..4)).map(|_| small(rng)).collect())
            .collect();
        p = p.with_bad_words(words);
    }
    if rng.random_bool(0.5) {
        p = p
            .with_repetition_penalty([1.0, 0.7, 1.3, 2.0][rng.random_range(0..4)])
            .with_frequency_penalty([0.0, 0.5, -0.25][rng.random_range(0..3)])
            .with_presence_penalty([0.0, 1.0, -0.5][rng.random_range(0..3)]);
    }
    if rng.random_bool(0.4) {
        p = p.with_temperature([0.0, 0.5, 0.7, 1.0, 1.5][rng.random_range(0..5)]);
    }
    p
}

fn random_values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.random_range(0..200) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 => f32::INFINITY,
            3 => 65_450.0,
            4 => 1e-40,
            _ => rng.random_range(-12.0f32..12.0),
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

struct Req {
    params: Arc<RequestParams>,
    prompt: Vec<u32>,
    out: OutputTokens,
    len: usize,
}

fn run_case(seed: u64, vocab: usize, cap: usize, steps: usize, only: Option<Kind>, gpu: &Device) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dtype = DTYPES[rng.random_range(0..3)];
    let mut kinds: Vec<Kind> = ALL.to_vec();
    kinds.shuffle(&mut rng);
    let keep = if rng.random_bool(0.3) {
        1
    } else {
        rng.random_range(1..=ALL.len())
    };
    kinds.truncate(keep);
    if let Some(k) = only {
        kinds = vec![k];
    }
    if kinds.contains(&Kind::AllowedMask) && kinds.contains(&Kind::AllowedBoost) {
        kinds.retain(|k| *k != Kind::AllowedMask);
    }
    let n_global = rng.random_range(1..40);
    let global = ids(&mut rng, vocab, n_global);
    let ctx = format!("seed {seed} vocab {vocab} {dtype:?} stages {kinds:?}");
    let [mut cpu, mut dev] = [Device::Cpu, gpu.clone()].map(|device| {
        let c = ProcessorConfig::builder()
            .max_batch_size(cap)
            .vocab_size(vocab)
            .device(device)
            .build()
            .unwrap();
        let mut b = Pipeline::builder(&c);
        for &k in &kinds {
            b = b.with(stage(k, &c, &global));
        }
        b.build().unwrap()
    });
    let words = vocab.div_ceil(32);
    let mut rows: Vec<Req> = Vec::new();
    let mut changes = BatchUpdateBuilder::new();
    for step in 0..steps {
        for r in rows.iter_mut() {
            match rng.random_range(0..5) {
                0 if r.len > 0 => {
                    r.len = rng.random_range(0..r.len);
                    r.out.truncate(r.len);
                }
                1..=3 => {
                    let t = if rng.random_bool(0.5) {
                        small(&mut rng)
                    } else {
                        rng.random_range(0..vocab as u32)
                    };
                    r.out.push(t);
                    r.len += 1;
                }
                _ => {}
            }
        }
        let mut slots: Vec<Option<Req>> = rows.drain(..).map(Some).collect();
        for i in (0..slots.len()).rev() {
            if rng.random_bool(0.2) {
                changes.remove(i);
                slots[i] = None;
            }
        }
        for _ in 0..rng.random_range(0..4) {
            let row = match changes.pop_removed() {
                Some(r) => r,
                None if slots.len() < cap => {
                    slots.push(None);
                    slots.len() - 1
                }
                None => break,
            };
            let n_prompt = rng.random_range(0..20);
            let prompt: Vec<u32> = (0..n_prompt)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        small(&mut rng)
                    } else {
                        rng.random_range(0..vocab as u32)
                    }
                })
                .collect();
            let req = Req {
                params: Arc::new(random_params(&mut rng, vocab)),
                prompt,
                out: OutputTokens::new(),
                len: 0,
            };
            changes
                .add(row, req.params.clone())
                .with_prompt(req.prompt.clone())
                .with_output_tokens(req.out.clone());
            slots[row] = Some(req);
        }
        while let Some(hole) = slots.iter().position(Option::is_none) {
            let Some(top) = slots.iter().rposition(Option::is_some) else {
                break;
            };
            if top < hole {
                break;
            }
            changes.move_request(top, hole);
            slots[hole] = slots[top].take();
        }
        let n = slots.iter().take_while(|s| s.is_some()).count();
        slots.truncate(n);
        if n >= 2 && rng.random_bool(0.3) {
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            changes.swap(a, b);
            slots.swap(a, b);
        }
        rows = slots.into_iter().map(Option::unwrap).collect();
        let update = changes.build(rows.len()).cloned();
        cpu.update_state(update.as_ref())
            .unwrap_or_else(|e| panic!("{ctx} step {step}: cpu {e}"));
        dev.update_state(update.as_ref())
            .unwrap_or_else(|e| panic!("{ctx} step {step}: cuda {e}"));
        let batch = rows.len();
        if batch == 0 {
            continue;
        }
        // Sometimes the step's sampled tokens go through one pipeline's bulk path (the lists
        // are shared: the other pipeline follows them through the handles).
        if rng.random_bool(0.25) {
            let sampled: Vec<u32> = (0..batch).map(|_| small(&mut rng)).collect();
            let (bulk, follows) = if rng.random_bool(0.5) {
                (&mut cpu, &mut dev)
            } else {
                (&mut dev, &mut cpu)
            };
            bulk.append_sampled(&sampled).unwrap();
            follows.update_state(None).unwrap();
            for r in rows.iter_mut() {
                r.len += 1;
            }
        }
        if kinds.contains(&Kind::Bitmask) && rng.random_bool(0.7) {
            let mask: Vec<u32> = (0..batch * words)
                .map(|_| rng.random::<u32>() | rng.random::<u32>())
                .collect();
            let mask_rows: Vec<usize> = (0..batch).filter(|_| rng.random_bool(0.6)).collect();
            cpu.token_bitmask_mut()
                .unwrap()
                .set_host(&mask, &mask_rows)
                .unwrap();
            let t = Tensor::from_vec(mask, (batch, words), gpu).unwrap();
            dev.token_bitmask_mut()
                .unwrap()
                .set_tensor(&t, &mask_rows)
                .unwrap();
        }
        // The logits are rows pad..pad + batch of a larger buffer (an unaligned start), the
        // rows around them poison that must stay untouched.
        let pad = rng.random_range(0..2usize);
        let total = pad + batch + 1;
        let host = Tensor::from_vec(
            random_values(&mut rng, total * vocab),
            (total, vocab),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        let original = to_host(&host);
        let on_gpu = host.to_device(gpu).unwrap();
        let on_cpu = host.copy().unwrap();
        let greedy = rng.random_bool(0.2);
        for (p, buf) in [(&mut cpu, &on_cpu), (&mut dev, &on_gpu)] {
            let view = buf.narrow(0, pad, batch).unwrap();
            let r = if greedy {
                p.apply_greedy(&view)
            } else {
                p.apply(&view)
            };
            r.unwrap_or_else(|e| panic!("{ctx} step {step}: apply {e}"));
        }
        let (want, got) = (to_host(&on_cpu), to_host(&on_gpu));
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                same(*w, *g),
                "{ctx} step {step} greedy {greedy}: buffer row {} token {}: cuda {g} cpu {w} (was {})",
                i / vocab,
                i % vocab,
                original[i]
            );
            let row = i / vocab;
            if row < pad || row >= pad + batch {
                assert!(
                    same(*g, original[i]),
                    "{ctx} step {step}: poison row {row} changed"
                );
            }
        }
    }
}

#[test]
fn every_processor_on_cuda_matches_the_cpu_bit_for_bit() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let mut cases = 0;
    for seed in 0..60u64 {
        let (vocab, cap, steps) = match seed % 4 {
            0 => (37, 8, 30),
            1 => (1009, 24, 25),
            2 => (4099, 40, 15),
            _ => (151_936, 12, 6),
        };
        run_case(seed, vocab, cap, steps, None, &gpu);
        cases += 1;
    }
    assert_eq!(cases, 60);
}

#[test]
fn each_processor_alone_at_full_size() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    for (i, kind) in ALL.into_iter().enumerate() {
        for seed in 0..3u64 {
            run_case(1000 + 10 * i as u64 + seed, 151_936, 6, 5, Some(kind), &gpu);
            run_case(2000 + 10 * i as u64 + seed, 333, 16, 12, Some(kind), &gpu);
        }
    }
}

/// The raw 16-bit patterns of a `[rows, 65536]` f16 or bf16 tensor.
fn bits16(t: &Tensor) -> Vec<u16> {
    let t = t.to_device(&Device::Cpu).unwrap().flatten_all().unwrap();
    match t.dtype() {
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .into_iter()
            .map(half::f16::to_bits)
            .collect(),
        _ => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .into_iter()
            .map(half::bf16::to_bits)
            .collect(),
    }
}

/// A CPU and a CUDA pipeline of Temperature (and MinP, with `min_p`) over `vocab` tokens, row
/// `r` admitted with temperature `temps[r]`.
fn temperature_pipelines(
    gpu: &Device,
    temps: &[f32],
    vocab: usize,
    min_p: Option<f32>,
) -> [Pipeline; 2] {
    let mut pipelines = [Device::Cpu, gpu.clone()].map(|device| {
        let c = ProcessorConfig::builder()
            .max_batch_size(temps.len())
            .vocab_size(vocab)
            .device(device)
            .build()
            .unwrap();
        let mut b = Pipeline::builder(&c).with(Temperature::new(&c).unwrap());
        if min_p.is_some() {
            b = b.with(MinP::new(&c).unwrap());
        }
        b.build().unwrap()
    });
    let mut changes = BatchUpdateBuilder::new();
    for (row, &t) in temps.iter().enumerate() {
        let mut p = RequestParams::new().with_temperature(t);
        if let Some(m) = min_p {
            p = p.with_min_p(m);
        }
        changes.add(row, Arc::new(p));
    }
    let update = changes.build(temps.len()).cloned();
    for p in &mut pipelines {
        p.update_state(update.as_ref()).unwrap();
    }
    pipelines
}

/// Temperature (alone, and before MinP, which takes the one-launch kernel) on every one of
/// the 65,536 f16 and bf16 patterns, one row per temperature (huge ones included; tiny and
/// subnormal ones are raised to `Temperature::MIN` on both sides): CUDA must give the CPU's
/// bits, NaN on both sides aside.
#[test]
fn temperature_matches_the_cpu_on_every_16_bit_logit() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let temps = [
        0.8f32, 0.7, 0.5, 1.3, 1.5, 2.0, 0.1, 3.3, 0.55, 7.1, 0.999, 1.0001, 1e-3, 1e-6, 1e4,
        1e-30, 1e-38, 3e-39, 1e30, 0.3333333,
    ];
    let vocab = 1usize << 16;
    for dtype in [DType::F16, DType::BF16] {
        for with_min_p in [false, true] {
            let [mut cpu, mut dev] =
                temperature_pipelines(&gpu, &temps, vocab, with_min_p.then_some(1e-4));
            let patterns: Vec<u16> = (0..temps.len() * vocab).map(|i| i as u16).collect();
            let host = match dtype {
                DType::F16 => Tensor::from_vec(
                    patterns.iter().map(|&b| half::f16::from_bits(b)).collect(),
                    (temps.len(), vocab),
                    &Device::Cpu,
                ),
                _ => Tensor::from_vec(
                    patterns.iter().map(|&b| half::bf16::from_bits(b)).collect(),
                    (temps.len(), vocab),
                    &Device::Cpu,
                ),
            }
            .unwrap();
            let on_cpu = host.copy().unwrap();
            let on_gpu = host.to_device(&gpu).unwrap();
            cpu.apply(&on_cpu).unwrap();
            dev.apply(&on_gpu).unwrap();
            let (want, got) = (bits16(&on_cpu), bits16(&on_gpu));
            let nan = |b: u16| match dtype {
                DType::F16 => half::f16::from_bits(b).is_nan(),
                _ => half::bf16::from_bits(b).is_nan(),
            };
            let mut changed = 0usize;
            for (i, (&w, &g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    w == g || (nan(w) && nan(g)),
                    "{dtype:?} min-p {with_min_p} temperature {}: pattern {:#06x}: cuda {g:#06x} cpu {w:#06x}",
                    temps[i / vocab],
                    i % vocab
                );
                changed += usize::from(w != patterns[i]);
            }
            assert!(
                changed > vocab,
                "{dtype:?}: the temperatures changed almost nothing"
            );
        }
    }
}

/// Temperature (alone, and before MinP) on f32 logits of random bit patterns (every exponent,
/// subnormals, zeros, infinities and NaNs among them), one row per temperature: the kernels
/// divide in-range elements by a hoisted reciprocal, the others by `__fdiv_rn`; CUDA must give
/// the CPU's bits either way, NaN on both sides aside. (Temperatures below `Temperature::MIN`
/// reach the kernels as `MIN`; those above 2^20 take the rows' `__fdiv_rn` path.)
#[test]
fn temperature_matches_the_cpu_on_f32_logits_of_every_exponent() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let temps = [
        0.8f32, 0.7, 0.5, 1.3, 1.5, 2.0, 0.1, 3.3, 0.55, 7.1, 0.999, 1.0001, 1e-3, 1e-6, 1e4,
        1e-30, 9.6e-7, 1.05e6, 1e30, 0.3333333,
    ];
    let vocab = 1usize << 16;
    let mut rng = StdRng::seed_from_u64(4242);
    for with_min_p in [false, true] {
        let [mut cpu, mut dev] =
            temperature_pipelines(&gpu, &temps, vocab, with_min_p.then_some(1e-30));
        // Half the rows random bits, half values around the logits' usual range.
        let bits: Vec<u32> = (0..temps.len() * vocab)
            .map(|i| {
                if (i / vocab).is_multiple_of(2) {
                    rng.random::<u32>()
                } else {
                    (rng.random::<f32>() * 40.0 - 20.0).to_bits()
                }
            })
            .collect();
        let host = Tensor::from_vec(
            bits.iter()
                .map(|&b| f32::from_bits(b))
                .collect::<Vec<f32>>(),
            (temps.len(), vocab),
            &Device::Cpu,
        )
        .unwrap();
        let on_cpu = host.copy().unwrap();
        let on_gpu = host.to_device(&gpu).unwrap();
        cpu.apply(&on_cpu).unwrap();
        dev.apply(&on_gpu).unwrap();
        let want = on_cpu.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = on_gpu
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut changed = 0usize;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
                "min-p {with_min_p} temperature {}: {:#010x}: cuda {:#010x} cpu {:#010x}",
                temps[i / vocab],
                bits[i],
                g.to_bits(),
                w.to_bits()
            );
            changed += usize::from(w.to_bits() != bits[i]);
        }
        assert!(changed > vocab, "the temperatures changed almost nothing");
    }
}

/// Penalty counts piled up over many steps without an apply (so that the count log is
/// processed on its own, and the tables grow) match the CPU, read back and applied.
#[test]
fn penalty_counts_drained_between_applies_match_the_cpu() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let (vocab, cap) = (5000usize, 8usize);
    let mut rng = StdRng::seed_from_u64(77);
    let [mut cpu, mut dev] = [Device::Cpu, gpu.clone()].map(|device| {
        let c = ProcessorConfig::builder()
            .max_batch_size(cap)
            .vocab_size(vocab)
            .device(device)
            .build()
            .unwrap();
        Penalties::new(&c).unwrap()
    });
    let mut outs = Vec::new();
    let mut changes = BatchUpdateBuilder::new();
    for row in 0..cap {
        let out = OutputTokens::new();
        let params = RequestParams::new()
            .with_repetition_penalty(1.25)
            .with_frequency_penalty(0.5)
            .with_presence_penalty(0.25);
        let prompt: Vec<u32> = (0..30).map(|_| rng.random_range(0..vocab as u32)).collect();
        changes
            .add(row, Arc::new(params))
            .with_prompt(prompt)
            .with_output_tokens(out.clone());
        outs.push(out);
    }
    let update = changes.build(cap).cloned();
    cpu.update_state(update.as_ref()).unwrap();
    dev.update_state(update.as_ref()).unwrap();
    for step in 0..1500 {
        for o in &outs {
            if rng.random_bool(0.1) && !o.is_empty() {
                o.truncate(o.len() - 1);
            }
            o.push(rng.random_range(0..(100 + step as u32).min(vocab as u32)));
        }
        cpu.update_state(None).unwrap();
        dev.update_state(None).unwrap();
    }
    for (row, out) in outs.iter().enumerate() {
        let out = out.to_vec();
        for t in 0..vocab as u32 {
            let want = out.iter().filter(|&&o| o == t).count() as u32;
            if t % 7 == 0 || want > 0 {
                assert_eq!(
                    cpu.read_count(row, t).unwrap(),
                    Some(want),
                    "cpu row {row} token {t}"
                );
                assert_eq!(
                    dev.read_count(row, t).unwrap(),
                    Some(want),
                    "cuda row {row} token {t}"
                );
            }
        }
    }
    let values = random_values(&mut rng, cap * vocab);
    let host = Tensor::from_vec(values, (cap, vocab), &Device::Cpu).unwrap();
    let on_gpu = host.to_device(&gpu).unwrap();
    cpu.apply(&host).unwrap();
    dev.apply(&on_gpu).unwrap();
    let (want, got) = (to_host(&host), to_host(&on_gpu));
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert!(same(*w, *g), "token {i}: cuda {g} cpu {w}");
    }
}

/// Penalties with min-p (which fold them into the dense pass on CUDA) over long prompts and
/// outputs: hundreds of penalised tokens in every chunk of a row (more than the dense kernel
/// copies into shared memory, so that it reads the rest where they are), with and without a
/// grammar mask and a logit bias on some of the same tokens, in every dtype, at a small and at
/// the real vocabulary size: CUDA must give the CPU's bits.
#[test]
fn penalties_over_long_prompts_match_the_cpu() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    for (vocab, rows, prompt_len) in [(4096usize, 6usize, 3000usize), (151_936, 3, 20_000)] {
        for dtype in DTYPES {
            let mut rng = StdRng::seed_from_u64(vocab as u64 + dtype.size_in_bytes() as u64);
            let [mut cpu, mut dev] = [Device::Cpu, gpu.clone()].map(|device| {
                let c = ProcessorConfig::builder()
                    .max_batch_size(rows)
                    .vocab_size(vocab)
                    .device(device)
                    .build()
                    .unwrap();
                Pipeline::builder(&c)
                    .with(TokenBitmask::new(&c).unwrap())
                    .with(LogitBias::new(&c).unwrap())
                    .with(Penalties::new(&c).unwrap())
                    .with(MinP::new(&c).unwrap())
                    .build()
                    .unwrap()
            });
            let mut changes = BatchUpdateBuilder::new();
            for row in 0..rows {
                let prompt: Vec<u32> = (0..prompt_len)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect();
                let out: Vec<u32> = (0..300)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect();
                let bias: Vec<(u32, f32)> = prompt[..40].iter().map(|&t| (t, 0.75)).collect();
                let params = RequestParams::new()
                    .with_logit_bias(bias)
                    .with_repetition_penalty(1.2)
                    .with_frequency_penalty(0.3)
                    .with_presence_penalty(0.1)
                    .with_min_p(0.02);
                changes
                    .add(row, Arc::new(params))
                    .with_prompt(prompt)
                    .with_output_tokens(OutputTokens::from(out));
            }
            let update = changes.build(rows).cloned();
            cpu.update_state(update.as_ref()).unwrap();
            dev.update_state(update.as_ref()).unwrap();
            // A grammar mask on every other row.
            let words = vocab.div_ceil(32);
            let mask: Vec<u32> = (0..rows * words).map(|_| rng.random::<u32>()).collect();
            let masked: Vec<usize> = (0..rows).step_by(2).collect();
            cpu.token_bitmask_mut()
                .unwrap()
                .set_host(&mask, &masked)
                .unwrap();
            let mask_dev = Tensor::from_vec(mask, (rows, words), &gpu).unwrap();
            dev.token_bitmask_mut()
                .unwrap()
                .set_tensor(&mask_dev, &masked)
                .unwrap();
            let values: Vec<f32> = (0..rows * vocab)
                .map(|_| rng.random_range(-4.0f32..4.0))
                .collect();
            let host = Tensor::from_vec(values, (rows, vocab), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let on_gpu = host.to_device(&gpu).unwrap();
            cpu.apply(&host).unwrap();
            dev.apply(&on_gpu).unwrap();
            let (want, got) = (to_host(&host), to_host(&on_gpu));
            let kept = want.iter().filter(|w| **w > f32::NEG_INFINITY).count();
            assert!(kept > rows, "{vocab} {dtype:?}: min-p kept almost nothing");
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    same(*w, *g),
                    "{vocab} {dtype:?} row {} token {}: cuda {g} cpu {w}",
                    i / vocab,
                    i % vocab
                );
            }
        }
    }
}

/// Min-p on rows where most tokens survive their chunk's own cut (flat, nearly flat, and
/// several peaks in different chunks; with and without a temperature and a grammar mask), at
/// the real vocabulary size, match the CPU: the rows whose survivors overflow the kernel's list
/// are re-read whole by their last block.
#[test]
fn min_p_on_flat_and_many_peaked_rows_matches_the_cpu() {
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let vocab = 151_936usize;
    let words = vocab.div_ceil(32);
    let mut rng = StdRng::seed_from_u64(4242);
    for dtype in DTYPES {
        for temperature in [None, Some(0.7f32)] {
            let rows = 6usize;
            let [mut cpu, mut dev] = [Device::Cpu, gpu.clone()].map(|device| {
                let c = ProcessorConfig::builder()
                    .max_batch_size(rows)
                    .vocab_size(vocab)
                    .device(device)
                    .build()
                    .unwrap();
                let mut b = Pipeline::builder(&c).with(TokenBitmask::new(&c).unwrap());
                if temperature.is_some() {
                    b = b.with(Temperature::new(&c).unwrap());
                }
                b.with(MinP::new(&c).unwrap()).build().unwrap()
            });
            let mut changes = BatchUpdateBuilder::new();
            for row in 0..rows {
                let mut p = RequestParams::new().with_min_p([0.001, 0.05, 0.9][row % 3]);
                if let Some(t) = temperature {
                    p = p.with_temperature(t);
                }
                changes.add(row, Arc::new(p));
            }
            let update = changes.build(rows).cloned();
            cpu.update_state(update.as_ref()).unwrap();
            dev.update_state(update.as_ref()).unwrap();
            let mask: Vec<u32> = (0..rows * words).map(|_| rng.random::<u32>()).collect();
            let t = Tensor::from_vec(mask.clone(), (rows, words), &gpu).unwrap();
            cpu.token_bitmask_mut()
                .unwrap()
                .set_host(&mask, &[1, 4])
                .unwrap();
            dev.token_bitmask_mut()
                .unwrap()
                .set_tensor(&t, &[1, 4])
                .unwrap();
            let mut values = Vec::with_capacity(rows * vocab);
            for row in 0..rows {
                for i in 0..vocab {
                    values.push(match row % 3 {
                        0 => 1.5,                            // flat
                        1 => rng.random_range(0.0f32..0.01), // nearly flat
                        _ => {
                            if i % 9000 == 17 {
                                8.0
                            } else {
                                rng.random_range(-3.0f32..3.0)
                            }
                        }
                    });
                }
            }
            let host = Tensor::from_vec(values, (rows, vocab), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let on_gpu = host.to_device(&gpu).unwrap();
            cpu.apply(&host).unwrap();
            dev.apply(&on_gpu).unwrap();
            let (want, got) = (to_host(&host), to_host(&on_gpu));
            let mut cut = 0usize;
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    same(*w, *g),
                    "{dtype:?} temperature {temperature:?} row {} token {}: cuda {g} cpu {w}",
                    i / vocab,
                    i % vocab
                );
                cut += usize::from(*w == f32::NEG_INFINITY);
            }
            assert!(
                cut > 0 && cut < rows * vocab,
                "{dtype:?}: min-p cut nothing or all"
            );
        }
    }
}
