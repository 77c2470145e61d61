//! TokenBitmask: the per-step grammar mask from a host slice and from a tensor give the same
//! logits, rows without a mask are untouched, a mask is used once, and bad masks are typed
//! errors.

use candle_core::{DType, Device, Tensor};
use logits_processors::*;

mod common;
use common::*;

const VOCAB: usize = 70; // three words per row, the last one partial

fn words(rows: usize) -> Vec<u32> {
    (0..rows * 3)
        .map(|i| (i as u32).wrapping_mul(0x9E37_79B9) ^ 0x5555_0F0F)
        .collect()
}

fn masked(row: &[f32], w: &[u32]) -> Vec<f32> {
    row.iter()
        .enumerate()
        .map(|(t, &x)| {
            if w[t / 32] >> (t % 32) & 1 == 1 {
                x
            } else {
                NEG
            }
        })
        .collect()
}

#[test]
fn host_and_tensor_masks_agree_and_spare_other_rows() {
    for dtype in DTYPES {
        let c = config(4, VOCAB);
        let w = words(3);
        let row: Vec<f32> = (0..VOCAB).map(|t| t as f32 - 20.0).collect();
        let mut results = Vec::new();
        for as_tensor in [false, true] {
            let mut p = TokenBitmask::new(&c).unwrap();
            admit(&mut p, &[None, None, None]).unwrap();
            if as_tensor {
                let t = Tensor::from_vec(w.clone(), (3, 3), &Device::Cpu).unwrap();
                p.set_tensor(&t, &[0, 2]).unwrap();
            } else {
                p.set_host(&w, &[0, 2]).unwrap();
            }
            let t = logits(&[&row, &row, &row], dtype);
            p.apply(&t).unwrap();
            results.push(read(&t));
            // Used once: the next apply leaves everything alone.
            let t = logits(&[&row, &row, &row], dtype);
            p.apply(&t).unwrap();
            assert_eq!(read(&t), read(&logits(&[&row, &row, &row], dtype)));
        }
        let plain = read(&logits(&[&row], dtype))[0].clone();
        assert_eq!(results[0][0], masked(&plain, &w[0..3]), "{dtype:?}");
        assert_eq!(results[0][1], plain, "{dtype:?}: row 1 has no mask");
        assert_eq!(results[0][2], masked(&plain, &w[6..9]), "{dtype:?}");
        assert_eq!(
            results[0], results[1],
            "{dtype:?}: host and tensor masks differ"
        );
    }
}

#[test]
fn bad_masks_are_typed_errors_and_an_update_drops_the_mask() {
    let c = config(4, VOCAB);
    let mut p = TokenBitmask::new(&c).unwrap();
    admit(&mut p, &[None, None]).unwrap();
    assert!(matches!(
        p.set_host(&[0; 5], &[0]),
        Err(Error::Logits(LogitsError::BitmaskShape {
            batch_size: 2,
            words_per_row: 3,
            ..
        }))
    ));
    assert!(matches!(
        p.set_host(&[0; 6], &[2]),
        Err(Error::Logits(LogitsError::BitmaskRow {
            row: 2,
            batch_size: 2
        }))
    ));
    let f = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.set_tensor(&f, &[0]),
        Err(Error::Logits(LogitsError::BitmaskDtype { .. }))
    ));
    // A mask set, then the batch changes: the mask is dropped (its rows may have moved).
    p.set_host(&[0; 6], &[0, 1]).unwrap();
    let mut b = BatchUpdateBuilder::new();
    b.swap(0, 1);
    p.update_state(b.build(2)).unwrap();
    let t = logits(&[&[1.; VOCAB], &[2.; VOCAB]], DType::F32);
    p.apply(&t).unwrap();
    assert_eq!(read(&t), vec![vec![1.; VOCAB], vec![2.; VOCAB]]);
}

#[test]
fn each_step_masks_exactly_its_own_rows() {
    // Row sets that overlap, repeat and shrink from step to step: a row masked last step but not
    // this one is untouched, whatever the order of the rows given.
    let steps: [&[usize]; 5] = [&[0, 1], &[1, 2], &[1, 2], &[2, 1, 0], &[]];
    for dtype in DTYPES {
        let c = config(4, VOCAB);
        let mut p = TokenBitmask::new(&c).unwrap();
        admit(&mut p, &[None, None, None]).unwrap();
        let w = words(3);
        let row: Vec<f32> = (0..VOCAB).map(|t| t as f32 - 20.0).collect();
        let plain = read(&logits(&[&row], dtype))[0].clone();
        for (step, rows) in steps.iter().enumerate() {
            p.set_host(&w, rows).unwrap();
            let t = logits(&[&row, &row, &row], dtype);
            p.apply(&t).unwrap();
            let got = read(&t);
            for (r, got_row) in got.iter().enumerate() {
                let want = if rows.contains(&r) {
                    masked(&plain, &w[3 * r..3 * r + 3])
                } else {
                    plain.clone()
                };
                assert_eq!(got_row, &want, "{dtype:?} step {step} row {r}");
            }
        }
    }
}
