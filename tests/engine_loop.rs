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

/// The README's engine loop is the example's code: every code line of the README block appears
/// in `examples/engine_loop.rs`, in the same order (the README may leave lines out).
#[test]
fn the_readme_loop_is_the_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/examples/engine_loop.rs")).unwrap();
    let section = &readme[readme
        .find("## An engine loop")
        .expect("the README section")..];
    let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let code = |l: &&str| !l.trim().is_empty();
    let block: Vec<&str> = block.lines().filter(code).map(str::trim).collect();
    assert!(
        block.len() > 40,
        "the README block has {} lines",
        block.len()
    );
    let mut example_lines = example.lines().map(str::trim);
    for line in &block {
        assert!(
            example_lines.any(|l| l == *line),
            "README line not in the example (or out of order): {line}"
        );
    }
}
