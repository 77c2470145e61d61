//! `apply` writes through every alias of the logits' storage: candle's clones and views share
//! it. A real `copy()` taken before `apply` keeps the raw logits.

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use logits_processors::{
    ForceToken, LogitsProcessor, PersistentBatch, Pipeline, ProcessorConfig, RequestParams,
};

#[test]
fn apply_changes_every_alias_and_copy_keeps_the_raw_logits() {
    let config = ProcessorConfig::builder()
        .max_batch_size(2)
        .vocab_size(4)
        .build()
        .unwrap();
    let mut processors = Pipeline::builder(&config)
        .with(ForceToken::new(&config).unwrap())
        .build()
        .unwrap();
    let mut batch = PersistentBatch::<u32>::new(2);
    batch
        .add(
            0,
            Arc::new(RequestParams::new().with_allowed_token_ids([2])),
        )
        .unwrap();
    processors.update_state(batch.step()).unwrap();

    let raw = [[1f32, 2., 3., 4.]];
    let logits = Tensor::new(&raw, &Device::Cpu).unwrap();
    let clone = logits.clone();
    let contiguous = logits.contiguous().unwrap(); // already contiguous: a clone
    let same_dtype = logits.to_dtype(DType::F32).unwrap(); // same dtype: a clone
    let row_view = logits.i(0).unwrap();
    let copy = logits.copy().unwrap(); // new storage

    processors.apply(&logits).unwrap();

    let inf = f32::NEG_INFINITY;
    let forced = [[inf, inf, 3., inf]];
    assert_eq!(logits.to_vec2::<f32>().unwrap(), forced);
    for alias in [&clone, &contiguous, &same_dtype] {
        assert_eq!(
            alias.to_vec2::<f32>().unwrap(),
            forced,
            "aliases share storage"
        );
    }
    assert_eq!(row_view.to_vec1::<f32>().unwrap(), forced[0]);
    assert_eq!(
        copy.to_vec2::<f32>().unwrap(),
        raw,
        "copy() keeps the raw logits"
    );
}
