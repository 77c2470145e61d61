//! CPU benchmarks (criterion): `apply` of each built-in processor alone and of a whole
//! pipeline, at batch 1, 8, 64 and 256 × vocab 151,936 (f32), beside the physical floor: one
//! copy of the same logits (`copy_from_slice`, every byte read and written once); and the host
//! cost of `update_state` for the whole pipeline at batch 256 (one request replaced; one output
//! token appended to every row, pushed by the engine or given as one slice to
//! `Pipeline::append_sampled`).
//!
//! Workload per request: as `benches/gpu.rs` (3 allowed ids, a random grammar bitmask, 16 bias
//! entries, min_tokens 8 with 2 stop ids, 4 bad words, penalties over a 512-token prompt and
//! 128 output tokens, temperature 0.8, min-p 0.05).
//!
//! Run: `cargo bench --bench cpu` (add `-- apply/Penalties` to filter).
//!
//! `LP_HOST_STEPS=1 cargo bench --bench cpu` instead prints the host-step medians the way
//! `benches/gpu.rs` takes them (per-step `Instant` timings, median over 1,008 steps after 16 of
//! warm-up; a fresh pipeline per form; new distinct tokens every step), repeated over rounds
//! (`LP_HOST_ROUNDS`, default 9): unlike the criterion loops, whose steps include the host's
//! count processing every 64 steps (on CUDA a launch, left out by that median).

use std::hint::black_box;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use logits_processors::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 151_936;
const BATCHES: [usize; 4] = [1, 8, 64, 256];
const CAPACITY: usize = 256;
const EOS: u32 = 151_645;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Force,
    Bitmask,
    BadWords,
    MinTokens,
    Bias,
    Penalties,
    Temperature,
    MinP,
}

fn config() -> ProcessorConfig {
    ProcessorConfig::builder()
        .max_batch_size(CAPACITY)
        .vocab_size(VOCAB)
        .build()
        .unwrap()
}

fn stage(kind: Kind, c: &ProcessorConfig) -> Stage {
    match kind {
        Kind::Force => ForceToken::new(c).unwrap().into(),
        Kind::Bitmask => TokenBitmask::new(c).unwrap().into(),
        Kind::BadWords => BadWords::new(c).unwrap().into(),
        Kind::MinTokens => MinTokens::new(c, [EOS]).unwrap().into(),
        Kind::Bias => LogitBias::new(c).unwrap().into(),
        Kind::Penalties => Penalties::new(c).unwrap().into(),
        Kind::Temperature => Temperature::new(c).unwrap().into(),
        Kind::MinP => MinP::new(c).unwrap().into(),
    }
}

fn params(rng: &mut StdRng) -> RequestParams {
    let mut r =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect() };
    let bias: Vec<(u32, f32)> = r(16).into_iter().map(|t| (t, 1.5)).collect();
    let stops = r(2);
    let words: Vec<Vec<u32>> = (0..4).map(|_| r(2)).collect();
    RequestParams::new()
        .with_allowed_token_ids([32, 33, 48_731])
        .with_logit_bias(bias)
        .with_min_tokens(8)
        .with_stop_token_ids(stops)
        .with_bad_words(words)
        .with_repetition_penalty(1.1)
        .with_frequency_penalty(0.2)
        .with_presence_penalty(0.1)
        .with_temperature(0.8)
        .with_min_p(0.05)
}

/// A pipeline of `kinds` with `batch` requests admitted; returns it and the output handles.
fn admitted(kinds: &[Kind], batch: usize) -> (Pipeline, Vec<OutputTokens>) {
    let c = config();
    let mut b = Pipeline::builder(&c);
    for &k in kinds {
        b = b.with(stage(k, &c));
    }
    let mut p = b.build().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut changes = BatchUpdateBuilder::new();
    let mut outs = Vec::new();
    for row in 0..batch {
        let prompt: Vec<u32> = (0..512)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let out = OutputTokens::from(
            (0..128)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect::<Vec<_>>(),
        );
        changes
            .add(row, Arc::new(params(&mut rng)))
            .with_prompt(prompt)
            .with_output_tokens(out.clone());
        outs.push(out);
    }
    p.update_state(changes.build(batch)).unwrap();
    (p, outs)
}

const ALL: [Kind; 8] = [
    Kind::Force,
    Kind::Bitmask,
    Kind::BadWords,
    Kind::MinTokens,
    Kind::Bias,
    Kind::Penalties,
    Kind::Temperature,
    Kind::MinP,
];

fn apply(c: &mut Criterion) {
    use Kind::*;
    let configs: [(&str, &[Kind]); 10] = [
        ("ForceToken", &[Force]),
        ("TokenBitmask", &[Bitmask]),
        ("BadWords", &[BadWords]),
        ("MinTokens", &[MinTokens]),
        ("LogitBias", &[Bias]),
        ("Penalties", &[Penalties]),
        ("Temperature", &[Temperature]),
        ("MinP", &[MinP]),
        (
            "Pipeline_force_bias_mintokens_penalties_minp",
            &[Force, MinTokens, Bias, Penalties, MinP],
        ),
        (
            "Pipeline_all_with_bitmask",
            &[
                Bitmask,
                BadWords,
                MinTokens,
                Bias,
                Penalties,
                Temperature,
                MinP,
            ],
        ),
    ];
    let words = VOCAB.div_ceil(32);
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    for batch in BATCHES {
        group.throughput(Throughput::Bytes((batch * VOCAB * 4) as u64));
        let mut rng = StdRng::seed_from_u64(1);
        let mask: Vec<u32> = (0..batch * words).map(|_| rng.random::<u32>()).collect();
        let rows: Vec<usize> = (0..batch).collect();
        for (name, kinds) in configs {
            let (mut p, _outs) = admitted(kinds, batch);
            let t = Tensor::randn(0f32, 3., (batch, VOCAB), &Device::Cpu).unwrap();
            let has_mask = kinds.contains(&Bitmask);
            let step = |p: &mut Pipeline, logits: &Tensor| {
                if has_mask {
                    p.token_bitmask_mut()
                        .unwrap()
                        .set_host(&mask, &rows)
                        .unwrap();
                }
                p.apply(black_box(logits)).unwrap()
            };
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
                if kinds.iter().any(|k| matches!(k, Temperature | MinP)) {
                    // Fresh logits for every call (copied outside the timing): tempering the
                    // same logits again and again would grow them to infinity.
                    b.iter_batched_ref(
                        || t.copy().unwrap(),
                        |fresh| step(&mut p, fresh),
                        BatchSize::PerIteration,
                    )
                } else {
                    // Masks and listed tokens do the same work on logits they already changed.
                    b.iter(|| step(&mut p, &t))
                }
            });
        }
        let src = vec![1f32; batch * VOCAB];
        let mut dst = vec![0f32; batch * VOCAB];
        group.bench_with_input(BenchmarkId::new("floor_copy", batch), &batch, |b, _| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
    }
    group.finish();
}

/// Host cost of `update_state` for the whole pipeline at batch 256.
fn update_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("update_state");
    let (mut p, _outs) = admitted(&ALL, CAPACITY);
    let mut rng = StdRng::seed_from_u64(3);
    let fresh: Vec<Arc<RequestParams>> = (0..64).map(|_| Arc::new(params(&mut rng))).collect();
    let mut changes = BatchUpdateBuilder::new();
    let mut i = 0;
    group.bench_function("one_request_replaced_in_256", |b| {
        b.iter(|| {
            i += 1;
            let row = (i * 97) % CAPACITY;
            changes.remove(row);
            let r = changes.pop_removed().unwrap();
            changes.add(r, fresh[i % fresh.len()].clone());
            p.update_state(changes.build(CAPACITY)).unwrap();
        })
    });
    let labels = [
        "ForceToken",
        "TokenBitmask",
        "BadWords",
        "MinTokens",
        "LogitBias",
        "Penalties",
        "Temperature",
        "MinP",
    ];
    let mut sets: Vec<(&str, Vec<Kind>)> = vec![("all", ALL.to_vec())];
    if std::env::var_os("LP_BENCH_EACH").is_some() {
        sets.extend(labels.iter().zip(ALL).map(|(l, k)| (*l, vec![k])));
    }
    // The same step through the engine-facing bulk path: one slice of sampled tokens.
    let (mut p, _outs) = admitted(&ALL, CAPACITY);
    let mut sampled = vec![0u32; CAPACITY];
    let mut step = 0u32;
    group.bench_function(
        BenchmarkId::new("one_token_appended_to_each_of_256_rows_bulk", "all"),
        |b| {
            b.iter(|| {
                step += 1;
                for (r, t) in sampled.iter_mut().enumerate() {
                    *t = (step.wrapping_mul(7919) + r as u32) % 64;
                }
                p.append_sampled(black_box(&sampled)).unwrap();
            })
        },
    );
    for (label, kinds) in sets {
        let (mut p, outs) = admitted(&kinds, CAPACITY);
        let mut step = 0u32;
        group.bench_function(
            BenchmarkId::new("one_token_appended_to_each_of_256_rows", label),
            |b| {
                b.iter(|| {
                    step += 1;
                    for (r, o) in outs.iter().enumerate() {
                        o.push((step.wrapping_mul(7919) + r as u32) % 64); // a small working set
                    }
                    p.update_state(None).unwrap();
                })
            },
        );
    }
    group.finish();
}

/// The host steps as `benches/gpu.rs` times them, on the CPU: median µs per step over 1,008
/// steps, for one request replaced, one token pushed onto each row's list then
/// `update_state(None)`, and `append_sampled`; one line per round, then the medians.
fn host_steps() {
    let rounds: usize = std::env::var("LP_HOST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(9);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e6
    };
    let mut rng = StdRng::seed_from_u64(3);
    let fresh: Vec<Arc<RequestParams>> = (0..64).map(|_| Arc::new(params(&mut rng))).collect();
    let (mut one, mut pushed, mut bulk) = (Vec::new(), Vec::new(), Vec::new());
    println!("round | one request replaced | engine pushes + update_state(None) | append_sampled (µs, medians)");
    for round in 0..rounds {
        let (mut p, _outs) = admitted(&ALL, CAPACITY);
        let mut changes = BatchUpdateBuilder::new();
        let steps: Vec<f64> = (0..1024)
            .map(|i| {
                changes.remove((i * 37) % CAPACITY);
                let r = changes.pop_removed().unwrap();
                changes.add(r, fresh[i % fresh.len()].clone());
                time(&mut || p.update_state(changes.build(CAPACITY)).unwrap())
            })
            .collect();
        one.push(median(steps[16..].to_vec()));
        let (mut p, outs) = admitted(&ALL, CAPACITY);
        let steps: Vec<f64> = (0..1024u32)
            .map(|step| {
                for (r, o) in outs.iter().enumerate() {
                    o.push((step * 7919 + r as u32) % VOCAB as u32);
                }
                time(&mut || p.update_state(None).unwrap())
            })
            .collect();
        pushed.push(median(steps[16..].to_vec()));
        let (mut p, _outs) = admitted(&ALL, CAPACITY);
        let mut sampled = vec![0u32; CAPACITY];
        let steps: Vec<f64> = (0..1024u32)
            .map(|step| {
                for (r, t) in sampled.iter_mut().enumerate() {
                    *t = (step * 7919 + r as u32) % VOCAB as u32;
                }
                time(&mut || p.append_sampled(&sampled).unwrap())
            })
            .collect();
        bulk.push(median(steps[16..].to_vec()));
        println!(
            "{round} | {:.2} | {:.2} | {:.2}",
            one[round], pushed[round], bulk[round]
        );
    }
    println!(
        "median | {:.2} | {:.2} | {:.2}",
        median(one),
        median(pushed),
        median(bulk)
    );
}

criterion_group!(benches, apply, update_state);

fn main() {
    if std::env::var_os("LP_HOST_STEPS").is_some() {
        host_steps();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
