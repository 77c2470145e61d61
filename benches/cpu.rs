//! CPU benchmarks: `apply` of ForceToken, AllowedIds and their Pipeline, and `update_state`,
//! for batch 1, 8, 64, 256 × vocab 151,936 (f32), beside the physical floor: one copy of the
//! same logits (`copy_from_slice`, read + write of every byte).
//!
//! Run: `cargo bench --bench cpu` (add `-- apply/256` to filter).

use std::hint::black_box;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use logits_processors::{
    AllowedIds, AllowedMode, BatchUpdateBuilder, ForceToken, LogitsProcessor, Pipeline,
    ProcessorConfig, RequestParams,
};

const VOCAB: usize = 151_936;
const CHOICES: [u32; 3] = [32, 33, 48_731];
const BATCHES: [usize; 4] = [1, 8, 64, 256];

fn config(batch: usize) -> ProcessorConfig {
    ProcessorConfig::builder()
        .max_batch_size(batch.max(256))
        .vocab_size(VOCAB)
        .device(Device::Cpu)
        .build()
        .unwrap()
}

/// Every row forced to the three choices, like the arena judge.
fn admit_all(p: &mut dyn LogitsProcessor, batch: usize) {
    let mut b = BatchUpdateBuilder::new();
    let params = Arc::new(RequestParams::new().with_allowed_token_ids(CHOICES));
    for row in 0..batch {
        b.add(row, params.clone());
    }
    p.update_state(b.build(batch)).unwrap();
}

fn logits(batch: usize) -> Tensor {
    Tensor::randn(0f32, 1., (batch, VOCAB), &Device::Cpu).unwrap()
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.sample_size(20);
    for batch in BATCHES {
        let cfg = config(batch);
        group.throughput(Throughput::Bytes((batch * VOCAB * 4) as u64));
        let mut processors: Vec<(&str, Box<dyn LogitsProcessor>)> = vec![
            ("force_token", Box::new(ForceToken::new(&cfg).unwrap())),
            (
                "allowed_ids_boost",
                Box::new(AllowedIds::new(&cfg, CHOICES, AllowedMode::Boost(100.0)).unwrap()),
            ),
            (
                "pipeline",
                Box::new(
                    Pipeline::builder(&cfg)
                        .with(ForceToken::new(&cfg).unwrap())
                        .with(AllowedIds::new(&cfg, CHOICES, AllowedMode::Boost(100.0)).unwrap())
                        .build()
                        .unwrap(),
                ),
            ),
        ];
        for (name, p) in processors.iter_mut() {
            admit_all(p.as_mut(), batch);
            let t = logits(batch);
            group.bench_with_input(BenchmarkId::new(*name, batch), &batch, |b, _| {
                b.iter(|| p.apply(black_box(&t)).unwrap())
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

/// One change in a batch of 256: the request in row `r` finishes and a new one takes its row.
fn update_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("update_state");
    let cfg = config(256);
    let mut force = ForceToken::new(&cfg).unwrap();
    let mut pipe = Pipeline::builder(&cfg)
        .with(ForceToken::new(&cfg).unwrap())
        .with(AllowedIds::new(&cfg, CHOICES, AllowedMode::Boost(100.0)).unwrap())
        .build()
        .unwrap();
    admit_all(&mut force, 256);
    admit_all(&mut pipe, 256);
    let params = Arc::new(RequestParams::new().with_allowed_token_ids(CHOICES));
    for (name, p) in [
        ("force_token", &mut force as &mut dyn LogitsProcessor),
        ("pipeline", &mut pipe),
    ] {
        let mut b = BatchUpdateBuilder::new();
        let mut row = 0;
        group.bench_function(BenchmarkId::new(name, "one_change_in_256"), |bench| {
            bench.iter(|| {
                row = (row + 97) % 256;
                b.remove(row);
                let r = b.pop_removed().unwrap();
                b.add(r, params.clone());
                p.update_state(b.build(256)).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply, update_state);
criterion_main!(benches);
