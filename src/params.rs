//! Per-request parameters: what a request asks of the processors.
//!
//! [`RequestParams`] has a typed field for each built-in processor, named after vLLM's
//! `SamplingParams`, and an extension map, [`RequestParams::extra`], for custom processors
//! (vLLM's `extra_args`).

use std::collections::BTreeMap;

/// The parameters of one request, as handed to processors when the request joins the batch.
///
/// Built-in processors read typed fields; custom processors read [`extra`](Self::extra).
/// Construct with [`RequestParams::new`] and the `with_*` methods.
///
/// # Example
///
/// ```
/// use logits_processors::{ExtraArg, RequestParams};
///
/// let params = RequestParams::new()
///     .with_allowed_token_ids([32, 33, 48731])
///     .with_extra("scale", ExtraArg::Float(0.5));
/// assert_eq!(params.allowed_token_ids.as_deref(), Some(&[32, 33, 48731][..]));
/// assert_eq!(params.extra.get("scale"), Some(&ExtraArg::Float(0.5)));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RequestParams {
    /// vLLM's `allowed_token_ids`, read by [`ForceToken`](crate::ForceToken): the only token
    /// ids that may be produced next. `None` leaves the request's row untouched. Order and
    /// duplicates do not matter; an empty list is rejected.
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Free-form arguments for custom processors, keyed by name.
    pub extra: BTreeMap<String, ExtraArg>,
}

impl RequestParams {
    /// Parameters that ask nothing of any built-in processor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks [`ForceToken`](crate::ForceToken) to keep only `tokens` in this request's row
    /// (vLLM's `allowed_token_ids`).
    pub fn with_allowed_token_ids(mut self, tokens: impl IntoIterator<Item = u32>) -> Self {
        self.allowed_token_ids = Some(tokens.into_iter().collect());
        self
    }

    /// Sets one extension argument for custom processors.
    pub fn with_extra(mut self, key: impl Into<String>, value: ExtraArg) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
}

/// A value in [`RequestParams::extra`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ExtraArg {
    /// A flag.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A real number.
    Float(f64),
    /// Text.
    Str(String),
    /// A list of token ids.
    Tokens(Vec<u32>),
}
