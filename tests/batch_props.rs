//! Property tests: random sequences of engine steps (add, remove, unidirectional move, swap,
//! add onto a freed row), some deliberately broken, against a plain reference model of the
//! rows. After every step the processors' state must match the model (or be unchanged, for a
//! rejected update), and `apply` on random logits (with NaN and −inf) must equal a naive
//! per-row reference, for ForceToken, AllowedIds and a Pipeline of both, in f32, f16 and bf16.

#![allow(clippy::needless_range_loop, clippy::type_complexity)] // index-style loops mirror the reference model

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use logits_processors::{
    AllowedIds, AllowedMode, BatchUpdate, BatchUpdateBuilder, ForceToken, LogitsProcessor,
    MoveDirectionality, MovedRequest, Pipeline, ProcessorConfig, RequestParams,
};
use proptest::prelude::*;
use proptest::sample::Index;

const CAPACITY: usize = 8;
const VOCAB: usize = 37; // a multiple of nothing useful

/// A request as the reference model sees it.
#[derive(Debug, Clone, PartialEq)]
struct Req {
    id: u64,
    forced: Option<Vec<u32>>,
}

/// The plain model: rows `0..CAPACITY`, each empty or holding a request.
type Rows = Vec<Option<Req>>;

/// The forced set a valid request normalises to, or `None` if its parameters are invalid.
fn normalised(forced: &Option<Vec<u32>>) -> Option<Option<Vec<u32>>> {
    let Some(tokens) = forced else {
        return Some(None);
    };
    let set: BTreeSet<u32> = tokens.iter().copied().collect();
    let valid = !tokens.is_empty() && tokens.iter().all(|&t| (t as usize) < VOCAB);
    valid.then(|| Some(set.into_iter().collect()))
}

/// The rules, applied as naively as possible to a copy of the rows: `None` if the update is
/// invalid.
///
/// With `check_params` false (a processor that reads no parameters, like AllowedIds) the
/// requests' parameters are not judged.
fn reference_update(
    rows: &Rows,
    upd: &BatchUpdate,
    ids: &[u64],
    check_params: bool,
) -> Option<Rows> {
    if upd.batch_size > CAPACITY {
        return None;
    }
    let mut r = rows.clone();
    let mut seen = BTreeSet::new();
    for &row in &upd.removed {
        if row >= CAPACITY || !seen.insert(row) || r[row].is_none() {
            return None;
        }
        r[row] = None;
    }
    let mut seen = BTreeSet::new();
    for (a, &id) in upd.added.iter().zip(ids) {
        if a.row >= CAPACITY || !seen.insert(a.row) {
            return None;
        }
        let forced = if check_params {
            normalised(&a.params.allowed_token_ids.as_ref().map(|t| t.to_vec()))?
        } else {
            None
        };
        r[a.row] = Some(Req { id, forced });
    }
    for m in &upd.moved {
        if m.from >= CAPACITY || m.to >= CAPACITY {
            return None;
        }
        match m.direction {
            MoveDirectionality::Unidirectional => {
                let moving = r[m.from].take()?;
                r[m.to] = Some(moving);
            }
            MoveDirectionality::Swap => {
                if r[m.from].is_none() || r[m.to].is_none() {
                    return None;
                }
                r.swap(m.from, m.to);
            }
        }
    }
    let contiguous = (0..CAPACITY).all(|i| r[i].is_some() == (i < upd.batch_size));
    contiguous.then_some(r)
}

/// What one step does, as random choices interpreted against the current rows.
#[derive(Debug, Clone)]
struct Step {
    /// Remove the occupied rows these pick.
    removes: Vec<Index>,
    /// New requests; each `Some(tokens)` forces those tokens (ids may be out of vocabulary).
    adds: Vec<Option<Vec<u32>>>,
    /// Swaps between occupied rows after condensing.
    swaps: Vec<(Index, Index)>,
    /// Break the update this way (see `corrupt`), or leave it valid-looking.
    corruption: Option<(u8, Index, Index)>,
    /// Send no update at all (`None`) when the step changes nothing.
    unchanged: bool,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let tokens = prop::collection::vec(0u32..(VOCAB as u32 + 1), 0..6);
    (
        prop::collection::vec(any::<Index>(), 0..4),
        prop::collection::vec(prop::option::weighted(0.7, tokens), 0..4),
        prop::collection::vec(any::<(Index, Index)>(), 0..3),
        prop::option::weighted(0.25, (0u8..8, any::<Index>(), any::<Index>())),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(removes, adds, swaps, corruption, unchanged)| Step {
            removes,
            adds,
            swaps,
            corruption,
            unchanged,
        })
}

/// Builds the update an engine would send for `step` (vLLM style: removals, reuse of the lowest
/// freed rows, appends, condensing moves from the end, swaps), then maybe breaks it.
fn engine_update(rows: &Rows, step: &Step) -> Option<BatchUpdate> {
    let occupied: Vec<usize> = (0..CAPACITY).filter(|&i| rows[i].is_some()).collect();
    let mut n = occupied.len();
    let mut b = BatchUpdateBuilder::new();
    let mut removed = BTreeSet::new();
    if !occupied.is_empty() {
        for ix in &step.removes {
            let row = occupied[ix.index(occupied.len())];
            if removed.insert(row) {
                b.remove(row);
            }
        }
    }
    let mut live: Vec<bool> = (0..CAPACITY).map(|i| rows[i].is_some()).collect();
    for &row in &removed {
        live[row] = false;
    }
    for forced in &step.adds {
        let row = match b.pop_removed() {
            Some(row) => row,
            None if n < CAPACITY => {
                n += 1;
                n - 1
            }
            None => break,
        };
        live[row] = true;
        let params = match forced {
            Some(t) => RequestParams::new().with_allowed_token_ids(t.iter().copied()),
            None => RequestParams::new(),
        };
        b.add(row, Arc::new(params));
    }
    // Condense: fill holes below the end with the last occupied rows.
    let mut end = n;
    let mut holes: Vec<usize> = (0..n).filter(|&i| !live[i]).collect();
    holes.reverse();
    while let Some(hole) = holes.pop() {
        while end > 0 && !live[end - 1] {
            end -= 1;
        }
        if end == 0 || hole >= end - 1 {
            break;
        }
        b.move_request(end - 1, hole);
        live[hole] = true;
        live[end - 1] = false;
    }
    let batch_size = live.iter().filter(|&&x| x).count();
    if batch_size > 0 {
        for (x, y) in &step.swaps {
            b.swap(x.index(batch_size), y.index(batch_size));
        }
    }
    let mut upd = b.build(batch_size).cloned();
    if step.unchanged {
        return None;
    }
    if let Some((kind, x, y)) = &step.corruption {
        let u = upd.get_or_insert_with(|| BatchUpdate::new(batch_size));
        corrupt(u, *kind, x.index(CAPACITY + 2), y.index(CAPACITY + 2));
    }
    upd
}

/// Breaks an update in one of several ways (some of which may happen to stay valid).
fn corrupt(u: &mut BatchUpdate, kind: u8, x: usize, y: usize) {
    match kind {
        0 => u.removed.push(x),
        1 => u.batch_size = x,
        2 => u.moved.push(MovedRequest {
            from: x,
            to: y,
            direction: MoveDirectionality::Unidirectional,
        }),
        3 => u.moved.push(MovedRequest {
            from: x,
            to: y,
            direction: MoveDirectionality::Swap,
        }),
        4 => {
            let row = u.added.first().map_or(x, |a| a.row);
            let p = RequestParams::new().with_allowed_token_ids([y as u32]);
            u.added
                .push(logits_processors::AddedRequest::new(row, Arc::new(p)));
        }
        5 => {
            if let Some(&r) = u.removed.first() {
                u.removed.push(r);
            } else {
                u.removed.push(x);
            }
        }
        6 => {
            let p = RequestParams::new().with_allowed_token_ids([(VOCAB + y) as u32]);
            u.added
                .push(logits_processors::AddedRequest::new(x, Arc::new(p)));
        }
        _ => u.batch_size = u.batch_size.wrapping_sub(1).min(CAPACITY + 1),
    }
}

/// The naive per-row reference of the built-in processors, in f32 arithmetic.
fn reference_logits(
    rows: &Rows,
    batch: usize,
    logits: &[Vec<f32>],
    force: bool,
    allowed: Option<(&[u32], AllowedMode)>,
) -> Vec<Vec<f32>> {
    let mut out = logits.to_vec();
    for r in 0..batch {
        for j in 0..VOCAB {
            let mut x = out[r][j];
            if force {
                if let Some(Req {
                    forced: Some(set), ..
                }) = &rows[r]
                {
                    if !set.contains(&(j as u32)) {
                        x = f32::NEG_INFINITY;
                    }
                }
            }
            if let Some((ids, mode)) = allowed {
                let listed = ids.contains(&(j as u32));
                match mode {
                    AllowedMode::Boost(b) if listed && x != f32::NEG_INFINITY => x += b,
                    AllowedMode::Mask if !listed => x = f32::NEG_INFINITY,
                    _ => {}
                }
            }
            out[r][j] = x;
        }
    }
    out
}

fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// Values in the dtype, read back as f32: what the reference must start from.
fn round_trip(values: &[Vec<f32>], dtype: DType) -> (Tensor, Vec<Vec<f32>>) {
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    let t = Tensor::from_vec(flat, (values.len(), VOCAB), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let back = read(&t);
    (t, back)
}

fn read(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

/// After f16/bf16 rounding of a boost the reference must round too.
fn rounded(values: Vec<Vec<f32>>, dtype: DType) -> Vec<Vec<f32>> {
    round_trip(&values, dtype).1
}

fn random_logits(seed: u64, batch: usize) -> Vec<Vec<f32>> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..batch)
        .map(|_| {
            (0..VOCAB)
                .map(|_| match next() % 50 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    _ => ((next() % 2000) as f32 - 1000.0) / 64.0,
                })
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn processors_follow_the_reference_model(
        steps in prop::collection::vec(step_strategy(), 1..40),
        allowed in prop::collection::vec(0u32..VOCAB as u32, 1..6),
        mask_mode in any::<bool>(),
        dtype_ix in 0usize..3,
        seed in any::<u64>(),
    ) {
        let dtype = [DType::F32, DType::F16, DType::BF16][dtype_ix];
        let mode = if mask_mode { AllowedMode::Mask } else { AllowedMode::Boost(2.5) };
        let config = ProcessorConfig::builder().max_batch_size(CAPACITY).vocab_size(VOCAB).device(Device::Cpu).build().unwrap();
        let mut force = ForceToken::new(&config).unwrap();
        let mut allow = AllowedIds::new(&config, allowed.iter().copied(), mode).unwrap();
        let mut pipe = Pipeline::builder(&config)
            .with(ForceToken::new(&config).unwrap())
            .with(AllowedIds::new(&config, allowed.iter().copied(), mode).unwrap())
            .build()
            .unwrap();
        let mut rows: Rows = vec![None; CAPACITY];
        // AllowedIds reads no parameters, so it may accept what ForceToken rejects.
        let mut rows_a: Rows = vec![None; CAPACITY];
        let mut next_id = 0u64;

        for (k, step) in steps.iter().enumerate() {
            let upd = engine_update(&rows, step);
            let ids: Vec<u64> = upd.as_ref().map_or(vec![], |u| {
                u.added.iter().map(|_| { next_id += 1; next_id }).collect()
            });
            let expected = match &upd {
                None => Some(rows.clone()),
                Some(u) => reference_update(&rows, u, &ids, true),
            };
            let expected_a = match &upd {
                None => Some(rows_a.clone()),
                Some(u) => reference_update(&rows_a, u, &ids, false),
            };
            let before_batch = force.batch_size();
            let before: Vec<Option<Vec<u32>>> =
                (0..CAPACITY).map(|r| force.allowed_token_ids(r).map(<[u32]>::to_vec)).collect();

            let results = [
                force.update_state(upd.as_ref()).is_ok(),
                pipe.update_state(upd.as_ref()).is_ok(),
            ];
            let before_a = allow.batch_size();
            prop_assert_eq!(allow.update_state(upd.as_ref()).is_ok(), expected_a.is_some(),
                "step {}: AllowedIds on {:?}", k, upd);
            match expected_a {
                Some(new_rows) => rows_a = new_rows,
                None => prop_assert_eq!(allow.batch_size(), before_a),
            }
            match &expected {
                Some(new_rows) => {
                    prop_assert_eq!(results, [true; 2], "step {}: valid update rejected: {:?}", k, upd);
                    rows = new_rows.clone();
                }
                None => {
                    prop_assert_eq!(results, [false; 2], "step {}: invalid update accepted: {:?}", k, upd);
                    // Unchanged state.
                    prop_assert_eq!(force.batch_size(), before_batch);
                    let after: Vec<Option<Vec<u32>>> =
                        (0..CAPACITY).map(|r| force.allowed_token_ids(r).map(<[u32]>::to_vec)).collect();
                    prop_assert_eq!(&after, &before);
                }
            }
            let batch = (0..CAPACITY).filter(|&i| rows[i].is_some()).count();
            prop_assert_eq!(force.batch_size(), batch);
            let batch_a = (0..CAPACITY).filter(|&i| rows_a[i].is_some()).count();
            prop_assert_eq!(allow.batch_size(), batch_a);
            prop_assert_eq!(pipe.batch_size(), batch);
            for r in 0..CAPACITY {
                let want = rows[r].as_ref().and_then(|q| q.forced.clone());
                prop_assert_eq!(force.allowed_token_ids(r).map(<[u32]>::to_vec), want, "row {}", r);
            }

            let cases: [(&mut dyn LogitsProcessor, &Rows, bool, Option<(&[u32], AllowedMode)>); 3] = [
                (&mut force, &rows, true, None),
                (&mut allow, &rows_a, false, Some((&allowed, mode))),
                (&mut pipe, &rows, true, Some((&allowed, mode))),
            ];
            for (p, rows, f, a) in cases {
                let batch = (0..CAPACITY).filter(|&i| rows[i].is_some()).count();
                let raw = random_logits(seed.wrapping_add(k as u64), batch);
                let (_, start) = round_trip(&raw, dtype);
                let (t, _) = round_trip(&raw, dtype);
                p.apply(&t).unwrap();
                let got = read(&t);
                let want = rounded(reference_logits(rows, batch, &start, f, a), dtype);
                for r in 0..batch {
                    for j in 0..VOCAB {
                        prop_assert!(same(got[r][j], want[r][j]),
                            "{} step {} row {} col {}: got {} want {} ({:?})",
                            p.name(), k, r, j, got[r][j], want[r][j], dtype);
                    }
                }
            }
        }
    }
}
