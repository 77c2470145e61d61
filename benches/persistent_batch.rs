//! `PersistentBatch`: the host cost of a step with a few changes in a 256-row batch, beside the
//! same step bookkept by hand (an engine's own row list and id map feeding a
//! `BatchUpdateBuilder`: the floor the helper adds to), and beside a whole step including a
//! pipeline's `update_state`.
//!
//! One iteration is two steps: (remove 3, add 2, swap 1) then (remove 1, add 2, swap 1), so the
//! batch stays at 255-256 rows and the first step condenses one hole with a move.
//!
//! Run: `cargo bench --bench persistent_batch`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use logits_processors::{
    BatchUpdate, BatchUpdateBuilder, ForceToken, LogitBias, LogitsProcessor, Penalties,
    PersistentBatch, Pipeline, ProcessorConfig, RequestParams,
};

const ROWS: usize = 256;
const VOCAB: usize = 151_936;

/// The changes of one step: rows to remove (picked from the current rows), adds, a swap.
const STEPS: [(&[usize], usize, (usize, usize)); 2] =
    [(&[17, 101, 230], 2, (3, 200)), (&[64], 2, (10, 128))];

fn with_helper(
    batch: &mut PersistentBatch<u64>,
    next_id: &mut u64,
    params: &Arc<RequestParams>,
    mut sink: impl FnMut(Option<&BatchUpdate>),
) {
    for (removes, adds, (a, b)) in STEPS {
        for &r in removes {
            let id = *batch.id_at(r % batch.len()).unwrap();
            batch.remove(&id).unwrap();
        }
        for _ in 0..adds {
            batch.add(*next_id, params.clone()).unwrap();
            *next_id += 1;
        }
        batch.swap_rows(a, b).unwrap();
        sink(batch.step());
    }
}

/// What an engine writes without the helper: its own rows and id map, and the builder.
struct Hand {
    rows: Vec<Option<u64>>,
    index: HashMap<u64, usize>,
    holes: Vec<usize>,
    len: usize,
    top: usize,
    builder: BatchUpdateBuilder,
}

impl Hand {
    fn step(
        &mut self,
        next_id: &mut u64,
        params: &Arc<RequestParams>,
        mut sink: impl FnMut(Option<&BatchUpdate>),
    ) {
        for (removes, adds, (a, b)) in STEPS {
            for &r in removes {
                let row = r % self.len;
                let id = self.rows[row].take().unwrap();
                self.index.remove(&id);
                self.builder.remove(row);
                self.holes.push(row);
                self.len -= 1;
            }
            self.holes.sort_unstable_by(|x, y| y.cmp(x));
            for _ in 0..adds {
                let row = match self.builder.pop_removed() {
                    Some(row) => {
                        self.holes.retain(|&h| h != row);
                        row
                    }
                    None => {
                        self.top += 1;
                        self.top - 1
                    }
                };
                self.rows[row] = Some(*next_id);
                self.index.insert(*next_id, row);
                self.builder.add(row, params.clone());
                *next_id += 1;
                self.len += 1;
            }
            // condense from the top
            while let Some(hole) = self.holes.pop() {
                if hole >= self.len {
                    continue;
                }
                let mut src = self.top - 1;
                while self.rows[src].is_none() {
                    src -= 1;
                }
                let id = self.rows[src].take().unwrap();
                self.rows[hole] = Some(id);
                self.index.insert(id, hole);
                self.builder.move_request(src, hole);
            }
            self.top = self.len;
            self.rows.swap(a, b);
            for row in [a, b] {
                self.index.insert(self.rows[row].unwrap(), row);
            }
            self.builder.swap(a, b);
            sink(self.builder.build(self.len));
        }
    }
}

/// The peer is only a floor if it is right: its updates must be accepted by a processor and
/// leave the same rows as the helper's.
fn check_hand_matches_helper(mut hand: Hand, params: &Arc<RequestParams>) {
    let config = ProcessorConfig::builder()
        .max_batch_size(ROWS)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut by_hand = ForceToken::new(&config).unwrap();
    let mut b = BatchUpdateBuilder::new();
    for row in 0..ROWS {
        b.add(row, params.clone());
    }
    by_hand.update_state(b.build(ROWS)).unwrap();
    let mut batch = PersistentBatch::<u64>::new(ROWS);
    for id in 0..ROWS as u64 {
        batch.add(id, params.clone()).unwrap();
    }
    batch.step();
    let (mut next_hand, mut next_helper) = (ROWS as u64, ROWS as u64);
    for _ in 0..100 {
        hand.step(&mut next_hand, params, |u| by_hand.update_state(u).unwrap());
        with_helper(&mut batch, &mut next_helper, params, |_| {});
        assert_eq!(hand.len, batch.len());
        for row in 0..hand.len {
            assert_eq!(hand.rows[row].as_ref(), batch.id_at(row));
        }
    }
}

fn step(c: &mut Criterion) {
    let mut group = c.benchmark_group("persistent_batch");
    let params = Arc::new(RequestParams::new().with_allowed_token_ids([32, 33, 48_731]));

    let mut batch = PersistentBatch::<u64>::new(ROWS);
    let mut next_id = 0;
    for _ in 0..ROWS {
        batch.add(next_id, params.clone()).unwrap();
        next_id += 1;
    }
    batch.step();
    group.bench_function("two_steps_in_256/helper", |bench| {
        bench.iter(|| {
            with_helper(&mut batch, &mut next_id, &params, |u| {
                black_box(u);
            })
        })
    });

    let new_hand = || Hand {
        rows: (0..ROWS as u64).map(Some).collect(),
        index: (0..ROWS as u64).map(|id| (id, id as usize)).collect(),
        holes: Vec::with_capacity(ROWS),
        len: ROWS,
        top: ROWS,
        builder: BatchUpdateBuilder::new(),
    };
    check_hand_matches_helper(new_hand(), &params);
    let mut hand = new_hand();
    let mut next_id = ROWS as u64;
    group.bench_function("two_steps_in_256/by_hand", |bench| {
        bench.iter(|| {
            hand.step(&mut next_id, &params, |u| {
                black_box(u);
            })
        })
    });

    let config = ProcessorConfig::builder()
        .max_batch_size(ROWS)
        .vocab_size(VOCAB)
        .build()
        .unwrap();
    let mut processors = Pipeline::builder(&config)
        .with(ForceToken::new(&config).unwrap())
        .with(LogitBias::new(&config).unwrap())
        .with(Penalties::new(&config).unwrap())
        .build()
        .unwrap();
    let mut batch = PersistentBatch::<u64>::new(ROWS);
    let mut next_id = 0;
    for _ in 0..ROWS {
        batch.add(next_id, params.clone()).unwrap();
        next_id += 1;
    }
    processors.update_state(batch.step()).unwrap();
    group.bench_function("two_steps_in_256/helper+pipeline_update_state", |bench| {
        bench.iter(|| {
            with_helper(&mut batch, &mut next_id, &params, |u| {
                processors.update_state(u).unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
