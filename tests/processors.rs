//! Unit tests of the built-in processors per dtype, their errors, and the pipeline.

#![allow(clippy::type_complexity)]

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::{
    AllowedIds, AllowedMode, BatchUpdate, BatchUpdateBuilder, Error, ForceToken, LogitsProcessor,
    Pipeline, ProcessorConfig, RequestParams, Result,
};

const NEG: f32 = f32::NEG_INFINITY;
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn config(rows: usize, vocab: usize) -> ProcessorConfig {
    ProcessorConfig::new(rows, vocab, Device::Cpu).unwrap()
}

/// Adds one request per entry of `forced` at rows 0.. .
fn admit(p: &mut dyn LogitsProcessor, forced: &[Option<&[u32]>]) -> Result<()> {
    let mut b = BatchUpdateBuilder::new();
    for (row, f) in forced.iter().enumerate() {
        let params = match f {
            Some(t) => RequestParams::new().with_forced_tokens(t.iter().copied()),
            None => RequestParams::new(),
        };
        b.add(row, Arc::new(params), None, Default::default());
    }
    p.update_state(b.build(forced.len()).as_ref())
}

fn logits(rows: &[&[f32]], dtype: DType) -> Tensor {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn read(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| p == q || (p.is_nan() && q.is_nan()))
        })
}

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
        assert_eq!(p.forced_tokens(0), Some(&[1, 4][..]));
    }
}

#[test]
fn allowed_ids_boost_and_mask_in_every_dtype() {
    for dtype in DTYPES {
        let c = config(2, 5);
        let mut boost = AllowedIds::new(&c, [3, 0, 3], AllowedMode::Boost(100.0)).unwrap();
        let mut mask = AllowedIds::new(&c, [3, 0], AllowedMode::Mask).unwrap();
        assert_eq!(boost.ids(), &[0, 3]);
        for p in [&mut boost as &mut dyn LogitsProcessor, &mut mask] {
            admit(p, &[None, None]).unwrap();
        }
        let rows: [&[f32]; 2] = [&[1., 2., 3., 4., 5.], &[NEG, 2., f32::NAN, 4., 5.]];
        let t = logits(&rows, dtype);
        boost.apply(&t).unwrap();
        let want = vec![
            vec![101., 2., 3., 104., 5.],
            vec![NEG, 2., f32::NAN, 104., 5.],
        ];
        assert!(same(&read(&t), &want), "{dtype:?}: {:?}", read(&t));
        let t = logits(&rows, dtype);
        mask.apply(&t).unwrap();
        let want = vec![vec![1., NEG, NEG, 4., NEG], vec![NEG, NEG, NEG, 4., NEG]];
        assert!(same(&read(&t), &want), "{dtype:?}: {:?}", read(&t));
    }
}

#[test]
fn pipeline_fuses_force_and_mask_and_equals_sequential() {
    let c = config(4, 7);
    let forced: [Option<&[u32]>; 3] = [Some(&[1, 2, 5]), None, Some(&[6])];
    for mode in [AllowedMode::Mask, AllowedMode::Boost(3.0)] {
        for force_first in [true, false] {
            let mut force = ForceToken::new(&c).unwrap();
            let mut allow = AllowedIds::new(&c, [2, 4, 6], mode).unwrap();
            let mut pipe = if force_first {
                Pipeline::new(&c)
                    .with(ForceToken::new(&c).unwrap())
                    .with(AllowedIds::new(&c, [2, 4, 6], mode).unwrap())
            } else {
                Pipeline::new(&c)
                    .with(AllowedIds::new(&c, [2, 4, 6], mode).unwrap())
                    .with(ForceToken::new(&c).unwrap())
            };
            admit(&mut force, &forced).unwrap();
            admit(&mut allow, &forced).unwrap();
            admit(&mut pipe, &forced).unwrap();
            let rows: Vec<Vec<f32>> = (0..3)
                .map(|r| (0..7).map(|j| (r * 7 + j) as f32).collect())
                .collect();
            let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            let seq = logits(&refs, DType::F32);
            force.apply(&seq).unwrap();
            allow.apply(&seq).unwrap();
            let fused = logits(&refs, DType::F32);
            pipe.apply(&fused).unwrap();
            assert!(same(&read(&seq), &read(&fused)), "{mode:?} {force_first}");
        }
    }
}

#[test]
fn bad_logits_are_typed_errors() {
    let mut p = ForceToken::new(&config(4, 5)).unwrap();
    admit(&mut p, &[Some(&[1]), None]).unwrap();
    let rank1 = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(p.apply(&rank1), Err(Error::LogitsRank { .. })));
    let wide = Tensor::zeros((2, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&wide),
        Err(Error::LogitsShape { width: 6, .. })
    ));
    let rows = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&rows),
        Err(Error::LogitsShape { rows: 3, .. })
    ));
    let ints = Tensor::zeros((2, 5), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&ints),
        Err(Error::LogitsDtype { dtype: DType::U32 })
    ));
    let strided = Tensor::zeros((5, 2), DType::F32, &Device::Cpu)
        .unwrap()
        .t()
        .unwrap();
    assert!(matches!(p.apply(&strided), Err(Error::LogitsNotContiguous)));
}

#[test]
fn bad_params_are_rejected_up_front_and_in_updates() {
    let mut p = ForceToken::with_max_tokens(&config(4, 10), 2).unwrap();
    let cases: [(RequestParams, fn(&Error) -> bool); 3] = [
        (RequestParams::new().with_forced_tokens([10]), |e| {
            matches!(
                e,
                Error::TokenOutOfVocab {
                    token: 10,
                    vocab_size: 10
                }
            )
        }),
        (RequestParams::new().with_forced_tokens([]), |e| {
            matches!(e, Error::EmptyTokenSet { .. })
        }),
        (RequestParams::new().with_forced_tokens([1, 2, 3, 2]), |e| {
            matches!(e, Error::TooManyTokens { len: 3, max: 2 })
        }),
    ];
    for (params, is_expected) in cases {
        assert!(is_expected(&p.validate_params(&params).unwrap_err()));
        let mut u = BatchUpdate::new(1);
        u.added.push(logits_processors::AddedRequest {
            row: 0,
            params: Arc::new(params),
            prompt_token_ids: None,
            output_token_ids: Default::default(),
        });
        assert!(is_expected(&p.update_state(Some(&u)).unwrap_err()));
        assert_eq!(p.batch_size(), 0);
    }
    // Duplicates do not count against the limit.
    p.validate_params(&RequestParams::new().with_forced_tokens([3, 3, 3, 4]))
        .unwrap();
}

#[test]
fn bad_configs_are_errors() {
    assert!(matches!(
        ProcessorConfig::new(0, 10, Device::Cpu),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        ProcessorConfig::new(4, 0, Device::Cpu),
        Err(Error::Config(_))
    ));
    let c = config(2, 10);
    assert!(matches!(
        AllowedIds::new(&c, [], AllowedMode::Mask),
        Err(Error::EmptyTokenSet { .. })
    ));
    assert!(matches!(
        AllowedIds::new(&c, [10], AllowedMode::Boost(1.0)),
        Err(Error::TokenOutOfVocab { token: 10, .. })
    ));
    assert!(matches!(
        AllowedIds::new(&c, [1], AllowedMode::Boost(f32::NAN)),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        ForceToken::with_max_tokens(&c, 0),
        Err(Error::Config(_))
    ));
}

/// A processor that records whether it ran and claims argmax invariance.
struct Recorder {
    ran: Arc<std::sync::atomic::AtomicUsize>,
    reject_extra: bool,
}

impl LogitsProcessor for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }
    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        if self.reject_extra && params.extra.contains_key("bad") {
            return Err(Error::InvalidParams {
                processor: "Recorder",
                reason: "bad".into(),
            });
        }
        Ok(())
    }
    fn update_state(&mut self, _update: Option<&BatchUpdate>) -> Result<()> {
        Ok(())
    }
    fn apply(&mut self, _logits: &Tensor) -> Result<()> {
        self.ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn is_argmax_invariant(&self) -> bool {
        true
    }
}

#[test]
fn pipeline_skips_argmax_invariant_processors_when_greedy() {
    let c = config(2, 4);
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pipe = Pipeline::new(&c)
        .with(ForceToken::new(&c).unwrap())
        .with(Recorder {
            ran: ran.clone(),
            reject_extra: false,
        })
        .with(AllowedIds::new(&c, [0], AllowedMode::Boost(1.0)).unwrap());
    admit(&mut pipe, &[Some(&[0, 1])]).unwrap();
    assert!(!pipe.is_argmax_invariant());
    let t = logits(&[&[1., 2., 3., 4.]], DType::F32);
    pipe.apply(&t).unwrap();
    assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(read(&t), vec![vec![2., 2., NEG, NEG]]);
    let t = logits(&[&[1., 2., 3., 4.]], DType::F32);
    pipe.apply_greedy(&t).unwrap();
    assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(read(&t), vec![vec![2., 2., NEG, NEG]]);
}

#[test]
fn pipeline_rejects_an_update_any_processor_rejects_without_touching_any() {
    let c = config(4, 4);
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pipe = Pipeline::new(&c)
        .with(ForceToken::new(&c).unwrap())
        .with(Recorder {
            ran,
            reject_extra: true,
        });
    admit(&mut pipe, &[Some(&[1])]).unwrap();
    let mut b = BatchUpdateBuilder::new();
    b.add(
        1,
        Arc::new(RequestParams::new().with_forced_tokens([2])),
        None,
        Default::default(),
    );
    b.add(
        2,
        Arc::new(RequestParams::new().with_extra("bad", logits_processors::ExtraArg::Bool(true))),
        None,
        Default::default(),
    );
    let err = pipe.update_state(b.build(3).as_ref()).unwrap_err();
    assert!(matches!(err, Error::InvalidParams { .. }));
    assert_eq!(pipe.batch_size(), 1);
    // The ForceToken inside did not see the update either: one row, still forced to {1}.
    let t = logits(&[&[1., 2., 3., 4.]], DType::F32);
    pipe.apply(&t).unwrap();
    assert_eq!(read(&t), vec![vec![NEG, 2., NEG, NEG]]);
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

#[test]
fn a_pipeline_of_mismatched_processors_reports_an_error_instead_of_fusing() {
    let wide = config(2, 100);
    let narrow = config(2, 10);
    let mut pipe = Pipeline::new(&wide)
        .with(ForceToken::new(&wide).unwrap())
        .with(AllowedIds::new(&narrow, [1], AllowedMode::Mask).unwrap());
    admit(&mut pipe, &[Some(&[50])]).unwrap();
    let t = Tensor::zeros((1, 100), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        pipe.apply(&t),
        Err(Error::LogitsShape {
            width: 100,
            vocab_size: 10,
            ..
        })
    ));
}
