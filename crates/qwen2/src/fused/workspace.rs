//! The fused forward pass's device buffers and the per-batch metadata they receive.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr};
use candle_core::CudaDevice;

use super::{Shape, MLP_CHUNK};

use crate::error::{ensure, Error, Result};

/// One batch's metadata, as the kernels read it: all `u32`, uploaded in one copy.
///
/// Layout of `words`: token ids (`tokens`), positions (`tokens`), row offsets `cu`
/// (`rows + 1`), each row's last token (`rows`), attention tiles (`2 · tiles`: row, first query),
/// longest first so that the longest tiles start first.
pub(crate) struct BatchMeta {
    pub(crate) words: Vec<u32>,
    pub(crate) tokens: usize,
    pub(crate) rows: usize,
    pub(crate) tiles: usize,
}

impl BatchMeta {
    /// The metadata of `rows` packed back to back, with query tiles of `tile` tokens.
    pub(crate) fn new(rows: &[&[u32]], tile: usize) -> Self {
        let tokens: usize = rows.iter().map(|r| r.len()).sum();
        let mut tiles: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .flat_map(|(i, r)| (0..r.len()).step_by(tile).map(move |q0| (q0, i)))
            .collect();
        // Longest first (a tile's work grows with q0); ties in row order, so the plan is stable.
        tiles.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut words = Vec::with_capacity(2 * tokens + 2 * rows.len() + 1 + 2 * tiles.len());
        for r in rows {
            words.extend_from_slice(r);
        }
        for r in rows {
            words.extend(0..r.len() as u32);
        }
        let mut end = 0u32;
        words.push(0);
        for r in rows {
            end += r.len() as u32;
            words.push(end);
        }
        let mut end = 0u32;
        for r in rows {
            end += r.len() as u32;
            words.push(end - 1);
        }
        for &(q0, i) in &tiles {
            words.push(i as u32);
            words.push(q0 as u32);
        }
        Self {
            words,
            tokens,
            rows: rows.len(),
            tiles: tiles.len(),
        }
    }
}

/// Device addresses of the buffers (16-bit values unless said otherwise).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ptrs {
    /// The residual stream `[tokens, hidden]`.
    pub(crate) x: u64,
    /// Normalised input of a block, then attention's output `[tokens, max(hidden, heads·hd)]`.
    pub(crate) h: u64,
    /// The q/k/v projection `[tokens, qkv]`, later one MLP chunk's gate/up `[chunk, 2·inter]`.
    pub(crate) big: u64,
    /// Final-normed last tokens `[rows, hidden]`.
    pub(crate) last_h: u64,
    /// `u32` metadata (see [`BatchMeta`]).
    pub(crate) ids: u64,
    pub(crate) pos: u64,
    pub(crate) cu: u64,
    pub(crate) last: u64,
    pub(crate) tiles: u64,
}

/// Buffers for batches of up to `tokens` tokens and `rows` rows; grown, never shrunk.
#[derive(Default)]
pub(crate) struct Workspace {
    tokens: usize,
    rows: usize,
    halves: Option<CudaSlice<u16>>,
    words: Option<CudaSlice<u32>>,
    /// Offsets (in 16-bit values) of x, h, big, last_h.
    offsets: [usize; 4],
    /// Offsets (in words) of the metadata sections of the current batch.
    meta: [usize; 4],
    stream: Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>>,
}

impl Workspace {
    /// Makes room for `tokens` tokens and `rows` rows (rounded up, so that slightly larger
    /// batches later do not reallocate).
    pub(crate) fn reserve(
        &mut self,
        dev: &CudaDevice,
        s: &Shape,
        tokens: usize,
        rows: usize,
    ) -> Result<()> {
        if tokens <= self.tokens && rows <= self.rows && self.halves.is_some() {
            return Ok(());
        }
        let tokens = tokens.max(self.tokens).next_multiple_of(256);
        let rows = rows.max(self.rows).next_multiple_of(16);
        // Free the old buffers first: the peak stays one set.
        self.halves = None;
        self.words = None;
        let align = |n: usize| n.next_multiple_of(64); // 128-byte aligned sections
        let x = align(tokens * s.hidden);
        let h = align(tokens * s.hidden.max(s.heads * s.head_dim));
        let big = align((tokens * s.qkv_width()).max(tokens.min(MLP_CHUNK) * 2 * s.intermediate));
        let last_h = align(rows * s.hidden);
        self.offsets = [0, x, x + h, x + h + big];
        let stream = dev.cuda_stream();
        let halves = stream
            .alloc_zeros::<u16>(x + h + big + last_h)
            .map_err(|e| {
                Error::cuda(
                    format!("allocating the forward buffers for {tokens} tokens"),
                    e,
                )
            })?;
        let max_tiles = tokens / 64 + rows + 1;
        let words = stream
            .alloc_zeros::<u32>(2 * tokens + 2 * rows + 1 + 2 * max_tiles)
            .map_err(|e| Error::cuda("allocating the batch metadata buffer", e))?;
        self.halves = Some(halves);
        self.words = Some(words);
        self.tokens = tokens;
        self.rows = rows;
        self.stream = Some(stream);
        Ok(())
    }

    /// Copies a batch's metadata to the device (one asynchronous copy; no synchronisation).
    /// The workspace must have been reserved for the batch.
    pub(crate) fn upload(&mut self, m: &BatchMeta) -> Result<()> {
        let (t, b) = (m.tokens, m.rows);
        self.meta = [t, 2 * t, 2 * t + b + 1, 2 * t + 2 * b + 1];
        let stream = self.stream.as_ref().ok_or_else(not_reserved)?;
        let words = self.words.as_mut().ok_or_else(not_reserved)?;
        ensure!(
            m.words.len() <= words.len(),
            Error::cuda(
                "uploading the batch metadata",
                "batch metadata larger than its buffer"
            )
        );
        let mut dst = words.slice_mut(0..m.words.len());
        stream
            .memcpy_htod(&m.words[..], &mut dst)
            .map_err(|e| Error::cuda("uploading the batch metadata", e))
    }

    /// The buffers' device addresses.
    ///
    /// # Errors
    /// The workspace was never reserved.
    pub(crate) fn ptrs(&self) -> Result<Ptrs> {
        let (Some(stream), Some(halves), Some(words)) = (&self.stream, &self.halves, &self.words)
        else {
            return Err(not_reserved());
        };
        let hb = halves.device_ptr(stream).0;
        let wb = words.device_ptr(stream).0;
        let h = |i: usize| hb + 2 * self.offsets[i] as u64;
        let w = |o: usize| wb + 4 * o as u64;
        Ok(Ptrs {
            x: h(0),
            h: h(1),
            big: h(2),
            last_h: h(3),
            ids: w(0),
            pos: w(self.meta[0]),
            cu: w(self.meta[1]),
            last: w(self.meta[2]),
            tiles: w(self.meta[3]),
        })
    }
}

/// The error of a workspace used before [`Workspace::reserve`].
fn not_reserved() -> Error {
    Error::cuda("fused path", "workspace not reserved")
}
