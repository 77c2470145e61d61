//! The crate's one error type.
//!
//! Every fallible call returns [`Error`]. A rejected [`BatchUpdate`](crate::BatchUpdate) or
//! rejected logits leave the processor exactly as it was before the call: errors are
//! reported *before* any state is touched.

use candle_core::DType;

/// Everything that can go wrong when feeding a processor.
///
/// The variants name the offending row, token or shape so that an engine author can find the
/// bug in their bookkeeping from the message alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A row index in an update is at or beyond the processor's capacity
    /// (`max_batch_size` of its [`ProcessorConfig`](crate::ProcessorConfig)).
    #[error("{what} row {row} is out of range: the processor holds {capacity} rows")]
    RowOutOfRange {
        /// Which list of the update named the row (`"removed"`, `"added"`, `"moved"`).
        what: &'static str,
        /// The offending row index.
        row: usize,
        /// The processor's capacity.
        capacity: usize,
    },
    /// `batch_size` of an update exceeds the processor's capacity.
    #[error("batch_size {batch_size} exceeds the processor's capacity of {capacity} rows")]
    BatchSizeOverCapacity {
        /// The update's batch size.
        batch_size: usize,
        /// The processor's capacity.
        capacity: usize,
    },
    /// The same row appears twice in `removed`.
    #[error("row {row} is removed twice in one update")]
    RemovedTwice {
        /// The offending row.
        row: usize,
    },
    /// The same row appears twice in `added`.
    #[error("row {row} is added twice in one update")]
    AddedTwice {
        /// The offending row.
        row: usize,
    },
    /// `removed` names a row that holds no request.
    #[error("row {row} is removed but holds no request")]
    RemovedEmptyRow {
        /// The offending row.
        row: usize,
    },
    /// A unidirectional move starts from a row that holds no request at that point of the
    /// update (after `removed`, `added` and the earlier moves).
    #[error("move {from} -> {to}: row {from} holds no request at this point of the update")]
    MoveFromEmptyRow {
        /// Source row.
        from: usize,
        /// Target row.
        to: usize,
    },
    /// A swap names a row that holds no request at that point of the update.
    #[error("swap {a} <-> {b}: row {empty} holds no request at this point of the update")]
    SwapWithEmptyRow {
        /// First row of the swap.
        a: usize,
        /// Second row of the swap.
        b: usize,
        /// The row of the two that is empty.
        empty: usize,
    },
    /// After the update the rows in use are not exactly `0..batch_size`.
    #[error(
        "after the update {occupied} rows hold requests{stray}, but batch_size is {batch_size}: \
         the rows in use must be exactly 0..batch_size",
        stray = match .stray_row { Some(r) => format!(" (row {r} among them)"), None => String::new() }
    )]
    RowsNotContiguous {
        /// The update's batch size.
        batch_size: usize,
        /// How many rows hold a request after the update.
        occupied: usize,
        /// An occupied row at or beyond `batch_size`, if one was found.
        stray_row: Option<usize>,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {token} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// The offending id.
        token: u32,
        /// The processor's vocabulary size.
        vocab_size: usize,
    },
    /// A token set that must not be empty is empty.
    #[error("{what}: the token set is empty (it would mask every token)")]
    EmptyTokenSet {
        /// Where the empty set came from.
        what: &'static str,
    },
    /// A request asks to force more distinct tokens than the processor was built for.
    #[error("{len} forced tokens requested, but this ForceToken holds at most {max} per request")]
    TooManyTokens {
        /// Distinct tokens requested.
        len: usize,
        /// The processor's per-request limit.
        max: usize,
    },
    /// A custom processor rejected a request's parameters.
    #[error("{processor} rejects the request's parameters: {reason}")]
    InvalidParams {
        /// The processor's name.
        processor: &'static str,
        /// Why.
        reason: String,
    },
    /// Logits of the wrong rank.
    #[error("logits must have rank 2 ([batch, vocab]), got shape {shape:?}")]
    LogitsRank {
        /// The shape received.
        shape: Vec<usize>,
    },
    /// Logits whose shape does not match `[batch_size, vocab_size]`.
    #[error("logits have shape [{rows}, {width}], expected [{batch_size}, {vocab_size}] (batch_size, vocab_size)")]
    LogitsShape {
        /// Rows received.
        rows: usize,
        /// Columns received.
        width: usize,
        /// The current batch size.
        batch_size: usize,
        /// The processor's vocabulary size.
        vocab_size: usize,
    },
    /// Logits of a dtype the processors do not handle.
    #[error("logits dtype {dtype:?} is not supported: use f32, f16 or bf16")]
    LogitsDtype {
        /// The dtype received.
        dtype: DType,
    },
    /// Logits that are not contiguous row-major (processors write in place).
    #[error(
        "logits must be contiguous (row-major) to be processed in place; call .contiguous() first"
    )]
    LogitsNotContiguous,
    /// Logits on another device than the processor's state.
    #[error("logits are on {got:?} but the processor's state lives on {expected:?}")]
    DeviceMismatch {
        /// The processor's device.
        expected: candle_core::DeviceLocation,
        /// The logits' device.
        got: candle_core::DeviceLocation,
    },
    /// A configuration value is unusable (zero capacity, zero vocabulary, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An error from candle (allocation, device copy, kernel launch).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
