//! GPU benchmark of the built-in processors at batch 256 × vocab 151,936 in f32, f16 and bf16:
//! each processor alone and whole pipelines, beside the memory floor (a device-to-device copy
//! of the same logits: every byte read once and written once) and each configuration's own
//! floor (the copy where every logit is read and written; half of it where rows are masked to
//! a few tokens, written without being read; one launch, timed as back-to-back 4-byte memsets,
//! where only listed tokens are touched), plus the host cost of `update_state` (no device
//! synchronisation).
//!
//! Run: `cargo bench --features cuda --bench gpu` (a machine with an NVIDIA GPU). The PyTorch
//! peer of the same operations is `benches/peer_torch.py`; run both in one session.
//!
//! Workload per request (every row): `allowed_token_ids` of 3 ids (ForceToken), a grammar
//! bitmask allowing about half the vocabulary (TokenBitmask, given as a device tensor), 16
//! `logit_bias` entries, `min_tokens` 8 with 2 stop ids (still banning), 4 bad-word sequences,
//! repetition 1.1 / frequency 0.2 / presence 0.1 penalties over a 512-token prompt and 128
//! output tokens, temperature 0.8, min-p 0.05.
//!
//! Method: every configuration starts from fresh random logits (normal, σ = 3), in buffers
//! rotated so that their total exceeds L2; each figure is the median of 9 repeats of `n`
//! back-to-back calls timed with CUDA events (`n` sized for ≈3 ms per repeat), after warm-up,
//! printed with the host's time per call to issue them. Configurations with a bitmask set it
//! (for every row) before each call, as an engine does each step.
//!
//! `LP_BENCH_ONLY=<text>` runs only the configurations whose label contains the text (for a
//! profiler such as `ncu`); `LOGITS_PROCESSORS_ONCE=<n>` overrides the dense kernel's options
//! (src/kernels/cuda.rs `ONCE_*`), to compare them in one session.

use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::{DType, Device, Tensor};
use logits_processors::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 151_936;
const BATCH: usize = 256;
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const ROTATE_BYTES: usize = 256 << 20;
const REPEATS: usize = 9;
const EOS: u32 = 151_645;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median over `REPEATS` of the per-call device time (µs) of `n` back-to-back calls of `f`,
/// and of the host's time per call to issue them (when it is not below the device time, the
/// figure is the host's).
fn time_events(stream: &Arc<CudaStream>, mut f: impl FnMut(usize)) -> (f64, f64) {
    let ctx = stream.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap()
    };
    let (start, end) = (event(), event());
    let mut run = |n: usize, i0: usize| -> (f64, f64) {
        start.record(stream).unwrap();
        let t = Instant::now();
        for i in 0..n {
            f(i0 + i);
        }
        let host = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        end.record(stream).unwrap();
        (
            f64::from(start.elapsed_ms(&end).unwrap()) * 1000.0 / n as f64,
            host,
        )
    };
    run(10, 0);
    let estimate = run(10, 10).0;
    let n = ((3000.0 / estimate.max(0.5)) as usize).clamp(10, 2000);
    let (device, host): (Vec<f64>, Vec<f64>) = (0..REPEATS).map(|r| run(n, r * n)).unzip();
    (median(device), median(host))
}

#[derive(Clone, Copy, PartialEq, Debug)]
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

/// A pipeline of `kinds` with BATCH requests admitted, each with a 512-token prompt and 128
/// output tokens; returns it with the requests' output handles.
fn admitted(kinds: &[Kind], device: &Device) -> (Pipeline, Vec<OutputTokens>) {
    let cfg = ProcessorConfig::builder()
        .max_batch_size(BATCH)
        .vocab_size(VOCAB)
        .device(device.clone())
        .build()
        .unwrap();
    let mut b = Pipeline::builder(&cfg);
    for &k in kinds {
        b = b.with(stage(k, &cfg));
    }
    let mut p = b.build().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut changes = BatchUpdateBuilder::new();
    let mut outs = Vec::new();
    for row in 0..BATCH {
        let prompt: Vec<u32> = (0..512)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let out: Vec<u32> = (0..128)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let out = OutputTokens::from(out);
        changes
            .add(row, Arc::new(params(&mut rng)))
            .with_prompt(prompt)
            .with_output_tokens(out.clone());
        outs.push(out);
    }
    p.update_state(changes.build(BATCH)).unwrap();
    (p, outs)
}

/// The least a configuration must cost on the device: what its processors must move through
/// memory, or one kernel launch where they touch only listed tokens.
#[derive(Clone, Copy)]
enum Floor {
    /// Every logit read and written (a device-to-device copy).
    Copy,
    /// Every logit written, none read (half a copy): rows masked to a few allowed tokens.
    Write,
    /// One launch (a 4-byte memset, back to back): only listed tokens are touched.
    Launch,
}

fn floor_of(kinds: &[Kind]) -> Floor {
    use Kind::*;
    if kinds
        .iter()
        .any(|k| matches!(k, Bitmask | Temperature | MinP) && !kinds.contains(&Force))
    {
        Floor::Copy
    } else if kinds.contains(&Force) {
        Floor::Write
    } else {
        Floor::Launch
    }
}

fn floor_name(f: Floor) -> &'static str {
    match f {
        Floor::Copy => "copy",
        Floor::Write => "write",
        Floor::Launch => "launch",
    }
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
    let stream = device.as_cuda_device().unwrap().cuda_stream();
    let name = stream.context().name().unwrap_or_default();
    println!("# logits-processors GPU bench on {name}, batch {BATCH} x vocab {VOCAB}");
    let words = VOCAB.div_ceil(32);
    let mut rng = StdRng::seed_from_u64(1);
    let mask_host: Vec<u32> = (0..BATCH * words).map(|_| rng.random::<u32>()).collect();
    let mask = Tensor::from_vec(mask_host, (BATCH, words), &device).unwrap();
    let all_rows: Vec<usize> = (0..BATCH).collect();

    use Kind::*;
    let configs: Vec<(&str, Vec<Kind>)> = vec![
        ("ForceToken", vec![Force]),
        ("TokenBitmask", vec![Bitmask]),
        ("BadWords", vec![BadWords]),
        ("MinTokens", vec![MinTokens]),
        ("LogitBias", vec![Bias]),
        ("Penalties", vec![Penalties]),
        ("Temperature", vec![Temperature]),
        ("MinP", vec![MinP]),
        (
            "Pipeline: Force+Bias+MinTokens+Penalties+MinP",
            vec![Force, MinTokens, Bias, Penalties, MinP],
        ),
        ("Pipeline: Bitmask+MinP", vec![Bitmask, MinP]),
        (
            "Pipeline: Bitmask+Bias+MinTokens+Penalties+MinP",
            vec![Bitmask, MinTokens, Bias, Penalties, MinP],
        ),
        (
            "Pipeline: all (Bitmask, BadWords, MinTokens, Bias, Penalties, Temperature, MinP)",
            vec![
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
    // `LP_BENCH_ONLY=<text>`: only the configurations whose label contains it (for profilers).
    let only = std::env::var("LP_BENCH_ONLY").ok();
    let configs: Vec<_> = configs
        .into_iter()
        .filter(|(label, _)| only.as_deref().is_none_or(|o| label.contains(o)))
        .collect();
    let mut table = Vec::new();
    for dtype in DTYPES {
        let bytes = BATCH * VOCAB * dtype.size_in_bytes();
        let nbuf = ROTATE_BYTES.div_ceil(bytes).clamp(2, 64);
        // Fresh logits for every configuration: an apply changes them in place (masked tokens
        // become -inf, tempered ones grow), and a configuration must not run on what the
        // previous one left (dividing -inf takes the division's slow path, for one).
        let fresh = || -> Vec<Tensor> {
            (0..nbuf)
                .map(|_| {
                    Tensor::randn(0f32, 3., (BATCH, VOCAB), &device)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                })
                .collect()
        };
        let mut results = Vec::new();
        for (label, kinds) in &configs {
            let logits = fresh();
            let (mut p, _outs) = admitted(kinds, &device);
            let has_mask = kinds.contains(&Bitmask);
            let (t, host) = time_events(&stream, |i| {
                if has_mask {
                    p.token_bitmask_mut()
                        .unwrap()
                        .set_tensor(&mask, &all_rows)
                        .unwrap();
                }
                p.apply(&logits[i % nbuf]).unwrap();
            });
            results.push((label.to_string(), t, host, floor_of(kinds)));
        }
        let host: Vec<u8> = (0..bytes).map(|j| (j * 31 + j / 4093) as u8).collect();
        let src: Vec<CudaSlice<u8>> = (0..nbuf)
            .map(|_| stream.clone_htod(&host).unwrap())
            .collect();
        let mut dst: Vec<CudaSlice<u8>> = (0..nbuf)
            .map(|_| stream.alloc_zeros::<u8>(bytes).unwrap())
            .collect();
        let (copy, _) = time_events(&stream, |i| {
            stream
                .memcpy_dtod(&src[i % nbuf], &mut dst[(i + 1) % nbuf])
                .unwrap()
        });
        drop((src, dst));
        let mut tiny = stream.alloc_zeros::<u8>(4).unwrap();
        let (launch, _) = time_events(&stream, |_| stream.memset_zeros(&mut tiny).unwrap());
        let floor_us = |f: Floor| match f {
            Floor::Copy => copy,
            Floor::Write => copy / 2.0,
            Floor::Launch => launch,
        };
        for (label, t, host, f) in &results {
            println!(
                "{:>4} {label}: {t:.2} µs ({:.2}x d2d copy {copy:.2} µs; {:.2}x its floor, {}; host {host:.2} µs a call)",
                dtype_name(dtype),
                t / copy,
                t / floor_us(*f),
                floor_name(*f),
            );
        }
        println!(
            "{:>4} launch floor (4-byte memset): {launch:.2} µs",
            dtype_name(dtype)
        );
        let results: Vec<(String, f64, Floor, f64)> = results
            .into_iter()
            .map(|(l, t, _, f)| (l, t, f, floor_us(f)))
            .collect();
        table.push((dtype, copy, results));
    }

    // Host cost of update_state for the whole pipeline (no synchronisation).
    let all = [
        Force,
        Bitmask,
        BadWords,
        MinTokens,
        Bias,
        Penalties,
        Temperature,
        MinP,
    ];
    let (mut p, outs) = admitted(&all, &device);
    let mut rng = StdRng::seed_from_u64(3);
    let fresh: Vec<Arc<RequestParams>> = (0..64).map(|_| Arc::new(params(&mut rng))).collect();
    let mut changes = BatchUpdateBuilder::new();
    let mut one_change = Vec::new();
    for i in 0..2048 {
        let row = (i * 37) % BATCH;
        changes.remove(row);
        let r = changes.pop_removed().unwrap();
        changes.add(r, fresh[i % fresh.len()].clone());
        let t = Instant::now();
        p.update_state(changes.build(BATCH)).unwrap();
        one_change.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // Re-admit so that every row follows an output list, then append one token per row.
    let (mut p, outs2) = admitted(&all, &device);
    drop(outs);
    let mut append = Vec::new();
    for step in 0..1024u32 {
        for (r, o) in outs2.iter().enumerate() {
            o.push((step * 7919 + r as u32) % VOCAB as u32);
        }
        let t = Instant::now();
        p.update_state(None).unwrap();
        append.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // The same steps through the engine-facing bulk path: one slice of sampled tokens.
    let (mut p, outs3) = admitted(&all, &device);
    drop(outs2);
    let mut bulk = Vec::new();
    let mut sampled = vec![0u32; BATCH];
    for step in 0..1024u32 {
        for (r, t) in sampled.iter_mut().enumerate() {
            *t = (step * 7919 + r as u32) % VOCAB as u32;
        }
        let t = Instant::now();
        p.append_sampled(&sampled).unwrap();
        bulk.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(outs3);
    stream.synchronize().unwrap();
    let (one, app, app_bulk) = (
        median(one_change[64..].to_vec()),
        median(append[16..].to_vec()),
        median(bulk[16..].to_vec()),
    );
    println!("update_state, whole pipeline, one request replaced in 256: median {one:.2} µs");
    println!("update_state, whole pipeline, one output token appended to each of 256 rows: median {app:.2} µs");
    println!(
        "append_sampled, whole pipeline, one token per row for 256 rows: median {app_bulk:.2} µs"
    );

    println!();
    println!("## apply on {name}, batch {BATCH} x vocab {VOCAB} (median µs per call, CUDA events)");
    println!();
    println!("| processor | dtype | µs | d2d copy µs | × copy | floor | floor µs | × floor |");
    println!("|---|---|---:|---:|---:|---|---:|---:|");
    for (dtype, copy, results) in &table {
        for (label, t, f, floor) in results {
            println!(
                "| {label} | {} | {t:.2} | {copy:.2} | {:.2} | {} | {floor:.2} | {:.2} |",
                dtype_name(*dtype),
                t / copy,
                floor_name(*f),
                t / floor
            );
        }
    }
    println!();
    println!("| update_state (host, no sync), batch 256, all processors | median µs |");
    println!("|---|---:|");
    println!("| one request replaced | {one:.2} |");
    println!("| one output token appended per row (engine pushes, then update_state) | {app:.2} |");
    println!("| one output token appended per row (append_sampled) | {app_bulk:.2} |");
}
