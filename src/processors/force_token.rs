//! [`ForceToken`]: per request, only a given set of token ids survives (vLLM's
//! `allowed_token_ids`).

use std::sync::Arc;

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::kernels::{KEEP_BITMASK, KEEP_LIST_MAX};
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;
use crate::processors::{apply_alone, builtin_basics, sorted_set};

/// vLLM's per-request `allowed_token_ids`: keeps, in the row of each request that sets
/// [`RequestParams::allowed_token_ids`], only the logits of those tokens; every other logit of
/// the row becomes −inf. Kept logits are unchanged (NaN and −inf included); rows of requests
/// without `allowed_token_ids` are untouched. Any set size.
///
/// (For one id list applied to *every* row, as a boost or a mask, see
/// [`AllowedIds`](crate::AllowedIds).)
///
/// # State and cost
///
/// A `max_batch_size × (1 + max(ceil(vocab / 32), 64))` table of `u32` on the configured
/// device: a set of up to 64 ids is stored as a sorted list, a larger one as a bitmask row.
/// [`update_state`](LogitsProcessor::update_state) costs, per row the update touches (added,
/// removed or moved onto), O(set) on the host for a list, O(vocab / 32 + set) for a bitmask
/// row, which is rewritten whole even when its request only moved; plus O(n log n) to sort a
/// joining request's `n` ids. On CUDA the changed list words go out with the step's other
/// queued writes, and the rewritten bitmask rows as one asynchronous copy of the rows from the
/// lowest to the highest of them. [`apply`](LogitsProcessor::apply) writes −inf over the
/// unforced logits of each forced row without reading them; other rows are not touched.
///
/// # Errors
///
/// A request whose set is empty ([`ParamsError::EmptyTokenSet`]) or holds an id outside the
/// vocabulary ([`ParamsError::TokenOutOfVocab`]).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use logits_processors::{BatchUpdateBuilder, ForceToken, LogitsProcessor, ProcessorConfig, RequestParams};
///
/// let config = ProcessorConfig::builder().max_batch_size(8).vocab_size(5).build()?;
/// let mut force = ForceToken::new(&config)?;
/// let mut b = BatchUpdateBuilder::new();
/// b.add(0, Arc::new(RequestParams::new().with_allowed_token_ids([1, 3])));
/// b.add(1, Arc::new(RequestParams::new()));
/// force.update_state(b.build(2))?;
///
/// let logits = Tensor::new(&[[0f32, 1., 2., 3., 4.], [0., 1., 2., 3., 4.]], &Device::Cpu)?;
/// force.apply(&logits)?;
/// let inf = f32::NEG_INFINITY;
/// assert_eq!(logits.to_vec2::<f32>()?, [[inf, 1., inf, 3., inf], [0., 1., 2., 3., 4.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
#[derive(Debug)]
pub struct ForceToken {
    config: ProcessorConfig,
    ledger: RowLedger<Arc<[u32]>>,
    table: RowTable,
}

const PARAM: &str = "allowed_token_ids";

impl ForceToken {
    /// A ForceToken for `config`.
    ///
    /// # Errors
    ///
    /// A device error while allocating the state table.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        let words = config.vocab_size().div_ceil(32);
        let width = 1 + words.max(KEEP_LIST_MAX.min(config.vocab_size()));
        Ok(Self {
            config: config.clone(),
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(config.max_batch_size(), width, 0, config.device())?,
        })
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    /// The forced set (sorted, distinct) of the request at `row`, if it has one.
    pub fn allowed_token_ids(&self, row: usize) -> Option<&[u32]> {
        self.ledger.get(row).map(|s| &s[..])
    }
}

/// A request's forced set, normalised, or `None` if it sets none.
fn token_set(config: &ProcessorConfig, params: &RequestParams) -> Result<Option<Arc<[u32]>>> {
    let Some(tokens) = &params.allowed_token_ids else {
        return Ok(None);
    };
    if tokens.is_empty() {
        return Err(ParamsError::EmptyTokenSet { param: PARAM }.into());
    }
    for &t in tokens {
        config.check_token(PARAM, t)?;
    }
    Ok(Some(sorted_set(tokens).into()))
}

impl LogitsProcessor for ForceToken {
    fn name(&self) -> &'static str {
        "ForceToken"
    }

    /// # Errors
    ///
    /// [`ParamsError::EmptyTokenSet`] or [`ParamsError::TokenOutOfVocab`].
    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        token_set(&self.config, params).map(|_| ())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        let config = &self.config;
        self.ledger
            .apply(update, |added| token_set(config, &added.params))?;
        let words = self.config.vocab_size().div_ceil(32);
        for &row in self.ledger.touched() {
            match self.ledger.get(row) {
                Some(set) if set.len() <= KEEP_LIST_MAX => {
                    for (i, &t) in set.iter().enumerate() {
                        self.table.set(row, 1 + i, t);
                    }
                    self.table.set(row, 0, set.len() as u32);
                }
                Some(set) => {
                    let entry = self.table.row_mut(row);
                    entry[0] = KEEP_BITMASK;
                    let bits = &mut entry[1..1 + words];
                    bits.fill(0);
                    for &t in set.iter() {
                        bits[(t / 32) as usize] |= 1 << (t % 32);
                    }
                }
                None => self.table.set(row, 0, 0),
            }
        }
        Ok(self.table.sync()?)
    }

    apply_alone!();

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Builtin for ForceToken {
    builtin_basics!();

    fn part(&self) -> Option<Part<'_>> {
        Some(Part::Keep(&self.table))
    }
}
