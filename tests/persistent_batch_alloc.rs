//! `PersistentBatch` allocates nothing once warm: thousands of steps of removes, adds, swaps,
//! sorts and condenses in a 64-row batch, counted by a global allocator on this thread. The
//! only allocations are those of each added request's fresh `OutputTokens` handle (made by
//! `AddedRequest::new`, the same as `BatchUpdateBuilder::add`), counted separately.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use logits_processors::{AddedRequest, PersistentBatch, RequestParams};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn no_allocation_once_warm_beyond_each_added_requests_output_handle() {
    const CAP: usize = 64;
    let params = Arc::new(RequestParams::new());
    let per_add = count(|| drop(AddedRequest::new(0, params.clone())));

    let mut batch = PersistentBatch::<u64>::new(CAP);
    let mut next = 0u64;
    let (mut adds, mut moves, mut removed) = (0usize, 0usize, 0usize);
    let allocations = count(|| {
        for step in 0..5_000usize {
            // pseudo-random, deterministic choices
            let h = step.wrapping_mul(2_654_435_761) >> 7;
            let removes = if batch.len() > CAP / 2 { h % 4 } else { 0 };
            for k in 0..removes {
                let nth = (h / 5 + k * 13) % batch.len();
                let id = *batch.iter().nth(nth).unwrap().1;
                batch.remove(&id).unwrap();
            }
            for _ in 0..(h / 3) % 4 {
                if batch.is_full() {
                    break;
                }
                batch.add(next, params.clone()).unwrap();
                next += 1;
                adds += 1;
            }
            if batch.len() >= 2 {
                batch.swap_rows(0, batch.len() - 1).unwrap();
            }
            if step % 7 == 0 {
                batch.sort_by_key(|id| std::cmp::Reverse(*id)).unwrap();
            }
            if let Some(update) = batch.step() {
                moves += update.moved.len();
                removed += update.removed.len();
            }
        }
    });
    assert!(
        adds > 1_000 && moves > 1_000 && removed > 1_000,
        "the stream: {adds} adds, {moves} moves, {removed} removed rows"
    );
    assert_eq!(allocations, adds * per_add, "{per_add} per add");
}
