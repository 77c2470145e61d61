//! The CPU path splits a large batch's rows over rayon's threads: the logits must be the same
//! bits whether one thread or several run them, for every processor kind at once.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::*;

const ROWS: usize = 12;
const VOCAB: usize = 40_000; // ROWS * VOCAB is above the threshold for splitting

fn pipeline() -> Pipeline {
    let c = ProcessorConfig::builder()
        .max_batch_size(ROWS)
        .vocab_size(VOCAB)
        .device(Device::Cpu)
        .build()
        .unwrap();
    let mut p = Pipeline::builder(&c)
        .with(TokenBitmask::new(&c).unwrap())
        .with(BadWords::new(&c).unwrap())
        .with(MinTokens::new(&c, [2]).unwrap())
        .with(LogitBias::new(&c).unwrap())
        .with(Penalties::new(&c).unwrap())
        .with(Temperature::new(&c).unwrap())
        .with(MinP::new(&c).unwrap())
        .build()
        .unwrap();
    let mut changes = BatchUpdateBuilder::new();
    for row in 0..ROWS {
        let r = row as u32;
        let params = RequestParams::new()
            .with_logit_bias((0..16).map(|k| (k * 997 + r, k as f32 - 7.5)))
            .with_min_tokens(4)
            .with_stop_token_ids([r + 1, 2 * r + 3])
            .with_bad_words([vec![5, 6 + r], vec![r + 9]])
            .with_repetition_penalty(1.1 + r as f32 * 0.05)
            .with_frequency_penalty(0.2)
            .with_presence_penalty(0.1)
            .with_temperature(0.5 + r as f32 * 0.1)
            .with_min_p(0.02 * (r % 4) as f32);
        let prompt: Vec<u32> = (0..300)
            .map(|k| (k * 131 + r * 17) % VOCAB as u32)
            .collect();
        let out = OutputTokens::from(vec![5, r + 2, r + 2, 77]);
        changes
            .add(row, Arc::new(params))
            .with_prompt(prompt)
            .with_output_tokens(out);
    }
    p.update_state(changes.build(ROWS)).unwrap();
    p
}

fn logits(dtype: DType) -> Tensor {
    let values: Vec<f32> = (0..ROWS * VOCAB)
        .map(|i| {
            let x = (i as u32).wrapping_mul(0x9E37_79B9) >> 8;
            (x as f32 / (1 << 24) as f32 - 0.5) * 24.0
        })
        .collect();
    Tensor::from_vec(values, (ROWS, VOCAB), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn run_in(threads: usize, dtype: DType) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut p = pipeline();
    let words = VOCAB.div_ceil(32);
    let mask: Vec<u32> = (0..ROWS * words)
        .map(|i| (i as u32).wrapping_mul(0x85EB_CA6B) | 0x0101_0101)
        .collect();
    let rows: Vec<usize> = (0..ROWS).step_by(2).collect();
    p.token_bitmask_mut()
        .unwrap()
        .set_host(&mask, &rows)
        .unwrap();
    let t = logits(dtype);
    pool.install(|| p.apply(&t)).unwrap();
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn one_thread_and_several_give_the_same_bits() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let one = run_in(1, dtype);
        let untouched = logits(dtype)
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let changed = one
            .iter()
            .zip(&untouched)
            .filter(|(a, b)| **a != b.to_bits())
            .count();
        assert!(
            changed > ROWS * VOCAB / 4,
            "{dtype:?}: the pipeline changed only {changed} logits"
        );
        for threads in [2, 3, 5] {
            let many = run_in(threads, dtype);
            let first = one.iter().zip(&many).position(|(a, b)| a != b);
            assert!(
                first.is_none(),
                "{dtype:?}, {threads} threads: logit {} differs",
                first.unwrap_or(0)
            );
        }
    }
}
