//! Each built-in processor rejects unusable request parameters with a typed `ParamsError`,
//! up front (`validate_params`) and in an update (which then changes nothing), and accepts the
//! boundary values.

use std::sync::Arc;

use logits_processors::*;

mod common;
use common::*;

fn processors(c: &ProcessorConfig) -> Vec<Box<dyn LogitsProcessor>> {
    vec![
        Box::new(ForceToken::new(c).unwrap()),
        Box::new(LogitBias::new(c).unwrap()),
        Box::new(MinTokens::new(c, [9]).unwrap()),
        Box::new(MinP::new(c).unwrap()),
        Box::new(BadWords::new(c).unwrap()),
        Box::new(Penalties::new(c).unwrap()),
        Box::new(Temperature::new(c).unwrap()),
    ]
}

/// The parameter each bad request gets wrong, and the processor that must reject it.
fn bad() -> Vec<(&'static str, RequestParams, &'static str)> {
    let p = RequestParams::new;
    vec![
        (
            "ForceToken",
            p().with_allowed_token_ids([10]),
            "allowed_token_ids",
        ),
        (
            "ForceToken",
            p().with_allowed_token_ids([]),
            "allowed_token_ids",
        ),
        ("LogitBias", p().with_logit_bias([(10, 1.0)]), "logit_bias"),
        (
            "LogitBias",
            p().with_logit_bias([(1, f32::INFINITY)]),
            "logit_bias",
        ),
        (
            "MinTokens",
            p().with_min_tokens(2).with_stop_token_ids([12]),
            "stop_token_ids",
        ),
        ("MinP", p().with_min_p(-0.1), "min_p"),
        ("MinP", p().with_min_p(f32::NAN), "min_p"),
        (
            "BadWords",
            p().with_bad_words([vec![1], vec![]]),
            "bad_words_token_ids",
        ),
        (
            "BadWords",
            p().with_bad_words([vec![3, 10]]),
            "bad_words_token_ids",
        ),
        (
            "Penalties",
            p().with_repetition_penalty(0.0),
            "repetition_penalty",
        ),
        (
            "Penalties",
            p().with_frequency_penalty(f32::NAN),
            "frequency_penalty",
        ),
        (
            "Penalties",
            p().with_presence_penalty(f32::NEG_INFINITY),
            "presence_penalty",
        ),
        ("Temperature", p().with_temperature(-0.5), "temperature"),
    ]
}

fn param_of(e: &Error) -> Option<&'static str> {
    match e {
        Error::Params(
            ParamsError::TokenOutOfVocab { param, .. }
            | ParamsError::EmptyTokenSet { param }
            | ParamsError::OutOfRange { param, .. },
        ) => Some(param),
        _ => None,
    }
}

#[test]
fn every_processor_rejects_its_bad_parameters_and_only_those() {
    let c = config(4, 10);
    for (who, params, param) in bad() {
        for mut p in processors(&c) {
            let verdict = p.validate_params(&params);
            if p.name() == who {
                let e = verdict.expect_err(who);
                assert_eq!(param_of(&e), Some(param), "{who}: {e}");
                // In an update: rejected, nothing changes.
                let mut b = BatchUpdateBuilder::new();
                b.add(0, Arc::new(params.clone()));
                let e = p.update_state(b.build(1)).unwrap_err();
                assert_eq!(param_of(&e), Some(param), "{who}: {e}");
                p.update_state(None).unwrap();
                let t = logits(&[&[0.; 10]], candle_core::DType::F32);
                assert!(p.apply(&t).is_err(), "{who}: batch size changed");
            } else {
                assert!(verdict.is_ok(), "{} rejected {who}'s parameter", p.name());
            }
        }
    }
}

#[test]
fn boundary_values_are_accepted() {
    let c = config(4, 10);
    let p = RequestParams::new;
    let fine = [
        p().with_min_p(1.0),
        p().with_min_p(0.0),
        p().with_temperature(0.0),
        p().with_repetition_penalty(1e-3),
        p().with_logit_bias([(9, -1e30)]),
        p().with_allowed_token_ids([9, 9, 9]),
        p().with_bad_words([vec![9; 5]]),
    ];
    for params in fine {
        for mut proc in processors(&c) {
            proc.validate_params(&params).unwrap();
            admit_params(proc.as_mut(), vec![params.clone()]).unwrap();
        }
    }
}
