//! [`BadWords`]: per request, token sequences that must not be completed.

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::ledger::RowLedger;
use crate::output::{OutputChange, OutputCursor, RowTokens, StepOutputs};
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics, sorted_set, write_list};

const PARAM: &str = "bad_words_token_ids";

/// vLLM's `bad_words` (HF's `bad_words_ids`), as token sequences
/// ([`RequestParams::bad_words_token_ids`]): when a request's output ends with all but the last
/// token of a sequence, that last token is −inf; a one-token sequence is always banned.
///
/// The output is followed through an [`OutputCursor`](crate::OutputCursor) (in a pipeline, the
/// pipeline's, shared with the other stages: no copy of its own), so appends and rollbacks are
/// seen at every `update_state` (call it every step, with `None` when the batch
/// did not change).
///
/// # State and cost
///
/// A per-row ban list on the device; no copy of the output (the cursor's is read).
/// `update_state` in a pipeline: for each request with multi-token sequences whose output
/// changed, a check of its last token against a per-row 64-bit filter of the sequences' prefix
/// ends (two hashed bits per end: about 1.4% of other tokens pass at four ends), then one
/// lookup among the prefix ends and, when it is one, one comparison per sequence of the
/// output's tail (O(sequence length)); a device write only when the banned set changes. Used
/// alone, it visits every row of the batch each step (one atomic load for an unchanged output,
/// the lookup for a changed one). `apply`: writes −inf over the banned ids only.
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
    /// Rows touched by the current update (reused).
    marks: Vec<bool>,
    /// Per row of the batch: a 64-bit filter of its sequences' prefix ends (the two bits of
    /// [`filter_bits`] per end; 0 for a row without longer sequences), and whether a longer
    /// sequence matched last time: a step skips a row whose new last token is not in the filter
    /// without reading its state.
    ends: Vec<u64>,
    matched: Vec<bool>,
    /// In a pipeline: output changes come from the pipeline.
    fed: bool,
}

#[derive(Debug)]
struct Row {
    /// One-token sequences: always banned.
    singles: Vec<u32>,
    /// Longer sequences.
    words: Vec<Vec<u32>>,
    /// The last token of each longer sequence's prefix (sorted, distinct): an output whose
    /// last token is not among them matches no longer sequence. Inline for a few sequences:
    /// the step's check reads no other cache line.
    prefix_ends: smallvec::SmallVec<[u32; 6]>,
    /// The request's output (standalone only; in a pipeline the pipeline's copy is read).
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
            marks: vec![false; config.max_batch_size()],
            ends: vec![0; config.max_batch_size()],
            matched: vec![false; config.max_batch_size()],
            fed: false,
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }
}

/// The two bits that token `t` sets in a row's filter of prefix ends (a two-hash Bloom filter
/// in one word: a row with four prefix ends lets about 1.4% of other tokens through, against
/// 6% for one bit per token).
#[inline]
fn filter_bits(t: u32) -> u64 {
    let a = t.wrapping_mul(0x9E37_79B1) >> 26;
    let b = t.wrapping_mul(0x85EB_CA77) >> 26;
    1 << a | 1 << b
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

/// The banned set of a row (sorted, distinct) for its `output`, into `out`; whether a longer
/// sequence matched.
fn banned(singles: &[u32], words: &[Vec<u32>], output: &[u32], out: &mut Vec<u32>) -> bool {
    out.clear();
    out.extend_from_slice(singles);
    let mut matched = false;
    for w in words {
        let prefix = &w[..w.len() - 1];
        if output.ends_with(prefix) {
            out.push(w[w.len() - 1]);
            matched = true;
        }
    }
    if matched {
        out.sort_unstable();
        out.dedup();
    }
    matched
}

impl LogitsProcessor for BadWords {
    fn name(&self) -> &'static str {
        "BadWords"
    }

    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        check(&self.config, params)
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        self.update(update, None, None)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl BadWords {
    fn update(
        &mut self,
        update: Option<&BatchUpdate>,
        fed: Option<&StepOutputs>,
        lists: Option<&dyn RowTokens>,
    ) -> Result<()> {
        let (config, own) = (&self.config, !self.fed);
        self.ledger.apply(update, |a| {
            check(config, &a.params)?;
            let all = &a.params.bad_words_token_ids;
            if all.is_empty() {
                return Ok(None);
            }
            let singles: Vec<u32> = all.iter().filter(|w| w.len() == 1).map(|w| w[0]).collect();
            let words: Vec<Vec<u32>> = all.iter().filter(|w| w.len() > 1).cloned().collect();
            let ends: Vec<u32> = words.iter().map(|w| w[w.len() - 2]).collect();
            Ok(Some(Row {
                singles: sorted_set(&singles),
                prefix_ends: sorted_set(&ends).into_iter().collect(),
                cursor: (own && !words.is_empty()).then(|| a.output_token_ids.cursor()),
                words,
                banned: Vec::new(),
            }))
        })?;
        for &row in self.ledger.touched() {
            self.marks[row] = true;
        }
        let batch = self.ledger.batch_size();
        let (table, scratch) = (&mut self.table, &mut self.scratch);
        let mut result = Ok(());
        // Returns the row's filter of prefix ends and whether a longer sequence matches now.
        let mut step = |row: usize, state: Option<&mut Row>, touched: bool| -> (u64, bool) {
            let Some(r) = state else {
                if touched {
                    result =
                        std::mem::replace(&mut result, Ok(())).and(write_list(table, row, 1, &[]));
                }
                return (0, false);
            };
            let Row {
                singles,
                words,
                prefix_ends,
                cursor,
                banned: row_banned,
            } = r;
            let filter = prefix_ends.iter().fold(0u64, |b, &t| b | filter_bits(t));
            // The output (with the number of changes this step), when a longer sequence may
            // match it.
            let (changed, output): (usize, &[u32]) = if words.is_empty() {
                (0, &[])
            } else {
                match (fed, lists, cursor.as_mut()) {
                    (Some(o), Some(l), _) => (o.row(row).len(), l.tokens(row)),
                    (_, _, Some(c)) => {
                        let n = c.sync(|_| {});
                        (n, c.tokens())
                    }
                    _ => (0, &[]),
                }
            };
            let was = row_banned.len() != singles.len();
            if !touched && changed == 0 {
                return (filter, was);
            }
            // Fast path: no longer sequence can match and none did before.
            let may_match = output
                .last()
                .is_some_and(|t| prefix_ends.binary_search(t).is_ok());
            if !touched && !may_match && !was {
                return (filter, false);
            }
            let matched = banned(singles, words, output, scratch);
            if !touched && !matched && !was {
                return (filter, false); // still just the one-token sequences
            }
            if touched || *scratch != *row_banned {
                std::mem::swap(scratch, row_banned);
                result = std::mem::replace(&mut result, Ok(()))
                    .and(write_list(table, row, 1, row_banned));
            }
            (filter, matched)
        };
        let (ends, matched, marks) = (&mut self.ends, &mut self.matched, &mut self.marks);
        match fed {
            Some(o) => {
                for i in 0..self.ledger.touched().len() {
                    let row = self.ledger.touched()[i];
                    if row < batch {
                        (ends[row], matched[row]) = step(row, self.ledger.get_mut(row), true);
                    }
                }
                let touched = !self.ledger.touched().is_empty();
                for (row, _, changes) in o.entries() {
                    let filter = ends[row];
                    if filter == 0 || (touched && marks[row]) {
                        continue;
                    }
                    // The new last token, when the step ends with an append: a row whose last
                    // token ends no prefix and that matched nothing before needs no visit.
                    if let Some(&OutputChange::Appended(t)) = changes.last() {
                        let bits = filter_bits(t);
                        if filter & bits != bits && !matched[row] {
                            continue;
                        }
                    }
                    (ends[row], matched[row]) = step(row, self.ledger.get_mut(row), false);
                }
            }
            None => {
                for (row, state) in self.ledger.rows_mut() {
                    (ends[row], matched[row]) = step(row, state, marks[row]);
                }
            }
        }
        // Rows past the batch that an update emptied.
        for &row in self.ledger.touched() {
            if std::mem::take(&mut marks[row]) && row >= batch {
                (ends[row], matched[row]) = (0, false);
                result = result.and(write_list(table, row, 1, &[]));
            }
        }
        result?;
        Ok(self.table.sync()?)
    }
}

impl Builtin for BadWords {
    builtin_basics!();

    fn follows_outputs(&self) -> bool {
        true
    }

    fn set_fed(&mut self) {
        self.fed = true;
    }

    fn update_fed(
        &mut self,
        update: Option<&BatchUpdate>,
        outputs: &StepOutputs,
        lists: &dyn RowTokens,
    ) -> Result<()> {
        self.update(update, Some(outputs), Some(lists))
    }

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Bans(0, &self.table))
    }
}
