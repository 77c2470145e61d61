//! `Pipeline::append_sampled` gives the same state as pushing each row's token through its
//! handle and calling `update_state(None)`, with pushes and rollbacks through the handles mixed
//! in, and rejects a slice of the wrong length without changing anything.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use logits_processors::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 97;
const ROWS: usize = 6;

fn pipeline(c: &ProcessorConfig) -> Pipeline {
    Pipeline::builder(c)
        .with(BadWords::new(c).unwrap())
        .with(MinTokens::new(c, [0]).unwrap())
        .with(Penalties::new(c).unwrap())
        .build()
        .unwrap()
}

fn logits_after(p: &mut Pipeline, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..ROWS * VOCAB)
        .map(|_| rng.random_range(-4f32..4.))
        .collect();
    let t = Tensor::from_vec(v, (ROWS, VOCAB), &Device::Cpu).unwrap();
    p.apply(&t).unwrap();
    t.to_vec2().unwrap()
}

#[test]
fn equals_pushing_through_the_handles() {
    let c = ProcessorConfig::builder()
        .max_batch_size(ROWS)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let (mut bulk, mut pushed) = (pipeline(&c), pipeline(&c));
    let (mut outs_bulk, mut outs_pushed) = (Vec::new(), Vec::new());
    let mut u_bulk = BatchUpdateBuilder::new();
    let mut u_pushed = BatchUpdateBuilder::new();
    for row in 0..ROWS {
        let small = |rng: &mut StdRng| rng.random_range(0..8u32);
        let params = Arc::new(
            RequestParams::new()
                .with_min_tokens(3)
                .with_bad_words(vec![vec![small(&mut rng), small(&mut rng)], vec![5]])
                .with_repetition_penalty(1.3)
                .with_frequency_penalty(0.25)
                .with_presence_penalty(0.5),
        );
        let prompt: Vec<u32> = (0..4).map(|_| small(&mut rng)).collect();
        let (a, b) = (OutputTokens::new(), OutputTokens::new());
        u_bulk
            .add(row, params.clone())
            .with_prompt(prompt.clone())
            .with_output_tokens(a.clone());
        u_pushed
            .add(row, params)
            .with_prompt(prompt)
            .with_output_tokens(b.clone());
        outs_bulk.push(a);
        outs_pushed.push(b);
    }
    bulk.update_state(u_bulk.build(ROWS)).unwrap();
    pushed.update_state(u_pushed.build(ROWS)).unwrap();
    for step in 0..200u64 {
        // Sometimes the engine also changes a list through its handle (rollback or extend).
        if rng.random_bool(0.2) {
            let row = rng.random_range(0..ROWS);
            if rng.random_bool(0.5) {
                let keep = rng.random_range(0..=outs_bulk[row].len());
                outs_bulk[row].truncate(keep);
                outs_pushed[row].truncate(keep);
            } else {
                let t = rng.random_range(0..8u32);
                outs_bulk[row].push(t);
                outs_pushed[row].push(t);
            }
        }
        let sampled: Vec<u32> = (0..ROWS).map(|_| rng.random_range(0..8u32)).collect();
        bulk.append_sampled(&sampled).unwrap();
        for (o, &t) in outs_pushed.iter().zip(&sampled) {
            o.push(t);
        }
        pushed.update_state(None).unwrap();
        for (a, b) in outs_bulk.iter().zip(&outs_pushed) {
            assert_eq!(
                a.to_vec(),
                b.to_vec(),
                "step {step}: the handles see the tokens"
            );
        }
        let (x, y) = (
            logits_after(&mut bulk, step),
            logits_after(&mut pushed, step),
        );
        for (rx, ry) in x.iter().zip(&y) {
            for (a, b) in rx.iter().zip(ry) {
                assert_eq!(a.to_bits(), b.to_bits(), "step {step}");
            }
        }
    }
}

#[test]
fn wrong_length_is_rejected_and_changes_nothing() {
    let c = ProcessorConfig::builder()
        .max_batch_size(4)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut p = pipeline(&c);
    let out = OutputTokens::new();
    let mut u = BatchUpdateBuilder::new();
    u.add(
        0,
        Arc::new(RequestParams::new().with_frequency_penalty(1.0)),
    )
    .with_output_tokens(out.clone());
    p.update_state(u.build(1)).unwrap();
    let err = p.append_sampled(&[1, 2]).unwrap_err();
    assert!(matches!(
        err,
        Error::Update(UpdateError::SampledLength {
            got: 2,
            batch_size: 1
        })
    ));
    assert!(out.is_empty());
    p.append_sampled(&[7]).unwrap();
    assert_eq!(out.to_vec(), [7]);
}
