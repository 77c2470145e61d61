//! GPU benchmarks of the fused CUDA kernel: `apply` of ForceToken (every row forced to
//! {32, 33, 48731}), AllowedIds (those ids, Boost(100)) and their Pipeline, for batch 1, 8, 64,
//! 256 × vocab 151,936 in f32, f16 and bf16, beside the memory floor: a device-to-device copy of
//! the same logits (every byte read once and written once). Also `update_state` host time for
//! one change in a batch of 256 (no device synchronisation).
//!
//! Run: `cargo bench --features cuda --bench gpu` (a machine with an NVIDIA GPU).
//!
//! Method: buffers are rotated so that their total exceeds L2 (a run over one small buffer
//! would time the cache); each figure is the median of 9 repeats of `n` back-to-back launches
//! timed with CUDA events (`n` sized for ≈3 ms per repeat), after warm-up. "one-shot" is the
//! median host wall time of sync → apply → sync for a single call: the latency an engine sees,
//! launch and synchronisation included.

use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::{DType, Device, Tensor};
use logits_processors::{
    AllowedIds, AllowedMode, BatchUpdate, BatchUpdateBuilder, ForceToken, LogitsProcessor,
    Pipeline, ProcessorConfig, RequestParams,
};

const VOCAB: usize = 151_936;
const CHOICES: [u32; 3] = [32, 33, 48_731];
const BATCHES: [usize; 4] = [1, 8, 64, 256];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const CAPACITY: usize = 256;
/// Rotate buffers until their total is at least this (H100: 50 MB of L2, H200: 60 MB).
const ROTATE_BYTES: usize = 256 << 20;
const REPEATS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median over `REPEATS` of the per-call device time (µs) of `n` back-to-back calls of `f`,
/// with `n` sized for ≈3 ms per repeat.
fn time_events(stream: &Arc<CudaStream>, mut f: impl FnMut(usize)) -> f64 {
    let ctx = stream.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap()
    };
    let (start, end) = (event(), event());
    let mut run = |n: usize, i0: usize| -> f64 {
        start.record(stream).unwrap();
        for i in 0..n {
            f(i0 + i);
        }
        end.record(stream).unwrap();
        f64::from(start.elapsed_ms(&end).unwrap()) * 1000.0 / n as f64
    };
    run(20, 0); // warm-up (module load, first-touch)
    let estimate = run(20, 20);
    let n = ((3000.0 / estimate.max(0.5)) as usize).clamp(20, 2000);
    median((0..REPEATS).map(|r| run(n, r * n)).collect())
}

/// Median host wall time (µs) of sync → `f` → sync, for single calls.
fn time_one_shot(stream: &Arc<CudaStream>, mut f: impl FnMut(usize)) -> f64 {
    let mut v = Vec::with_capacity(200);
    for i in 0..220 {
        stream.synchronize().unwrap();
        let t = Instant::now();
        f(i);
        stream.synchronize().unwrap();
        if i >= 20 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    median(v)
}

fn admit_all(p: &mut dyn LogitsProcessor, batch: usize) {
    let mut b = BatchUpdateBuilder::new();
    let params = Arc::new(RequestParams::new().with_allowed_token_ids(CHOICES));
    for row in 0..batch {
        b.add(row, params.clone());
    }
    p.update_state(b.build(batch)).unwrap();
}

fn processors(cfg: &ProcessorConfig) -> Vec<(&'static str, Box<dyn LogitsProcessor>)> {
    let boost = || AllowedIds::new(cfg, CHOICES, AllowedMode::Boost(100.0)).unwrap();
    vec![
        ("ForceToken", Box::new(ForceToken::new(cfg).unwrap())),
        ("AllowedIds", Box::new(boost())),
        (
            "Pipeline",
            Box::new(
                Pipeline::builder(cfg)
                    .with(ForceToken::new(cfg).unwrap())
                    .with(boost())
                    .build()
                    .unwrap(),
            ),
        ),
    ]
}

struct Row {
    dtype: DType,
    batch: usize,
    apply: [f64; 3],
    one_shot: [f64; 3],
    copy: f64,
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        _ => "bf16",
    }
}

fn main() {
    let device = Device::new_cuda(0).expect("a CUDA device");
    let cuda = device.as_cuda_device().unwrap().clone();
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let name = ctx.name().unwrap_or_default();
    println!("# logits-processors GPU bench on {name}, vocab {VOCAB}");

    let mut rows = Vec::new();
    for dtype in DTYPES {
        for batch in BATCHES {
            let bytes = batch * VOCAB * dtype.size_in_bytes();
            let nbuf = ROTATE_BYTES.div_ceil(bytes).clamp(2, 512);
            let logits: Vec<Tensor> = (0..nbuf)
                .map(|_| {
                    Tensor::randn(0f32, 1., (batch, VOCAB), &device)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                })
                .collect();
            let cfg = ProcessorConfig::builder()
                .max_batch_size(CAPACITY)
                .vocab_size(VOCAB)
                .device(device.clone())
                .build()
                .unwrap();
            let mut ps = processors(&cfg);
            let mut apply = [0.0; 3];
            let mut one_shot = [0.0; 3];
            for (k, (_, p)) in ps.iter_mut().enumerate() {
                admit_all(p.as_mut(), batch);
                apply[k] = time_events(&stream, |i| p.apply(&logits[i % nbuf]).unwrap());
                one_shot[k] = time_one_shot(&stream, |i| p.apply(&logits[i % nbuf]).unwrap());
            }
            drop(logits);
            // The floor: a device-to-device copy of as many bytes (read once, written once).
            let host: Vec<u8> = (0..bytes).map(|j| (j * 31 + j / 4093) as u8).collect();
            let src: Vec<CudaSlice<u8>> = (0..nbuf)
                .map(|_| stream.clone_htod(&host).unwrap())
                .collect();
            let mut dst: Vec<CudaSlice<u8>> = (0..nbuf)
                .map(|_| stream.alloc_zeros::<u8>(bytes).unwrap())
                .collect();
            let copy = time_events(&stream, |i| {
                stream
                    .memcpy_dtod(&src[i % nbuf], &mut dst[(i + 1) % nbuf])
                    .unwrap()
            });
            drop((src, dst));
            let r = Row {
                dtype,
                batch,
                apply,
                one_shot,
                copy,
            };
            println!(
                "{:>4} batch {:>3}: ForceToken {:8.2} µs, AllowedIds {:8.2} µs, Pipeline {:8.2} µs, d2d copy {:8.2} µs ({:6.0} GB/s r+w); one-shot {:6.2} / {:6.2} / {:6.2} µs",
                dtype_name(dtype),
                batch,
                r.apply[0],
                r.apply[1],
                r.apply[2],
                r.copy,
                2.0 * bytes as f64 / r.copy / 1e3,
                r.one_shot[0],
                r.one_shot[1],
                r.one_shot[2],
            );
            rows.push(r);
        }
    }

    // update_state: one change (a request replaced at one row) in a batch of 256.
    let cfg = ProcessorConfig::builder()
        .max_batch_size(CAPACITY)
        .vocab_size(VOCAB)
        .device(device.clone())
        .build()
        .unwrap();
    let mut update_rows = Vec::new();
    for (name, mut p) in processors(&cfg) {
        admit_all(p.as_mut(), CAPACITY);
        let params = [
            Arc::new(RequestParams::new().with_allowed_token_ids([7, 8, 9])),
            Arc::new(RequestParams::new().with_allowed_token_ids(CHOICES)),
        ];
        let updates: Vec<Option<BatchUpdate>> = (0..4096)
            .map(|i| {
                let mut b = BatchUpdateBuilder::new();
                let row = (i * 37) % CAPACITY;
                b.remove(row);
                let row = b.pop_removed().unwrap(); // the engine reuses the freed row
                b.add(row, params[(i / CAPACITY) % 2].clone());
                b.build(CAPACITY).cloned()
            })
            .collect();
        stream.synchronize().unwrap();
        let mut times = Vec::with_capacity(updates.len());
        for u in &updates {
            let t = Instant::now();
            p.update_state(u.as_ref()).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let one = median(times[64..].to_vec());
        let mut none = Vec::with_capacity(4096);
        for _ in 0..4096 {
            let t = Instant::now();
            p.update_state(None).unwrap();
            none.push(t.elapsed().as_secs_f64() * 1e6);
        }
        stream.synchronize().unwrap();
        println!(
            "update_state {name}: one change in 256: median {one:.2} µs (mean {mean:.2}); unchanged: median {:.3} µs",
            median(none.clone())
        );
        update_rows.push((name, one, mean, median(none)));
    }

    println!();
    println!("## apply on {name}, vocab {VOCAB} (median µs per call, CUDA events; ratio = apply / d2d copy)");
    println!();
    println!("| dtype | batch | d2d copy | ForceToken | × copy | AllowedIds | × copy | Pipeline | × copy | one-shot F / A / P (sync incl.) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} |",
            dtype_name(r.dtype),
            r.batch,
            r.copy,
            r.apply[0],
            r.apply[0] / r.copy,
            r.apply[1],
            r.apply[1] / r.copy,
            r.apply[2],
            r.apply[2] / r.copy,
            r.one_shot[0],
            r.one_shot[1],
            r.one_shot[2],
        );
    }
    println!();
    println!("| update_state, batch 256 | one change: median µs | mean µs | unchanged (None): median µs |");
    println!("|---|---:|---:|---:|");
    for (name, one, mean, none) in update_rows {
        println!("| {name} | {one:.2} | {mean:.2} | {none:.3} |");
    }
}
