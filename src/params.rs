//! Per-request parameters: what a request asks of the processors.
//!
//! [`RequestParams`] has a typed field for each built-in processor, named after vLLM's
//! `SamplingParams`, and an extension map, [`RequestParams::extra`], for custom processors
//! (vLLM's `extra_args`), and a map of shared objects of any type,
//! [`RequestParams::objects`] (a grammar matcher, a compiled regex).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::ParamsError;
use crate::objects::RequestObjects;

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
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RequestParams {
    /// vLLM's `allowed_token_ids`, read by [`ForceToken`](crate::ForceToken): the only token
    /// ids that may be produced next. `None` leaves the request's row untouched. Order and
    /// duplicates do not matter; an empty list is rejected.
    pub allowed_token_ids: Option<Vec<u32>>,
    /// vLLM's `logit_bias`, read by [`LogitBias`](crate::LogitBias): added to the token's logit.
    /// Any number of entries; the biases must be finite.
    pub logit_bias: BTreeMap<u32, f32>,
    /// vLLM's `min_tokens`, read by [`MinTokens`](crate::MinTokens): until the request has this
    /// many output tokens, its stop tokens (the model's EOS and
    /// [`stop_token_ids`](Self::stop_token_ids)) are −inf. 0 = off.
    pub min_tokens: usize,
    /// vLLM's `stop_token_ids`: the request's own stop tokens (read by
    /// [`MinTokens`](crate::MinTokens)).
    pub stop_token_ids: Vec<u32>,
    /// vLLM's `min_p`, read by [`MinP`](crate::MinP): tokens whose probability is below
    /// `min_p × p_max` are dropped. In `[0, 1]`; 0 = off, and ignored for a greedy request
    /// (temperature 0), as in vLLM.
    pub min_p: f32,
    /// vLLM's `bad_words`, as token sequences, read by [`BadWords`](crate::BadWords): when the
    /// output ends with all but the last token of a sequence, that last token is −inf (a
    /// one-token sequence is always banned). Sequences must not be empty.
    pub bad_words_token_ids: Vec<Vec<u32>>,
    /// vLLM's / HF's `repetition_penalty`, read by [`Penalties`](crate::Penalties): logits of
    /// tokens in the prompt or the output are divided by it when positive, multiplied when
    /// negative. Positive and finite; 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI's / vLLM's `frequency_penalty`, read by [`Penalties`](crate::Penalties):
    /// subtracted once per occurrence of the token in the output. Any finite value (vLLM
    /// accepts `[-2, 2]`); 0 = off.
    pub frequency_penalty: f32,
    /// OpenAI's / vLLM's `presence_penalty`, read by [`Penalties`](crate::Penalties):
    /// subtracted once if the token occurs in the output. Any finite value (vLLM accepts
    /// `[-2, 2]`); 0 = off.
    pub presence_penalty: f32,
    /// vLLM's `temperature`, read by [`Temperature`](crate::Temperature): logits are divided by
    /// it. Finite and non-negative; 0 (greedy: [`MinP`](crate::MinP) does not cut the row either)
    /// and 1 leave the row unchanged, and one in (0, 0.01) is raised to 0.01, as in vLLM.
    pub temperature: f32,
    /// Free-form arguments for custom processors, keyed by name.
    pub extra: BTreeMap<String, ExtraArg>,
    /// Shared objects of any type for custom processors, keyed by name (see
    /// [`with_object`](Self::with_object) and [`object`](Self::object)).
    pub objects: RequestObjects,
}

impl Default for RequestParams {
    fn default() -> Self {
        Self {
            allowed_token_ids: None,
            logit_bias: BTreeMap::new(),
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            min_p: 0.0,
            bad_words_token_ids: Vec::new(),
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            temperature: 1.0,
            extra: BTreeMap::new(),
            objects: RequestObjects::new(),
        }
    }
}

impl RequestParams {
    /// Parameters that ask nothing of any built-in processor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`logit_bias`](Self::logit_bias) (later entries for the same token win).
    pub fn with_logit_bias(mut self, bias: impl IntoIterator<Item = (u32, f32)>) -> Self {
        self.logit_bias = bias.into_iter().collect();
        self
    }

    /// Sets [`min_tokens`](Self::min_tokens).
    pub fn with_min_tokens(mut self, n: usize) -> Self {
        self.min_tokens = n;
        self
    }

    /// Sets [`stop_token_ids`](Self::stop_token_ids).
    pub fn with_stop_token_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.stop_token_ids = ids.into_iter().collect();
        self
    }

    /// Sets [`min_p`](Self::min_p).
    pub fn with_min_p(mut self, min_p: f32) -> Self {
        self.min_p = min_p;
        self
    }

    /// Sets [`bad_words_token_ids`](Self::bad_words_token_ids).
    pub fn with_bad_words(mut self, words: impl IntoIterator<Item = Vec<u32>>) -> Self {
        self.bad_words_token_ids = words.into_iter().collect();
        self
    }

    /// Sets [`repetition_penalty`](Self::repetition_penalty).
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = penalty;
        self
    }

    /// Sets [`frequency_penalty`](Self::frequency_penalty).
    pub fn with_frequency_penalty(mut self, penalty: f32) -> Self {
        self.frequency_penalty = penalty;
        self
    }

    /// Sets [`presence_penalty`](Self::presence_penalty).
    pub fn with_presence_penalty(mut self, penalty: f32) -> Self {
        self.presence_penalty = penalty;
        self
    }

    /// Sets [`temperature`](Self::temperature).
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
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

    /// Attaches a shared object for custom processors (a grammar matcher, a compiled regex)
    /// under `name`; read it back with [`object`](Self::object). The object is shared, not
    /// copied.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use logits_processors::RequestParams;
    ///
    /// /// A stand-in for a grammar matcher the engine advances and a processor reads.
    /// struct Matcher { allowed: Mutex<Vec<u32>> }
    ///
    /// let matcher = Arc::new(Matcher { allowed: Mutex::new(vec![1, 2]) });
    /// let params = RequestParams::new().with_object("grammar", matcher.clone());
    /// // in a processor's update_state, from `added.params`:
    /// let seen = params.object::<Matcher>("grammar")?.expect("attached");
    /// matcher.allowed.lock().unwrap().push(3); // the engine advances it...
    /// assert_eq!(*seen.allowed.lock().unwrap(), [1, 2, 3]); // ...the processor sees it
    /// # Ok::<(), logits_processors::ParamsError>(())
    /// ```
    pub fn with_object<T: Any + Send + Sync>(
        mut self,
        name: impl Into<String>,
        object: Arc<T>,
    ) -> Self {
        self.objects.insert(name, object);
        self
    }

    /// The object attached under `name` as an `Arc<T>`, or `None` if there is none. Cost: a
    /// map lookup and a reference-count increment.
    ///
    /// # Errors
    ///
    /// [`ParamsError::ObjectType`] if the object under `name` is not a `T` (return it from
    /// `validate_params` to reject the request).
    pub fn object<T: Any + Send + Sync>(&self, name: &str) -> Result<Option<Arc<T>>, ParamsError> {
        self.objects.get(name)
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
