//! The README's engine loop (`examples/engine_loop.rs`), run for real: every request's tokens,
//! decoded in a continuously batched, reordered batch, equal decoding it alone, and obey its
//! parameters.

#[allow(dead_code)]
#[path = "../examples/engine_loop.rs"]
mod engine_loop;

use engine_loop::{demo_requests, run, EOS};

#[test]
fn batched_decoding_equals_decoding_each_request_alone() {
    let requests = demo_requests(40);
    let batched = run(requests.clone(), 8).unwrap();
    assert_eq!(batched.outputs.len(), requests.len());
    // The stream exercised what the helper is for.
    assert!(batched.moves > 0 && batched.swaps > 0, "{batched:?}");

    for req in &requests {
        let alone = run(vec![req.clone()], 1).unwrap();
        let tokens = &batched.outputs[&req.id];
        assert_eq!(tokens, &alone.outputs[&req.id], "request {}", req.id);

        assert!(!tokens.is_empty() && tokens.len() <= req.max_tokens);
        if let Some(allowed) = &req.params.allowed_token_ids {
            assert!(
                tokens.iter().all(|t| allowed.contains(t)),
                "request {}",
                req.id
            );
        }
        let first_eos = tokens.iter().position(|&t| t == EOS);
        assert!(
            first_eos.is_none_or(|i| i >= req.params.min_tokens),
            "request {}",
            req.id
        );
    }
}
