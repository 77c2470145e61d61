//! ForceToken (vLLM's per-request `allowed_token_ids`): semantics per dtype and its parameter errors.

#![allow(clippy::type_complexity)]

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::*;

mod common;
use common::*;

#[test]
fn force_token_keeps_only_the_set_in_every_dtype() {
    for dtype in DTYPES {
        let mut p = ForceToken::new(&config(4, 6)).unwrap();
        admit(&mut p, &[Some(&[4, 1, 4]), None, Some(&[0])]).unwrap();
        let t = logits(
            &[
                &[1., f32::NAN, 3., 4., NEG, 6.],
                &[1., 2., 3., 4., 5., 6.],
                &[f32::NAN, 2., 3., 4., 5., 6.],
            ],
            dtype,
        );
        p.apply(&t).unwrap();
        let want = vec![
            vec![NEG, f32::NAN, NEG, NEG, NEG, NEG],
            vec![1., 2., 3., 4., 5., 6.],
            vec![f32::NAN, NEG, NEG, NEG, NEG, NEG],
        ];
        assert!(same(&read(&t), &want), "{dtype:?}: {:?}", read(&t));
        assert_eq!(p.allowed_token_ids(0), Some(&[1, 4][..]));
    }
}

#[test]
fn bad_params_are_rejected_up_front_and_in_updates() {
    let mut p = ForceToken::new(&config(4, 10)).unwrap();
    let cases: [(RequestParams, fn(&Error) -> bool); 2] = [
        (RequestParams::new().with_allowed_token_ids([10]), |e| {
            matches!(
                e,
                Error::Params(ParamsError::TokenOutOfVocab {
                    token: 10,
                    vocab_size: 10,
                    ..
                })
            )
        }),
        (RequestParams::new().with_allowed_token_ids([]), |e| {
            matches!(e, Error::Params(ParamsError::EmptyTokenSet { .. }))
        }),
    ];
    for (params, is_expected) in cases {
        assert!(is_expected(&p.validate_params(&params).unwrap_err()));
        let mut u = BatchUpdate::new(1);
        u.added.push(AddedRequest::new(0, Arc::new(params)));
        assert!(is_expected(&p.update_state(Some(&u)).unwrap_err()));
        assert_eq!(p.batch_size(), 0);
    }
    // Duplicates are fine.
    p.validate_params(&RequestParams::new().with_allowed_token_ids([3, 3, 3, 4]))
        .unwrap();
}

#[test]
fn empty_batch_and_vocab_of_one() {
    let mut p = ForceToken::new(&config(2, 1)).unwrap();
    p.update_state(None).unwrap();
    let t = Tensor::zeros((0, 1), DType::F32, &Device::Cpu).unwrap();
    p.apply(&t).unwrap();
    admit(&mut p, &[Some(&[0])]).unwrap();
    let t = logits(&[&[7.]], DType::BF16);
    p.apply(&t).unwrap();
    assert_eq!(read(&t), vec![vec![7.]]);
}

/// Regression of the old 16-id cap: any set size, small sets as lists and large ones as
/// bitmask rows, in the same batch.
#[test]
fn sets_of_any_size_small_and_large() {
    let vocab = 300;
    for dtype in DTYPES {
        let mut p = ForceToken::new(&config(3, vocab)).unwrap();
        let big: Vec<u32> = (0..vocab as u32).filter(|t| t % 3 != 0).collect();
        let small: Vec<u32> = vec![7, 299];
        admit(&mut p, &[Some(&big), Some(&small), None]).unwrap();
        let row: Vec<f32> = (0..vocab).map(|t| t as f32).collect();
        let t = logits(&[&row, &row, &row], dtype);
        p.apply(&t).unwrap();
        let got = read(&t);
        let want_row = |keep: &dyn Fn(usize) -> bool| -> Vec<f32> {
            let r = logits(&[&row], dtype);
            read(&r)[0]
                .iter()
                .enumerate()
                .map(|(i, &x)| if keep(i) { x } else { NEG })
                .collect()
        };
        assert_eq!(got[0], want_row(&|i| i % 3 != 0), "{dtype:?}");
        assert_eq!(got[1], want_row(&|i| i == 7 || i == 299), "{dtype:?}");
        assert_eq!(got[2], want_row(&|_| true), "{dtype:?}");
        assert_eq!(p.allowed_token_ids(0).map(<[u32]>::len), Some(big.len()));
    }
}
