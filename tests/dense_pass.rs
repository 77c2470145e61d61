//! The dense pass on the CPU (grammar mask, temperature, min-p) at a vocabulary of many words
//! equals a per-element reference, in every dtype: words fully masked, fully allowed and mixed,
//! a shorter last word, NaN, ±inf, values near the dtypes' limits, rows without a mask.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use logits_processors::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;
use common::*;

/// 31 whole words and a last word of 8 tokens.
const VOCAB: usize = 1000;
const WORDS: usize = VOCAB.div_ceil(32);

fn round(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// One row as the semantics table says: masked → −inf; kept → `x / t` rounded to the dtype
/// (t ≠ 1); then below `max + ln(min_p)` → −inf, the maximum over the kept values, NaN
/// ignored.
fn reference(row: &[f32], mask: Option<&[u32]>, t: f32, min_p: f32, dtype: DType) -> Vec<f32> {
    let kept = |i: usize| mask.is_none_or(|m| m[i / 32] >> (i % 32) & 1 == 1);
    let mut out: Vec<f32> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| match (kept(i), t != 1.0) {
            (false, _) => f32::NEG_INFINITY,
            (true, true) => round(x / t, dtype),
            (true, false) => x,
        })
        .collect();
    if min_p > 0.0 {
        let max = (0..VOCAB)
            .filter(|&i| kept(i))
            .map(|i| out[i])
            .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
        let threshold = max + f64::from(min_p).ln() as f32;
        for x in &mut out {
            if *x < threshold {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    out
}

/// `values` as `[rows, VOCAB]` logits of `dtype` on the CPU.
fn tensor(values: &[Vec<f32>], dtype: DType) -> Tensor {
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (values.len(), VOCAB), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `got` has `want`'s bits, token for token (NaN equal to NaN); `what` names the row.
fn assert_bits(want: &[f32], got: &[f32], what: impl Fn() -> String) {
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        assert!(
            w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
            "{} token {i}: got {g}, want {w}",
            what()
        );
    }
}

#[test]
fn the_dense_pass_equals_the_reference_on_many_words() {
    let mut rng = StdRng::seed_from_u64(99);
    let settings: Vec<(f32, f32)> = [1.0f32, 0.7, 1.5, 0.01]
        .iter()
        .flat_map(|&t| [0.0f32, 0.05, 0.5, 1.0].map(|p| (t, p)))
        .collect();
    let rows = settings.len();
    for dtype in DTYPES {
        for round_no in 0..4 {
            let c = config(rows, VOCAB);
            let mut pipe = Pipeline::builder(&c)
                .with(TokenBitmask::new(&c).unwrap())
                .with(Temperature::new(&c).unwrap())
                .with(MinP::new(&c).unwrap())
                .build()
                .unwrap();
            let params = settings
                .iter()
                .map(|&(t, p)| RequestParams::new().with_temperature(t).with_min_p(p))
                .collect();
            admit_params(&mut pipe, params).unwrap();
            // Words fully masked, fully allowed or mixed (in the last two rounds mostly masked,
            // in long runs, as for a request forced to a few tokens); every third row has no
            // mask.
            let masked_share = if round_no < 2 { 1 } else { 30 };
            let masks: Vec<u32> = (0..rows * WORDS)
                .map(|_| match rng.random_range(0..masked_share + 3) {
                    r if r < masked_share => 0,
                    r if r == masked_share => u32::MAX,
                    _ => rng.random::<u32>(),
                })
                .collect();
            let masked: Vec<usize> = (0..rows).filter(|r| r % 3 != round_no % 3).collect();
            let limit = match dtype {
                DType::F16 => 65_504.0,
                DType::BF16 => 3.3e38,
                _ => f32::MAX,
            };
            let values: Vec<Vec<f32>> = (0..rows)
                .map(|_| {
                    (0..VOCAB)
                        .map(|_| {
                            let x = match rng.random_range(0..60) {
                                0 => f32::NAN,
                                1 => f32::INFINITY,
                                2 => f32::NEG_INFINITY,
                                3 => limit,
                                4 => -limit,
                                5 => 0.0,
                                6 => -0.0,
                                _ => rng.random_range(-12.0f32..12.0),
                            };
                            round(x, dtype)
                        })
                        .collect()
                })
                .collect();
            let logits = tensor(&values, dtype);
            pipe.token_bitmask_mut()
                .unwrap()
                .set_host(&masks, &masked)
                .unwrap();
            pipe.apply(&logits).unwrap();
            let got = read(&logits);
            for (r, row) in values.iter().enumerate() {
                let mask = masked
                    .contains(&r)
                    .then(|| &masks[r * WORDS..(r + 1) * WORDS]);
                let (t, p) = settings[r];
                let want = reference(row, mask, t, p, dtype);
                assert_bits(&want, &got[r], || {
                    format!(
                        "{dtype:?} row {r} (t {t}, min_p {p}, mask {})",
                        mask.is_some()
                    )
                });
            }
        }
    }
}

/// A greedy request (temperature 0) is neither tempered nor cut by min-p, as in vLLM.
#[test]
fn a_greedy_request_is_not_cut_by_min_p() {
    let c = config(2, 4);
    let mut pipe = Pipeline::builder(&c)
        .with(Temperature::new(&c).unwrap())
        .with(MinP::new(&c).unwrap())
        .build()
        .unwrap();
    admit_params(
        &mut pipe,
        vec![
            RequestParams::new().with_temperature(0.0).with_min_p(0.5),
            RequestParams::new().with_temperature(1.0).with_min_p(0.5),
        ],
    )
    .unwrap();
    let t = logits(&[&[0., -1., -5., 2.], &[0., -1., -5., 2.]], DType::F32);
    pipe.apply(&t).unwrap();
    assert_eq!(
        read(&t),
        vec![vec![0., -1., -5., 2.], vec![NEG, NEG, NEG, 2.]]
    );
}

/// Rows forced to a list of ids (up to 64 stored as a list, more as a bitmask row), tempered
/// and cut by min-p, in every dtype: the same reference, the mask made from the ids.
#[test]
fn forced_rows_tempered_and_cut_equal_the_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    let sizes = [1usize, 2, 3, 17, 64, 65, 300];
    let settings: Vec<(usize, f32, f32)> = sizes
        .iter()
        .flat_map(|&n| {
            [(1.0f32, 0.1f32), (0.7, 0.0), (0.7, 0.3), (1.5, 1.0)].map(|(t, p)| (n, t, p))
        })
        .collect();
    let rows = settings.len();
    for dtype in DTYPES {
        let c = config(rows, VOCAB);
        let mut pipe = Pipeline::builder(&c)
            .with(ForceToken::new(&c).unwrap())
            .with(Temperature::new(&c).unwrap())
            .with(MinP::new(&c).unwrap())
            .build()
            .unwrap();
        let ids: Vec<Vec<u32>> = settings
            .iter()
            .map(|&(n, _, _)| {
                let mut v: Vec<u32> = (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let params = settings
            .iter()
            .zip(&ids)
            .map(|(&(_, t, p), ids)| {
                RequestParams::new()
                    .with_allowed_token_ids(ids.iter().copied())
                    .with_temperature(t)
                    .with_min_p(p)
            })
            .collect();
        admit_params(&mut pipe, params).unwrap();
        let values: Vec<Vec<f32>> = (0..rows)
            .map(|_| {
                (0..VOCAB)
                    .map(|_| match rng.random_range(0..30) {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        _ => round(rng.random_range(-12.0f32..12.0), dtype),
                    })
                    .collect()
            })
            .collect();
        let logits = tensor(&values, dtype);
        pipe.apply(&logits).unwrap();
        let got = read(&logits);
        for (r, row) in values.iter().enumerate() {
            let mut mask = vec![0u32; WORDS];
            for &id in &ids[r] {
                mask[id as usize / 32] |= 1 << (id % 32);
            }
            let (_, t, p) = settings[r];
            let want = reference(row, Some(&mask), t, p, dtype);
            assert_bits(&want, &got[r], || {
                format!("{dtype:?} row {r} ({} ids, t {t}, min_p {p})", ids[r].len())
            });
        }
    }
}
