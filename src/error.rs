//! The crate's errors, grouped by who must act on them.
//!
//! Every fallible call returns [`Error`], whose variants say whose mistake it is:
//!
//! | variant | who must act | inner type |
//! | --- | --- | --- |
//! | [`Error::Update`] | the engine: its batch bookkeeping is broken (a bug) | [`UpdateError`] |
//! | [`Error::Batch`] | the engine: it misused a [`PersistentBatch`](crate::PersistentBatch) (unknown or duplicate id, full batch) | [`BatchError`] |
//! | [`Error::Params`] | the client: a request asks for something unusable | [`ParamsError`] |
//! | [`Error::Logits`] | the caller of `apply`: wrong shape, dtype, layout or device | [`LogitsError`] |
//! | [`Error::Config`] | whoever builds the processors | [`ConfigError`] |
//! | [`Error::Device`] | nobody in particular: candle failed (allocation, copy, launch) | `candle_core::Error` |
//! | [`Error::Broken`] | the engine: build a new [`Pipeline`](crate::Pipeline) | — |
//!
//! A rejected update, request or logits tensor leaves every processor exactly as it was before
//! the call: errors are reported *before* any state is touched. The exception is a failure
//! *after* the checks: a device error while a processor writes its tables, or a custom stage
//! whose `update_state` rejects what its `validate_params` accepted. A processor used alone is
//! then in an unspecified state (drop it); a [`Pipeline`](crate::Pipeline) returns that error
//! once and [`Error::Broken`] from every later call, instead of running out of step with the
//! batch.

use candle_core::{DType, DeviceLocation};

/// Everything that can go wrong when building or feeding a processor.
///
/// Match on the group to decide what to do (an engine typically rejects the request on
/// [`Error::Params`] and treats [`Error::Update`] as a bug); the inner error names the offending
/// row, token, parameter or shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine's [`BatchUpdate`](crate::BatchUpdate) breaks a rule of [`crate::ledger`].
    #[error("invalid batch update (an engine bookkeeping bug): {0}")]
    Update(#[from] UpdateError),
    /// The engine asked a [`PersistentBatch`](crate::PersistentBatch) for something it cannot
    /// do (an unknown or duplicate request id, a full batch, an add after a reorder).
    #[error("persistent batch: {0}")]
    Batch(#[from] BatchError),
    /// A request's [`RequestParams`](crate::RequestParams) cannot be served.
    #[error("request rejected: {0}")]
    Params(#[from] ParamsError),
    /// The logits handed to `apply` cannot be processed.
    #[error("unusable logits: {0}")]
    Logits(#[from] LogitsError),
    /// A processor or pipeline was configured with unusable values.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// An error from candle (allocation, device copy, kernel launch).
    #[error("device error: {0}")]
    Device(#[from] candle_core::Error),
    /// An earlier `update_state` of this [`Pipeline`](crate::Pipeline) failed after its checks
    /// had passed (a device error, or a custom stage rejecting what its `validate_params`
    /// accepted), so some stages took the update and others did not: the pipeline no longer
    /// matches the batch and refuses every call. Build a new one.
    #[error(
        "the pipeline is out of step with the batch: stage {index} ({stage}) failed an update \
         that earlier stages had applied; build a new pipeline"
    )]
    Broken {
        /// The name of the stage that failed.
        stage: &'static str,
        /// Its position in the pipeline.
        index: usize,
    },
}

/// A [`BatchUpdate`](crate::BatchUpdate) that breaks a rule of [`crate::ledger`]: a bug in the
/// engine's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// A row index is at or beyond the capacity (`max_batch_size`).
    #[error("{what} row {row} is out of range: the processor holds {capacity} rows")]
    RowOutOfRange {
        /// Which list of the update named the row (`"removed"`, `"added"`, `"moved"`).
        what: &'static str,
        /// The offending row index.
        row: usize,
        /// The capacity.
        capacity: usize,
    },
    /// `batch_size` exceeds the capacity.
    #[error("batch_size {batch_size} exceeds the capacity of {capacity} rows")]
    BatchSizeOverCapacity {
        /// The update's batch size.
        batch_size: usize,
        /// The capacity.
        capacity: usize,
    },
    /// [`Pipeline::append_sampled`](crate::Pipeline::append_sampled) got a number of tokens
    /// other than the batch size.
    #[error("{got} sampled tokens given for a batch of {batch_size} rows (one per row expected)")]
    SampledLength {
        /// The number of tokens given.
        got: usize,
        /// The current batch size.
        batch_size: usize,
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
    /// A one-way move starts from a row that holds no request at that point of the update.
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
}

/// A call to a [`PersistentBatch`](crate::PersistentBatch) that it refused: the engine's
/// mistake. The batch is unchanged.
///
/// Request ids are shown with their `Debug` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The id names no request in the batch.
    #[error("request {id} is not in the batch")]
    UnknownRequest {
        /// The id, as `Debug` prints it.
        id: String,
    },
    /// The id is already in the batch.
    #[error("request {id} is already in the batch")]
    DuplicateRequest {
        /// The id, as `Debug` prints it.
        id: String,
    },
    /// Every row is taken.
    #[error("the batch is full: all {capacity} rows hold requests")]
    Full {
        /// The capacity.
        capacity: usize,
    },
    /// A row index at or beyond the batch size.
    #[error("row {row} is out of range: the batch holds {batch_size} requests")]
    RowOutOfRange {
        /// The offending row.
        row: usize,
        /// The number of requests in the batch.
        batch_size: usize,
    },
    /// A removal or an addition after the step's rows were reordered: within a step, removals
    /// and additions come first, then swaps (vLLM's order), so that the step's update can
    /// report them.
    #[error("{op} after a swap in the same step: remove and add first, then reorder (or start the next step)")]
    AfterReorder {
        /// `"add"` or `"remove"`.
        op: &'static str,
    },
}

/// Request parameters a processor cannot serve: the client's fault. Reject the request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// A token id is not below the vocabulary size.
    #[error("{param}: token id {token} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// The parameter that holds the id.
        param: &'static str,
        /// The offending id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A token set that must not be empty is empty.
    #[error("{param}: the token set is empty (it would mask every token)")]
    EmptyTokenSet {
        /// The parameter.
        param: &'static str,
    },
    /// A numeric parameter outside its valid range.
    #[error("{param} = {value} is invalid: {expected}")]
    OutOfRange {
        /// The parameter.
        param: &'static str,
        /// The value received.
        value: f64,
        /// What is accepted, in words.
        expected: &'static str,
    },
    /// An object in [`RequestParams::objects`](crate::RequestParams::objects) is not of the
    /// type a processor reads it as.
    #[error("object {name:?} is a {found}, but a {expected} was expected")]
    ObjectType {
        /// The object's name.
        name: String,
        /// The type asked for.
        expected: &'static str,
        /// The type stored.
        found: &'static str,
    },
    /// A custom processor rejected the request's parameters.
    #[error("{processor}: {reason}")]
    Rejected {
        /// The processor's name.
        processor: &'static str,
        /// Why.
        reason: String,
    },
}

/// Logits that cannot be processed: the caller's mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogitsError {
    /// Logits of the wrong rank.
    #[error("logits must have rank 2 ([batch, vocab]), got shape {shape:?}")]
    Rank {
        /// The shape received.
        shape: Vec<usize>,
    },
    /// Logits whose shape does not match `[batch_size, vocab_size]`.
    #[error("logits have shape [{rows}, {width}], expected [{batch_size}, {vocab_size}] (batch_size, vocab_size)")]
    Shape {
        /// Rows received.
        rows: usize,
        /// Columns received.
        width: usize,
        /// The current batch size.
        batch_size: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A dtype the processors do not handle.
    #[error("logits dtype {dtype:?} is not supported: use f32, f16 or bf16")]
    Dtype {
        /// The dtype received.
        dtype: DType,
    },
    /// Logits that are not contiguous row-major (processors write in place).
    #[error(
        "logits must be contiguous (row-major) to be processed in place; call .contiguous() first"
    )]
    NotContiguous,
    /// A grammar bitmask of the wrong size.
    #[error("the token bitmask has shape {shape:?}, expected [{batch_size}, {words_per_row}] (batch_size, ceil(vocab / 32))")]
    BitmaskShape {
        /// The shape received (a host slice: its length).
        shape: Vec<usize>,
        /// The current batch size.
        batch_size: usize,
        /// `ceil(vocab / 32)`.
        words_per_row: usize,
    },
    /// A grammar bitmask tensor whose dtype is not `u32`.
    #[error(
        "the token bitmask has dtype {dtype:?}, expected u32 (an int32 mask, such as xgrammar's, \
         has the same bits: reinterpret it as u32)"
    )]
    BitmaskDtype {
        /// The dtype received.
        dtype: DType,
    },
    /// A grammar bitmask given for a row not in the batch.
    #[error("the token bitmask names row {row}, but the batch has {batch_size} rows")]
    BitmaskRow {
        /// The offending row.
        row: usize,
        /// The current batch size.
        batch_size: usize,
    },
    /// Logits that a CPU-only helper ([`for_each_row_mut`](crate::for_each_row_mut)) was given
    /// on another device.
    #[error("logits are on {got:?}, but this needs them on the CPU")]
    NotOnCpu {
        /// The logits' device.
        got: DeviceLocation,
    },
    /// Logits on another device than the processor's state.
    #[error("logits are on {got:?} but the processor's state lives on {expected:?}")]
    DeviceMismatch {
        /// The processor's device.
        expected: DeviceLocation,
        /// The logits' device.
        got: DeviceLocation,
    },
}

/// A configuration that cannot work: whoever builds the processors must fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size that must be positive is zero.
    #[error("{what} must be positive")]
    Zero {
        /// Which size.
        what: &'static str,
    },
    /// A required setting was not given to a builder.
    #[error("{what} was not set")]
    Missing {
        /// Which setting.
        what: &'static str,
    },
    /// The vocabulary does not fit in `u32` token ids.
    #[error("vocab_size {vocab_size} does not fit in a u32 token id")]
    VocabTooLarge {
        /// The vocabulary size given.
        vocab_size: usize,
    },
    /// A token id given at construction is outside the vocabulary.
    #[error("{what}: token id {token} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// Where the id came from.
        what: &'static str,
        /// The offending id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A token list given at construction is empty where that would mask everything.
    #[error("{what}: the token set is empty (it would mask every token)")]
    EmptyTokenSet {
        /// Where the list came from.
        what: &'static str,
    },
    /// A numeric setting that must be finite is not.
    #[error("{what} = {value} must be finite")]
    NotFinite {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: f32,
    },
    /// A pipeline stage was built for another capacity, vocabulary or device than the
    /// pipeline.
    #[error(
        "{stage} was built for {stage_rows} rows x vocab {stage_vocab} on {stage_device:?}, \
         but the pipeline is for {rows} rows x vocab {vocab} on {device:?}: build every stage \
         from the pipeline's ProcessorConfig"
    )]
    StageMismatch {
        /// The stage's name.
        stage: &'static str,
        /// The stage's capacity.
        stage_rows: usize,
        /// The stage's vocabulary size.
        stage_vocab: usize,
        /// The stage's device.
        stage_device: DeviceLocation,
        /// The pipeline's capacity.
        rows: usize,
        /// The pipeline's vocabulary size.
        vocab: usize,
        /// The pipeline's device.
        device: DeviceLocation,
    },
    /// A pipeline stage has already followed a batch (its batch size is not 0), so it would
    /// disagree with the pipeline about which rows hold requests.
    #[error("{stage} has already seen updates (batch size {batch_size}); give the pipeline fresh processors")]
    StageNotFresh {
        /// The stage's name.
        stage: &'static str,
        /// Its batch size.
        batch_size: usize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
