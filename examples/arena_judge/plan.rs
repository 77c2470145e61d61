//! The batch plan: which rows run together through the model.
//!
//! The plan is a pure function of the encoded lengths and the two batch limits, so a resumed run
//! forms exactly the batches of the interrupted one and writes the same bytes.

use crate::inputs::Inputs;

/// One forward pass worth of rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Items ([`Inputs::items`]), shortest prompt first.
    pub items: Vec<usize>,
    /// Tokens of the longest prompt (every row is padded to it).
    pub longest: usize,
    /// Real (unpadded) tokens of all rows.
    pub tokens: usize,
}

impl Batch {
    /// Tokens after padding: rows × longest.
    pub fn padded(&self) -> usize {
        self.items.len() * self.longest
    }
}

/// Packs the encoded items into batches: sorted by token length (ties by item index, so the plan
/// is deterministic), each batch as large as `token_budget` tokens and `max_rows` rows allow. A
/// batch's tokens are its real tokens when the model packs rows back to back (`packed`, the fused
/// CUDA path), else rows × longest row (the padded candle path). A prompt longer than the budget
/// gets a batch of its own.
pub fn plan_batches(
    inputs: &Inputs,
    token_budget: usize,
    max_rows: usize,
    packed: bool,
) -> Vec<Batch> {
    let mut order: Vec<(usize, usize)> = (0..inputs.items())
        .filter_map(|i| inputs.item_prompt(i).map(|p| (p.len(), i)))
        .collect();
    order.sort_unstable();
    let mut batches = Vec::new();
    let mut current = Batch::default();
    for (len, i) in order {
        let n = current.items.len();
        let cost = if packed {
            current.tokens + len
        } else {
            (n + 1) * len
        };
        let fits = n < max_rows && cost <= token_budget;
        if n > 0 && !fits {
            batches.push(std::mem::take(&mut current));
        }
        current.items.push(i);
        current.longest = len; // ascending order: the newest row is the longest
        current.tokens += len;
    }
    if !current.items.is_empty() {
        batches.push(current);
    }
    batches
}
