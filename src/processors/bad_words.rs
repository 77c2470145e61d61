//! [`BadWords`]: per request, token sequences that must not be completed.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::ledger::RowLedger;
use crate::output::OutputCursor;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics, sorted_set, write_list};

const PARAM: &str = "bad_words_token_ids";

/// vLLM's `bad_words` (HF's `bad_words_ids`), as token sequences
/// ([`RequestParams::bad_words_token_ids`]): when a request's output ends with all but the last
/// token of a sequence, that last token is −inf; a one-token sequence is always banned.
///
/// The output is followed through an [`OutputCursor`](crate::OutputCursor), so appends and
/// rollbacks are seen at every `update_state` (call it every step, with `None` when the batch
/// did not change).
///
/// # State and cost
///
/// A per-row ban list on the device. `update_state`: for each request with multi-token
/// sequences, its new output tokens plus one comparison per sequence of the output's tail
/// (O(sequence length)); a device write only when the banned set changes. `apply`: writes −inf
/// over the banned ids only.
///
/// # Errors
///
/// An empty sequence ([`ParamsError::EmptyTokenSet`]) or an id outside the vocabulary
/// ([`ParamsError::TokenOutOfVocab`]).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::*;
///
/// let config = ProcessorConfig::builder().max_batch_size(1).vocab_size(4).build()?;
/// let mut bad = BadWords::new(&config)?;
/// let out = OutputTokens::new();
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_bad_words([vec![1, 2], vec![3]])))
///     .with_output_tokens(out.clone());
/// bad.update_state(b.build(1))?;
/// let neg = f32::NEG_INFINITY;
/// let logits = Tensor::new(&[[0f32, 0., 0., 0.]], &Device::Cpu)?;
/// bad.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[0., 0., 0., neg]]); // 3 always banned
///
/// out.push(1); // "1" was generated: "2" would complete [1, 2]
/// bad.update_state(None)?;
/// let logits = Tensor::new(&[[0f32, 0., 0., 0.]], &Device::Cpu)?;
/// bad.apply(&logits)?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[0., 0., neg, neg]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct BadWords {
    config: ProcessorConfig,
    ledger: RowLedger<Row>,
    table: RowTable,
    scratch: Vec<u32>,
}

#[derive(Debug)]
struct Row {
    /// One-token sequences: always banned.
    singles: Vec<u32>,
    /// Longer sequences.
    words: Vec<Vec<u32>>,
    cursor: Option<OutputCursor>,
    /// The banned set written to the table (sorted).
    banned: Vec<u32>,
}

impl BadWords {
    /// A BadWords for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(config.max_batch_size(), 1 + 4, 0, config.device())?,
            scratch: Vec::new(),
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }
}

fn check(config: &ProcessorConfig, params: &RequestParams) -> Result<()> {
    for w in &params.bad_words_token_ids {
        if w.is_empty() {
            return Err(ParamsError::EmptyTokenSet { param: PARAM }.into());
        }
        for &t in w {
            config.check_token(PARAM, t)?;
        }
    }
    Ok(())
}

/// The banned set of a row (sorted, distinct) for the output `tail`, into `out`.
fn banned(singles: &[u32], words: &[Vec<u32>], output: &[u32], out: &mut Vec<u32>) {
    out.clear();
    out.extend_from_slice(singles);
    for w in words {
        let prefix = &w[..w.len() - 1];
        if output.ends_with(prefix) {
            out.push(w[w.len() - 1]);
        }
    }
    out.sort_unstable();
    out.dedup();
}

impl LogitsProcessor for BadWords {
    fn name(&self) -> &'static str {
        "BadWords"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        check(&self.config, params)
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        let config = &self.config;
        self.ledger.apply(update, |a| {
            check(config, &a.params)?;
            let all = &a.params.bad_words_token_ids;
            if all.is_empty() {
                return Ok(None);
            }
            let singles: Vec<u32> = all.iter().filter(|w| w.len() == 1).map(|w| w[0]).collect();
            let words: Vec<Vec<u32>> = all.iter().filter(|w| w.len() > 1).cloned().collect();
            Ok(Some(Row {
                singles: sorted_set(&singles),
                cursor: (!words.is_empty()).then(|| a.output_token_ids.cursor()),
                words,
                banned: Vec::new(),
            }))
        })?;
        for i in 0..self.ledger.touched().len() {
            let row = self.ledger.touched()[i];
            match self.ledger.get_mut(row) {
                Some(r) => {
                    if let Some(c) = &mut r.cursor {
                        c.sync(|_| {});
                    }
                    let output = r.cursor.as_ref().map_or(&[][..], |c| c.tokens());
                    banned(&r.singles, &r.words, output, &mut r.banned);
                    write_list(&mut self.table, row, 1, &r.banned)?;
                }
                None => write_list(&mut self.table, row, 1, &[])?,
            }
        }
        for (row, state) in self.ledger.rows_mut() {
            let Some(r) = state else { continue };
            let Some(c) = &mut r.cursor else { continue };
            if c.sync(|_| {}) == 0 {
                continue;
            }
            banned(&r.singles, &r.words, c.tokens(), &mut self.scratch);
            if self.scratch != r.banned {
                std::mem::swap(&mut self.scratch, &mut r.banned);
                write_list(&mut self.table, row, 1, &r.banned)?;
            }
        }
        Ok(self.table.sync()?)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Builtin for BadWords {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Bans(0, &self.table))
    }
}
