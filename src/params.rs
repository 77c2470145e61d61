//! Per-request parameters: what a request asks of the processors.
//!
//! [`RequestParams`] has a typed field for each built-in processor and an extension map,
//! [`RequestParams::extra`], for custom processors (vLLM's `extra_args`).

use std::collections::BTreeMap;

use smallvec::SmallVec;

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
///     .with_forced_tokens([32, 33, 48731])
///     .with_extra("min_tokens", ExtraArg::Int(4));
/// assert_eq!(params.forced_tokens.as_deref(), Some(&[32, 33, 48731][..]));
/// assert_eq!(params.extra.get("min_tokens"), Some(&ExtraArg::Int(4)));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RequestParams {
    /// Read by [`ForceToken`](crate::ForceToken): the only token ids that may be produced
    /// next. `None` leaves the request's row untouched. Order and duplicates do not matter.
    pub forced_tokens: Option<SmallVec<[u32; 4]>>,
    /// Free-form arguments for custom processors, keyed by name.
    pub extra: BTreeMap<String, ExtraArg>,
}

impl RequestParams {
    /// Parameters that ask nothing of any built-in processor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks [`ForceToken`](crate::ForceToken) to keep only `tokens` in this request's row.
    pub fn with_forced_tokens(mut self, tokens: impl IntoIterator<Item = u32>) -> Self {
        self.forced_tokens = Some(tokens.into_iter().collect());
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
