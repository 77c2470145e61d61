//! Helpers shared by the library's integration tests.

#![allow(dead_code)] // each test file uses a subset

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::{
    BatchUpdateBuilder, LogitsProcessor, ProcessorConfig, RequestParams, Result,
};

pub const NEG: f32 = f32::NEG_INFINITY;
pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

pub fn config(rows: usize, vocab: usize) -> ProcessorConfig {
    ProcessorConfig::builder()
        .max_batch_size(rows)
        .vocab_size(vocab)
        .build()
        .unwrap()
}

/// Adds one request per entry of `params` at rows 0.. .
pub fn admit_params(p: &mut dyn LogitsProcessor, params: Vec<RequestParams>) -> Result<()> {
    let mut b = BatchUpdateBuilder::new();
    let n = params.len();
    for (row, params) in params.into_iter().enumerate() {
        b.add(row, Arc::new(params));
    }
    p.update_state(b.build(n))
}

/// Adds one request per entry of `forced` (its `allowed_token_ids`) at rows 0.. .
pub fn admit(p: &mut dyn LogitsProcessor, forced: &[Option<&[u32]>]) -> Result<()> {
    let params = forced
        .iter()
        .map(|f| match f {
            Some(t) => RequestParams::new().with_allowed_token_ids(t.iter().copied()),
            None => RequestParams::new(),
        })
        .collect();
    admit_params(p, params)
}

pub fn logits(rows: &[&[f32]], dtype: DType) -> Tensor {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

pub fn read(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

/// Equal element by element, NaN equal to NaN.
pub fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| p == q || (p.is_nan() && q.is_nan()))
        })
}
