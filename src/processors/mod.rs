//! The built-in processors, one module each, and the helpers they share.

mod allowed_ids;
mod bad_words;
mod force_token;
mod logit_bias;
mod min_p;
mod min_tokens;
mod penalties;
mod temperature;
mod token_bitmask;

pub use allowed_ids::{AllowedIds, AllowedMode};
pub use bad_words::BadWords;
pub use force_token::ForceToken;
pub use logit_bias::LogitBias;
pub use min_p::MinP;
pub use min_tokens::MinTokens;
pub use penalties::Penalties;
pub use temperature::Temperature;
pub use token_bitmask::TokenBitmask;

use crate::kernels::table::RowTable;

/// Above this many words a row is rewritten as one span rather than word by word.
const SPAN_WORDS: usize = 64;

/// Writes `[words.len() / stride, words…]` into `row` of a list table (`stride` words per
/// entry), widening the table if needed.
pub(crate) fn write_list(
    table: &mut RowTable,
    row: usize,
    stride: usize,
    words: &[u32],
) -> candle_core::Result<()> {
    table.ensure_width(1 + words.len(), 0)?;
    let n = (words.len() / stride) as u32;
    if words.len() > SPAN_WORDS {
        let r = table.row_mut(row);
        r[0] = n;
        r[1..1 + words.len()].copy_from_slice(words);
    } else {
        for (i, &w) in words.iter().enumerate() {
            table.set(row, 1 + i, w);
        }
        table.set(row, 0, n);
    }
    Ok(())
}

/// Sorted, distinct copy of `ids`.
pub(crate) fn sorted_set(ids: &[u32]) -> Vec<u32> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Implements the boilerplate of [`Builtin`](crate::pipeline::stage::Builtin) for a processor
/// with `config` and `ledger` fields.
macro_rules! builtin_basics {
    () => {
        fn config(&self) -> &crate::config::ProcessorConfig {
            &self.config
        }

        fn batch_size(&self) -> usize {
            self.ledger.batch_size()
        }
    };
}
pub(crate) use builtin_basics;

/// The standard `apply` of a built-in: check the logits, run its part alone.
macro_rules! apply_alone {
    () => {
        fn apply(&mut self, logits: &candle_core::Tensor) -> crate::error::Result<()> {
            use crate::pipeline::stage::Builtin;
            self.config.check_logits(logits, self.ledger.batch_size())?;
            self.prepare_step()?;
            let mut op =
                crate::kernels::FusedOp::new(self.ledger.batch_size(), self.config.vocab_size());
            if let Some(part) = self.part() {
                part.place(&mut op);
            }
            let result = op.run(logits);
            self.finish_step();
            Ok(result?)
        }
    };
}
pub(crate) use apply_alone;
