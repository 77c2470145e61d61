//! Typed errors for bad logits and bad configurations.

use candle_core::{DType, Device, Tensor};
use logits_processors::*;

mod common;
use common::*;

#[test]
fn bad_logits_are_typed_errors() {
    let mut p = ForceToken::new(&config(4, 5)).unwrap();
    admit(&mut p, &[Some(&[1]), None]).unwrap();
    let rank1 = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&rank1),
        Err(Error::Logits(LogitsError::Rank { .. }))
    ));
    let wide = Tensor::zeros((2, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&wide),
        Err(Error::Logits(LogitsError::Shape { width: 6, .. }))
    ));
    let rows = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&rows),
        Err(Error::Logits(LogitsError::Shape { rows: 3, .. }))
    ));
    let ints = Tensor::zeros((2, 5), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        p.apply(&ints),
        Err(Error::Logits(LogitsError::Dtype { dtype: DType::U32 }))
    ));
    let strided = Tensor::zeros((5, 2), DType::F32, &Device::Cpu)
        .unwrap()
        .t()
        .unwrap();
    assert!(matches!(
        p.apply(&strided),
        Err(Error::Logits(LogitsError::NotContiguous))
    ));
}

#[test]
fn bad_configs_are_errors() {
    let build = |rows: Option<usize>, vocab: Option<usize>| {
        let mut b = ProcessorConfig::builder();
        if let Some(r) = rows {
            b = b.max_batch_size(r);
        }
        if let Some(v) = vocab {
            b = b.vocab_size(v);
        }
        b.build().unwrap_err()
    };
    assert!(matches!(
        build(Some(0), Some(10)),
        Error::Config(ConfigError::Zero {
            what: "max_batch_size"
        })
    ));
    assert!(matches!(
        build(Some(4), Some(0)),
        Error::Config(ConfigError::Zero { what: "vocab_size" })
    ));
    assert!(matches!(
        build(None, Some(10)),
        Error::Config(ConfigError::Missing {
            what: "max_batch_size"
        })
    ));
    assert!(matches!(
        build(Some(4), None),
        Error::Config(ConfigError::Missing { what: "vocab_size" })
    ));
    let c = config(2, 10);
    assert!(matches!(
        AllowedIds::new(&c, [], AllowedMode::Mask),
        Err(Error::Config(ConfigError::EmptyTokenSet { .. }))
    ));
    assert!(matches!(
        AllowedIds::new(&c, [10], AllowedMode::Boost(1.0)),
        Err(Error::Config(ConfigError::TokenOutOfVocab {
            token: 10,
            ..
        }))
    ));
    assert!(matches!(
        AllowedIds::new(&c, [1], AllowedMode::Boost(f32::NAN)),
        Err(Error::Config(ConfigError::NotFinite { .. }))
    ));
    assert!(matches!(
        MinTokens::new(&c, [10]),
        Err(Error::Config(ConfigError::TokenOutOfVocab {
            token: 10,
            ..
        }))
    ));
}

#[test]
fn error_messages_name_the_group_and_the_culprit() {
    let c = config(2, 10);
    let mut p = ForceToken::new(&c).unwrap();
    let err = admit(&mut p, &[Some(&[12])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "request rejected: allowed_token_ids: token id 12 is out of range for a vocabulary of 10"
    );
    let mut b = BatchUpdateBuilder::new();
    b.remove(1);
    let err = p.update_state(b.build(0)).unwrap_err();
    assert!(matches!(
        err,
        Error::Update(UpdateError::RemovedEmptyRow { row: 1 })
    ));
    assert!(err.to_string().starts_with("invalid batch update"), "{err}");
}
