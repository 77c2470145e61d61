//! A custom processor that receives a shared object with each request (a stand-in for a grammar
//! matcher the engine advances every step) and shapes its rows with `for_each_row_mut`, in a
//! pipeline fed by a `PersistentBatch`; plus `for_each_row_mut`'s typed errors.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use logits_processors::{
    for_each_row_mut, BatchUpdate, Error, ForceToken, LogitsError, LogitsProcessor, ParamsError,
    PersistentBatch, Pipeline, ProcessorConfig, RequestParams, Result, RowLedger, RowMut,
};

/// What the engine shares with the processor: the tokens its grammar allows next.
#[derive(Debug)]
struct Matcher {
    allowed: Mutex<Vec<u32>>,
}

/// Keeps only the tokens the request's matcher allows (rows without one are untouched).
struct GrammarMask {
    config: ProcessorConfig,
    ledger: RowLedger<Arc<Matcher>>,
}

impl LogitsProcessor for GrammarMask {
    fn name(&self) -> &'static str {
        "GrammarMask"
    }
    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        params.object::<Matcher>("grammar")?;
        Ok(())
    }
    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.ledger.apply(update, |added| {
            Ok(added.params.object::<Matcher>("grammar")?)
        })
    }
    fn apply(&mut self, logits: &Tensor) -> Result<()> {
        self.config.check_logits(logits, self.ledger.batch_size())?;
        let ledger = &self.ledger;
        for_each_row_mut(logits, |row, mut logits| {
            if let Some(matcher) = ledger.get(row) {
                let allowed = matcher.allowed.lock().unwrap();
                logits.map(|token, x| {
                    if allowed.contains(&(token as u32)) {
                        x
                    } else {
                        f32::NEG_INFINITY
                    }
                });
            }
        })
    }
    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

fn finite(logits: &Tensor) -> Vec<Vec<usize>> {
    let rows = logits
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    rows.iter()
        .map(|r| (0..r.len()).filter(|&t| r[t].is_finite()).collect())
        .collect()
}

#[test]
fn a_custom_processor_reads_a_shared_per_request_object() {
    let config = ProcessorConfig::builder()
        .max_batch_size(4)
        .vocab_size(6)
        .build()
        .unwrap();
    let mut processors = Pipeline::builder(&config)
        .with(ForceToken::new(&config).unwrap())
        .with_custom(GrammarMask {
            config: config.clone(),
            ledger: RowLedger::new(4),
        })
        .build()
        .unwrap();
    let mut batch = PersistentBatch::<&str>::new(4);

    let matcher = Arc::new(Matcher {
        allowed: Mutex::new(vec![1, 2, 3]),
    });
    let with_grammar = RequestParams::new()
        .with_allowed_token_ids([2, 3, 4])
        .with_object("grammar", matcher.clone());
    processors.validate_params(&with_grammar).unwrap();
    batch.add("plain", Arc::new(RequestParams::new())).unwrap();
    batch.add("grammar", Arc::new(with_grammar)).unwrap();
    processors.update_state(batch.step()).unwrap();

    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let logits = Tensor::zeros((2, 6), dtype, &Device::Cpu).unwrap();
        processors.apply(&logits).unwrap();
        // ForceToken then the grammar: {2,3,4} ∩ {1,2,3}
        assert_eq!(finite(&logits), [vec![0, 1, 2, 3, 4, 5], vec![2, 3]]);
    }

    // The engine advances the matcher; the processor sees it at the next step, after the
    // request moved to row 0.
    *matcher.allowed.lock().unwrap() = vec![4];
    batch.remove(&"plain").unwrap();
    processors.update_state(batch.step()).unwrap();
    let logits = Tensor::zeros((1, 6), DType::F32, &Device::Cpu).unwrap();
    processors.apply(&logits).unwrap();
    assert_eq!(finite(&logits), [vec![4]]);
}

#[test]
fn an_object_of_the_wrong_type_rejects_the_request() {
    let config = ProcessorConfig::builder()
        .max_batch_size(4)
        .vocab_size(6)
        .build()
        .unwrap();
    let mut processors = Pipeline::builder(&config)
        .with_custom(GrammarMask {
            config: config.clone(),
            ledger: RowLedger::new(4),
        })
        .build()
        .unwrap();
    let params = RequestParams::new().with_object("grammar", Arc::new("not a matcher"));
    let err = processors.validate_params(&params).unwrap_err();
    assert!(matches!(
        &err,
        Error::Params(ParamsError::ObjectType { name, found: "&str", .. }) if name == "grammar"
    ));
    assert_eq!(
        err.to_string(),
        "request rejected: object \"grammar\" is a &str, but a custom_objects::Matcher was expected"
    );
    // Through an update: rejected as a whole, nothing changes.
    let mut batch = PersistentBatch::<u8>::new(4);
    batch.add(0, Arc::new(params)).unwrap();
    assert!(processors.update_state(batch.step()).is_err());
}

#[test]
fn for_each_row_mut_refuses_what_it_cannot_write() {
    let dev = Device::Cpu;
    let never = |_: usize, _: RowMut<'_>| panic!("must not be called");

    let rank3 = Tensor::zeros((1, 2, 3), DType::F32, &dev).unwrap();
    assert!(matches!(
        for_each_row_mut(&rank3, never),
        Err(Error::Logits(LogitsError::Rank { .. }))
    ));
    let ints = Tensor::zeros((2, 3), DType::U32, &dev).unwrap();
    assert!(matches!(
        for_each_row_mut(&ints, never),
        Err(Error::Logits(LogitsError::Dtype { dtype: DType::U32 }))
    ));
    let strided = Tensor::zeros((3, 2), DType::F32, &dev)
        .unwrap()
        .t()
        .unwrap();
    assert!(matches!(
        for_each_row_mut(&strided, never),
        Err(Error::Logits(LogitsError::NotContiguous))
    ));
    let empty = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
    for_each_row_mut(&empty, never).unwrap();

    // A contiguous view at an offset: only its rows are handed out, numbered from 0.
    let logits = Tensor::zeros((3, 2), DType::F16, &dev).unwrap();
    let view = logits.narrow(0, 1, 2).unwrap();
    let mut seen = Vec::new();
    for_each_row_mut(&view, |row, mut r| {
        seen.push((row, r.len()));
        assert!(r.set(0, row as f32 + 1.0));
        assert!(!r.set(2, 0.0));
    })
    .unwrap();
    assert_eq!(seen, [(0, 2), (1, 2)]);
    let all = logits
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(all, [[0., 0.], [1., 0.], [2., 0.]]);
}

#[cfg(feature = "cuda")]
#[test]
fn for_each_row_mut_refuses_gpu_logits() {
    let dev = Device::new_cuda(0).unwrap();
    let logits = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
    assert!(matches!(
        for_each_row_mut(&logits, |_, _| {}),
        Err(Error::Logits(LogitsError::NotOnCpu { .. }))
    ));
}
