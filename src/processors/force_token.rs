//! [`ForceToken`]: per request, only a given set of token ids survives (vLLM's
//! `allowed_token_ids`).

use candle_core::Tensor;
use smallvec::SmallVec;

use crate::batch::BatchUpdate;
use crate::config::ProcessorConfig;
use crate::error::{ConfigError, ParamsError, Result};
use crate::kernels::table::RowTable;
use crate::kernels::{ForceSpec, MaskOp};
use crate::ledger::RowLedger;
use crate::params::RequestParams;
use crate::pipeline::stage::{Builtin, Part};
use crate::processor::LogitsProcessor;

/// A request's forced token set: sorted, distinct.
type TokenSet = SmallVec<[u32; 8]>;

/// vLLM's per-request `allowed_token_ids`: keeps, in the row of each request that sets
/// [`RequestParams::allowed_token_ids`], only the logits of those tokens; every other logit of
/// the row becomes −inf. Kept logits are unchanged (NaN and −inf included); rows of requests
/// without `allowed_token_ids` are untouched.
///
/// (For one id list applied to *every* row, as a boost or a mask, see
/// [`AllowedIds`](crate::AllowedIds).)
///
/// # State and cost
///
/// A `max_batch_size × (1 + max_tokens)` table of `u32` on the configured device, updated row by
/// row: [`update_state`](LogitsProcessor::update_state) costs O(changes) on the host plus, on
/// CUDA, one asynchronous upload of the changed rows (nothing when the batch is unchanged).
/// [`apply`](LogitsProcessor::apply) is one in-place kernel that writes −inf over each forced
/// row without reading it; other rows are not touched.
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
    max_tokens: usize,
    ledger: RowLedger<TokenSet>,
    table: RowTable,
}

impl ForceToken {
    /// The default per-request limit of [`ForceToken::new`].
    pub const DEFAULT_MAX_TOKENS: usize = 16;

    /// A ForceToken for `config`, forcing at most [`Self::DEFAULT_MAX_TOKENS`] distinct tokens
    /// per request.
    ///
    /// # Errors
    ///
    /// A device error while allocating the state table.
    pub fn new(config: &ProcessorConfig) -> Result<Self> {
        Self::with_max_tokens(config, Self::DEFAULT_MAX_TOKENS)
    }

    /// A ForceToken that forces at most `max_tokens` distinct tokens per request. The state
    /// table holds `max_batch_size × (1 + max_tokens)` `u32`s.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] if `max_tokens` is 0; a device error while allocating.
    pub fn with_max_tokens(config: &ProcessorConfig, max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 {
            return Err(ConfigError::Zero {
                what: "ForceToken max_tokens",
            }
            .into());
        }
        Ok(Self {
            config: config.clone(),
            max_tokens,
            ledger: RowLedger::new(config.max_batch_size()),
            table: RowTable::new(config.max_batch_size(), 1 + max_tokens, config.device())?,
        })
    }

    /// The most distinct tokens one request may force.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The current batch size.
    pub fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    /// The forced set (sorted, distinct) of the request at `row`, if it has one.
    pub fn forced_tokens(&self, row: usize) -> Option<&[u32]> {
        self.ledger.get(row).map(|s| s.as_slice())
    }
}

const PARAM: &str = "allowed_token_ids";

/// A request's forced set, normalised, or `None` if it sets none.
fn token_set(
    config: &ProcessorConfig,
    max_tokens: usize,
    params: &RequestParams,
) -> Result<Option<TokenSet>, ParamsError> {
    let Some(tokens) = &params.allowed_token_ids else {
        return Ok(None);
    };
    if tokens.is_empty() {
        return Err(ParamsError::EmptyTokenSet { param: PARAM });
    }
    for &t in tokens {
        config.check_token(PARAM, t)?;
    }
    let mut set: TokenSet = tokens.iter().copied().collect();
    set.sort_unstable();
    set.dedup();
    if set.len() > max_tokens {
        return Err(ParamsError::TooManyTokens {
            param: PARAM,
            len: set.len(),
            max: max_tokens,
        });
    }
    Ok(Some(set))
}

impl LogitsProcessor for ForceToken {
    fn name(&self) -> &'static str {
        "ForceToken"
    }

    /// # Errors
    ///
    /// [`ParamsError::EmptyTokenSet`], [`ParamsError::TokenOutOfVocab`] or
    /// [`ParamsError::TooManyTokens`].
    fn validate_params(&self, params: &RequestParams) -> Result<()> {
        token_set(&self.config, self.max_tokens, params)?;
        Ok(())
    }

    fn update_state(&mut self, update: Option<&BatchUpdate>) -> Result<()> {
        let (config, max_tokens) = (&self.config, self.max_tokens);
        self.ledger.apply(update, |added| {
            Ok(token_set(config, max_tokens, &added.params)?)
        })?;
        for &row in self.ledger.touched() {
            let entry = self.table.row_mut(row);
            match self.ledger.get(row) {
                Some(set) => {
                    entry[0] = set.len() as u32;
                    entry[1..1 + set.len()].copy_from_slice(set);
                }
                None => entry[0] = 0,
            }
        }
        Ok(self.table.sync()?)
    }

    fn apply(&mut self, logits: &Tensor) -> Result<()> {
        self.config.check_logits(logits, self.ledger.batch_size())?;
        MaskOp {
            batch: self.ledger.batch_size(),
            vocab: self.config.vocab_size(),
            force: Some(ForceSpec { table: &self.table }),
            allowed: None,
        }
        .run(logits)?;
        Ok(())
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }
}

impl Builtin for ForceToken {
    fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    fn batch_size(&self) -> usize {
        self.ledger.batch_size()
    }

    fn part(&self) -> Part<'_> {
        Part::Keep(ForceSpec { table: &self.table })
    }
}
