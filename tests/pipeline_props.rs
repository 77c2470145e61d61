//! Property test of every built-in processor in one Pipeline against a naive per-request
//! reference, over random engine streams: adds (with prompts), removes, reused rows, moves
//! that condense the batch, swaps, output tokens appended and rolled back (speculative
//! decoding) through the engine's handles or appended with `Pipeline::append_sampled`,
//! unchanged steps (`None`), per-step grammar bitmasks, and invalid updates (broken
//! rules, bad parameters), which must be typed errors that change nothing.
//!
//! The pipeline's stages come in a random order each case, so the fusion of adjacent built-ins
//! is checked against running the processors one after the other in that order, bit for bit,
//! in f32, f16 and bf16. Penalty counts (the count tables the penalties read, which grow as the
//! requests' distinct tokens do) are checked against counts recomputed from the whole output
//! after every step.

#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use logits_processors::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const CAPACITY: usize = 8;
const VOCAB: usize = 37;
const EOS: u32 = 36;
const WORDS: usize = VOCAB.div_ceil(32);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Force,
    Bitmask,
    AllowedMask,
    AllowedBoost,
    BadWords,
    MinTokens,
    Bias,
    Penalties,
    Temperature,
    MinP,
}

const GLOBAL_IDS: [u32; 4] = [0, 5, 17, 36];

/// A request as the reference sees it.
#[derive(Debug, Clone)]
struct Req {
    params: Arc<RequestParams>,
    prompt: Vec<u32>,
    out: OutputTokens,
    /// The engine's own copy of the output.
    tokens: Vec<u32>,
}

fn round(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// One processor, applied naively to one row.
fn reference(kind: Kind, req: &Req, mask: Option<&[u32]>, row: &mut [f32], dtype: DType) {
    let p = &req.params;
    let out = &req.tokens;
    let neg = f32::NEG_INFINITY;
    match kind {
        Kind::Force => {
            if let Some(ids) = &p.allowed_token_ids {
                for t in 0..VOCAB {
                    if !ids.contains(&(t as u32)) {
                        row[t] = neg;
                    }
                }
            }
        }
        Kind::Bitmask => {
            if let Some(m) = mask {
                for t in 0..VOCAB {
                    if m[t / 32] >> (t % 32) & 1 == 0 {
                        row[t] = neg;
                    }
                }
            }
        }
        Kind::AllowedMask => {
            for t in 0..VOCAB {
                if !GLOBAL_IDS.contains(&(t as u32)) {
                    row[t] = neg;
                }
            }
        }
        Kind::AllowedBoost => {
            for &t in &GLOBAL_IDS {
                row[t as usize] = round(row[t as usize] + 2.5, dtype);
            }
        }
        Kind::BadWords => {
            for w in &p.bad_words_token_ids {
                let (prefix, last) = w.split_at(w.len() - 1);
                if out.ends_with(prefix) {
                    row[last[0] as usize] = neg;
                }
            }
        }
        Kind::MinTokens => {
            if out.len() < p.min_tokens {
                row[EOS as usize] = neg;
                for &t in &p.stop_token_ids {
                    row[t as usize] = neg;
                }
            }
        }
        Kind::Bias => {
            for (&t, &b) in &p.logit_bias {
                row[t as usize] = round(row[t as usize] + b, dtype);
            }
        }
        Kind::Penalties => {
            let (rep, freq, pres) = (
                p.repetition_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            );
            if rep == 1.0 && freq == 0.0 && pres == 0.0 {
                return;
            }
            for t in 0..VOCAB as u32 {
                let count = out.iter().filter(|&&o| o == t).count() as u32;
                let in_prompt = rep != 1.0 && req.prompt.contains(&t);
                if count == 0 && !in_prompt {
                    continue;
                }
                let mut y = row[t as usize];
                if rep != 1.0 {
                    y = if y > 0.0 { y / rep } else { y * rep };
                }
                if count > 0 {
                    y -= freq * count as f32;
                    y -= pres;
                }
                row[t as usize] = round(y, dtype);
            }
        }
        Kind::Temperature => {
            // vLLM's SamplingParams: 0 is greedy, (0, 0.01) is raised to 0.01.
            let t = p.temperature;
            if t != 0.0 && t != 1.0 {
                let t = t.max(0.01);
                for x in row.iter_mut() {
                    *x = round(*x / t, dtype);
                }
            }
        }
        Kind::MinP => {
            // Not for a greedy request (vLLM sets its min_p to 0).
            if p.min_p > 0.0 && p.temperature != 0.0 {
                let ln = f64::from(p.min_p).ln() as f32;
                let max = row.iter().fold(neg, |m, &x| m.max(x));
                for x in row.iter_mut() {
                    if *x < max + ln {
                        *x = neg;
                    }
                }
            }
        }
    }
}

fn stage(kind: Kind, c: &ProcessorConfig) -> Stage {
    match kind {
        Kind::Force => ForceToken::new(c).unwrap().into(),
        Kind::Bitmask => TokenBitmask::new(c).unwrap().into(),
        Kind::AllowedMask => AllowedIds::new(c, GLOBAL_IDS, AllowedMode::Mask)
            .unwrap()
            .into(),
        Kind::AllowedBoost => AllowedIds::new(c, GLOBAL_IDS, AllowedMode::Boost(2.5))
            .unwrap()
            .into(),
        Kind::BadWords => BadWords::new(c).unwrap().into(),
        Kind::MinTokens => MinTokens::new(c, [EOS]).unwrap().into(),
        Kind::Bias => LogitBias::new(c).unwrap().into(),
        Kind::Penalties => Penalties::new(c).unwrap().into(),
        Kind::Temperature => Temperature::new(c).unwrap().into(),
        Kind::MinP => MinP::new(c).unwrap().into(),
    }
}

fn ids(rng: &mut StdRng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect()
}

fn random_params(rng: &mut StdRng) -> RequestParams {
    let mut p = RequestParams::new();
    if rng.random_bool(0.3) {
        let n = rng.random_range(1..40); // sometimes more than the list limit: a bitmask row
        p = p.with_allowed_token_ids(ids(rng, n));
    }
    if rng.random_bool(0.4) {
        let n = rng.random_range(1..6);
        let bias: Vec<(u32, f32)> = ids(rng, n)
            .into_iter()
            .map(|t| (t, rng.random_range(-8.0f32..8.0)))
            .collect();
        p = p.with_logit_bias(bias);
    }
    if rng.random_bool(0.4) {
        p = p.with_min_tokens(rng.random_range(1..5));
        let n = rng.random_range(0..3);
        p = p.with_stop_token_ids(ids(rng, n));
    }
    if rng.random_bool(0.4) {
        p = p.with_min_p([0.05, 0.2, 0.5, 1.0][rng.random_range(0..4)]);
    }
    if rng.random_bool(0.4) {
        let n = rng.random_range(1..4);
        let words: Vec<Vec<u32>> = (0..n)
            .map(|_| {
                let len = rng.random_range(1..4);
                ids(rng, len).into_iter().map(|t| t % 6).collect() // small ids: matches happen
            })
            .collect();
        p = p.with_bad_words(words);
    }
    if rng.random_bool(0.5) {
        p = p
            .with_repetition_penalty([1.0, 0.7, 1.3, 2.0][rng.random_range(0..4)])
            .with_frequency_penalty([0.0, 0.5, -0.25][rng.random_range(0..3)])
            .with_presence_penalty([0.0, 1.0, -0.5][rng.random_range(0..3)]);
    }
    if rng.random_bool(0.4) {
        p = p.with_temperature([0.0, 0.004, 0.5, 0.7, 1.0, 1.5][rng.random_range(0..6)]);
    }
    p
}

/// Parameters some processor must reject.
fn bad_params(rng: &mut StdRng) -> RequestParams {
    let p = random_params(rng);
    match rng.random_range(0..8) {
        0 => p.with_allowed_token_ids([VOCAB as u32 + 3]),
        1 => p.with_allowed_token_ids([]),
        2 => p.with_logit_bias([(1, f32::NAN)]),
        3 => p.with_min_p(1.5),
        4 => p.with_bad_words([vec![]]),
        5 => p.with_repetition_penalty(0.0),
        6 => p.with_temperature(-1.0),
        _ => p.with_stop_token_ids([VOCAB as u32]),
    }
}

fn new_req(rng: &mut StdRng, params: RequestParams) -> Req {
    let n = rng.random_range(0..6);
    let k = rng.random_range(0..3);
    let tokens = ids(rng, k);
    Req {
        params: Arc::new(params),
        prompt: ids(rng, n),
        out: OutputTokens::from(tokens.clone()),
        tokens,
    }
}

fn random_logits(rng: &mut StdRng, batch: usize, dtype: DType) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|_| {
            (0..VOCAB)
                .map(|_| {
                    let x = match rng.random_range(0..40) {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        _ => rng.random_range(-6.0f32..6.0),
                    };
                    round(x, dtype)
                })
                .collect()
        })
        .collect()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// One random engine stream; returns a description of the first mismatch.
fn run_stream(seed: u64, steps: usize) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dtype = [DType::F32, DType::F16, DType::BF16][rng.random_range(0..3)];
    let mut kinds = vec![
        Kind::Force,
        Kind::Bitmask,
        if rng.random_bool(0.5) {
            Kind::AllowedMask
        } else {
            Kind::AllowedBoost
        },
        Kind::BadWords,
        Kind::MinTokens,
        Kind::Bias,
        Kind::Penalties,
        Kind::Temperature,
        Kind::MinP,
    ];
    if rng.random_bool(0.7) {
        kinds.shuffle(&mut rng);
    }
    if rng.random_bool(0.3) {
        kinds.retain(|k| *k != Kind::AllowedMask); // masks everything but 4 ids: too strong
    }
    let config = ProcessorConfig::builder()
        .max_batch_size(CAPACITY)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut builder = Pipeline::builder(&config);
    for &k in &kinds {
        builder = builder.with(stage(k, &config));
    }
    let mut pipe = builder.build().unwrap();
    let mut penalties = Penalties::new(&config).unwrap(); // standalone, to read its counts
    let mut rows: Vec<Req> = Vec::new();
    let mut changes = BatchUpdateBuilder::new();

    for step in 0..steps {
        // The engine generates (or rolls back) tokens of the running requests.
        for req in rows.iter_mut() {
            match rng.random_range(0..6) {
                0 if !req.tokens.is_empty() => {
                    let keep = rng.random_range(0..req.tokens.len());
                    req.tokens.truncate(keep);
                    req.out.truncate(keep);
                }
                1..=3 => {
                    let n = rng.random_range(1..3);
                    for _ in 0..n {
                        let t = if rng.random_bool(0.05) {
                            VOCAB as u32 // out of vocabulary: ignored by the counts
                        } else {
                            rng.random_range(0..8)
                        };
                        req.tokens.push(t);
                        req.out.push(t);
                    }
                }
                _ => {}
            }
        }
        // Sometimes the step's sampled tokens go through the pipeline's bulk path instead.
        if !rows.is_empty() && rng.random_bool(0.3) {
            let sampled: Vec<u32> = (0..rows.len())
                .map(|_| {
                    if rng.random_bool(0.05) {
                        VOCAB as u32
                    } else {
                        rng.random_range(0..8)
                    }
                })
                .collect();
            pipe.append_sampled(&sampled)
                .map_err(|e| format!("step {step}: append_sampled: {e}"))?;
            for (req, &t) in rows.iter_mut().zip(&sampled) {
                req.tokens.push(t);
            }
        }
        // The batch changes.
        let mut next = rows.clone();
        let invalid = rng.random_range(0..10) == 0;
        let mut bad_row = None;
        if rng.random_bool(0.6) {
            let mut freed = Vec::new();
            for r in (0..rows.len()).rev() {
                if rng.random_bool(0.25) {
                    changes.remove(r);
                    freed.push(r);
                }
            }
            let mut slots: Vec<Option<Req>> = next.drain(..).map(Some).collect();
            for &r in &freed {
                slots[r] = None;
            }
            let adds = rng.random_range(0..3);
            for _ in 0..adds {
                let bad = invalid && bad_row.is_none() && rng.random_bool(0.5);
                let params = if bad {
                    bad_params(&mut rng)
                } else {
                    random_params(&mut rng)
                };
                let req = new_req(&mut rng, params);
                let row = match changes.pop_removed() {
                    Some(r) => r,
                    None if slots.len() < CAPACITY => {
                        slots.push(None);
                        slots.len() - 1
                    }
                    None => break,
                };
                if bad {
                    bad_row = Some(row);
                }
                changes
                    .add(row, req.params.clone())
                    .with_prompt(req.prompt.clone())
                    .with_output_tokens(req.out.clone());
                slots[row] = Some(req);
            }
            // Condense: fill holes from the top.
            while let Some(hole) = slots.iter().position(Option::is_none) {
                let Some(top) = slots.iter().rposition(Option::is_some) else {
                    break;
                };
                if top < hole {
                    break;
                }
                changes.move_request(top, hole);
                slots[hole] = slots[top].take();
            }
            let n = slots.iter().take_while(|s| s.is_some()).count();
            slots.truncate(n);
            if n >= 2 && rng.random_bool(0.3) {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                changes.swap(a, b);
                slots.swap(a, b);
            }
            next = slots.into_iter().map(Option::unwrap).collect();
        }
        let mut update = changes.build(next.len()).cloned();
        let mut broke_rules = false;
        if invalid && rng.random_bool(0.5) {
            let u = update.get_or_insert_with(|| BatchUpdate::new(rows.len()));
            match rng.random_range(0..3) {
                0 => u.removed.push(CAPACITY + 1),
                1 => u.batch_size += 1,
                _ => u.removed.push(u.batch_size.max(rows.len())), // an empty row
            }
            broke_rules = true;
        }
        let expect_error = broke_rules || bad_row.is_some();
        let result = pipe.update_state(update.as_ref());
        match (&result, expect_error) {
            (Ok(()), false) => {
                rows = next;
                penalties
                    .update_state(update.as_ref())
                    .map_err(|e| e.to_string())?;
            }
            (Err(Error::Update(_) | Error::Params(_)), true) => {
                // Unchanged: the old batch continues; bring the output tokens up to date.
                pipe.update_state(None).map_err(|e| e.to_string())?;
                penalties.update_state(None).map_err(|e| e.to_string())?;
            }
            (r, e) => {
                return Err(format!(
                    "step {step}: update result {r:?}, expected an error: {e} (bad row {bad_row:?})"
                ))
            }
        }
        if pipe.batch_size() != rows.len() {
            return Err(format!(
                "step {step}: batch size {} != {}",
                pipe.batch_size(),
                rows.len()
            ));
        }
        // Penalty counts follow the output exactly.
        for (r, req) in rows.iter().enumerate() {
            let p = &req.params;
            if p.repetition_penalty == 1.0
                && p.frequency_penalty == 0.0
                && p.presence_penalty == 0.0
            {
                continue;
            }
            for t in 0..VOCAB as u32 {
                let want = req.tokens.iter().filter(|&&o| o == t).count() as u32;
                let got = penalties
                    .read_count(r, t)
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0);
                if penalties.output_count(r, t).unwrap_or(0) != want {
                    return Err(format!("step {step}: row {r} token {t}: output_count"));
                }
                if got != want {
                    return Err(format!(
                        "step {step}: row {r} token {t}: count {got} != {want}"
                    ));
                }
            }
        }
        // The step's grammar mask.
        let batch = rows.len();
        let mut mask_words = vec![u32::MAX; batch * WORDS];
        let mut mask_rows = Vec::new();
        if kinds.contains(&Kind::Bitmask) && rng.random_bool(0.5) {
            for r in 0..batch {
                if rng.random_bool(0.5) {
                    mask_rows.push(r);
                    for w in &mut mask_words[r * WORDS..(r + 1) * WORDS] {
                        *w = rng.random::<u32>() | rng.random::<u32>(); // about 3/4 allowed
                    }
                }
            }
            pipe.token_bitmask_mut()
                .unwrap()
                .set_host(&mask_words, &mask_rows)
                .map_err(|e| e.to_string())?;
        }
        // Apply, against the reference.
        let greedy = rng.random_bool(0.2);
        let values = random_logits(&mut rng, batch, dtype);
        let flat: Vec<f32> = values.iter().flatten().copied().collect();
        let logits = Tensor::from_vec(flat, (batch, VOCAB), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let applied = if greedy {
            pipe.apply_greedy(&logits)
        } else {
            pipe.apply(&logits)
        };
        applied.map_err(|e| format!("step {step}: apply: {e}"))?;
        let got: Vec<Vec<f32>> = logits.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        for (r, req) in rows.iter().enumerate() {
            let mut want = values[r].clone();
            let mask = mask_rows
                .contains(&r)
                .then(|| &mask_words[r * WORDS..(r + 1) * WORDS]);
            for &k in &kinds {
                if greedy && matches!(k, Kind::Temperature | Kind::MinP) {
                    continue;
                }
                reference(k, req, mask, &mut want, dtype);
            }
            for t in 0..VOCAB {
                if !same(got[r][t], want[t]) {
                    return Err(format!(
                        "step {step} ({dtype:?}, greedy {greedy}, stages {kinds:?}): row {r} token {t}: got {} want {}\nparams {:?}\nprompt {:?} output {:?}\nin {:?}\ngot {:?}\nwant {:?}",
                        got[r][t], want[t], req.params, req.prompt, req.tokens, values[r], got[r], want
                    ));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_processor_in_a_pipeline_follows_the_reference(seed in any::<u64>(), steps in 1usize..40) {
        if let Err(e) = run_stream(seed, steps) {
            prop_assert!(false, "seed {}: {}", seed, e);
        }
    }
}
