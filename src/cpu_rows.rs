//! [`for_each_row_mut`]: each row of CPU logits as a plain mutable slice, for custom
//! processors, without writing a candle `InplaceOp1`.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor};
use half::{bf16, f16};

use crate::error::{LogitsError, Result};

/// One row of logits, as a mutable slice of its dtype.
///
/// Match on the variant for typed access, or use the dtype-agnostic helpers
/// ([`get`](Self::get), [`set`](Self::set), [`map`](Self::map)), which convert through `f32`.
#[derive(Debug)]
#[non_exhaustive]
pub enum RowMut<'a> {
    /// An f32 row.
    F32(&'a mut [f32]),
    /// An f16 row.
    F16(&'a mut [f16]),
    /// A bf16 row.
    BF16(&'a mut [bf16]),
}

impl RowMut<'_> {
    /// The row's length (the vocabulary size).
    pub fn len(&self) -> usize {
        match self {
            RowMut::F32(r) => r.len(),
            RowMut::F16(r) => r.len(),
            RowMut::BF16(r) => r.len(),
        }
    }

    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The logit of `token` as an `f32`, or `None` past the end of the row.
    pub fn get(&self, token: usize) -> Option<f32> {
        match self {
            RowMut::F32(r) => r.get(token).copied(),
            RowMut::F16(r) => r.get(token).map(|x| x.to_f32()),
            RowMut::BF16(r) => r.get(token).map(|x| x.to_f32()),
        }
    }

    /// Sets the logit of `token` (rounded to the row's dtype); returns `false`, changing
    /// nothing, past the end of the row.
    pub fn set(&mut self, token: usize, value: f32) -> bool {
        match self {
            RowMut::F32(r) => r.get_mut(token).map(|x| *x = value),
            RowMut::F16(r) => r.get_mut(token).map(|x| *x = f16::from_f32(value)),
            RowMut::BF16(r) => r.get_mut(token).map(|x| *x = bf16::from_f32(value)),
        }
        .is_some()
    }

    /// Replaces every logit `x` of the row by `f(token, x)` (computed in `f32`, rounded to the
    /// row's dtype).
    pub fn map(&mut self, mut f: impl FnMut(usize, f32) -> f32) {
        match self {
            RowMut::F32(r) => r.iter_mut().enumerate().for_each(|(i, x)| *x = f(i, *x)),
            RowMut::F16(r) => r
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = f16::from_f32(f(i, x.to_f32()))),
            RowMut::BF16(r) => r
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = bf16::from_f32(f(i, x.to_f32()))),
        }
    }
}

/// Calls `f(row_index, row)` for each row of the CPU logits `[batch, vocab]`, with the row as a
/// mutable slice ([`RowMut`]): the safe way to write a custom processor's CPU `apply`. The
/// changes are made in place, in the tensor's storage (see
/// [`LogitsProcessor::apply`](crate::LogitsProcessor::apply) on aliases).
///
/// # Errors
///
/// [`LogitsError::NotOnCpu`] for logits on another device (write a CUDA kernel for those),
/// [`LogitsError::Rank`] unless the logits have rank 2, [`LogitsError::Dtype`] unless they are
/// f32, f16 or bf16, [`LogitsError::NotContiguous`] for a strided view. `f` is not called
/// then.
///
/// # Cost
///
/// One call of `f` per row, on the caller's thread; no allocation, no copy.
///
/// # Example
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use logits_processors::{for_each_row_mut, RowMut};
///
/// let logits = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?;
/// for_each_row_mut(&logits, |row, mut logits| {
///     if row == 1 {
///         logits.map(|_token, x| x * 2.0); // any dtype
///     }
///     if let RowMut::F32(slice) = logits {
///         slice[0] = -1.0; // typed access
///     }
/// })?;
/// assert_eq!(logits.to_vec2::<f32>()?, [[-1., 2., 3.], [-1., 10., 12.]]);
///
/// // The same code on bf16 logits.
/// let logits = Tensor::ones((1, 4), DType::BF16, &Device::Cpu)?;
/// for_each_row_mut(&logits, |_, mut row| {
///     row.set(3, 8.0);
/// })?;
/// assert_eq!(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?, [[1., 1., 1., 8.]]);
/// # Ok::<(), logits_processors::Error>(())
/// ```
pub fn for_each_row_mut(logits: &Tensor, f: impl FnMut(usize, RowMut<'_>)) -> Result<()> {
    let &[rows, width] = logits.dims() else {
        return Err(LogitsError::Rank {
            shape: logits.dims().to_vec(),
        }
        .into());
    };
    if !logits.device().is_cpu() {
        return Err(LogitsError::NotOnCpu {
            got: logits.device().location(),
        }
        .into());
    }
    if !matches!(logits.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(LogitsError::Dtype {
            dtype: logits.dtype(),
        }
        .into());
    }
    if !logits.is_contiguous() {
        return Err(LogitsError::NotContiguous.into());
    }
    if rows == 0 || width == 0 {
        return Ok(());
    }
    logits.inplace_op1(&RowsOp {
        f: RefCell::new(f),
        width,
    })?;
    Ok(())
}

/// The in-place op behind [`for_each_row_mut`].
struct RowsOp<F> {
    f: RefCell<F>,
    width: usize,
}

impl<F: FnMut(usize, RowMut<'_>)> candle_core::InplaceOp1 for RowsOp<F> {
    fn name(&self) -> &'static str {
        "for_each_row_mut"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::Msg(
                "for_each_row_mut: logits are not contiguous".into(),
            ));
        };
        let mut f = self.f.borrow_mut();
        let f = &mut *f;
        match storage {
            CpuStorage::F32(v) => {
                chunks(&mut v[start..end], self.width, |i, r| f(i, RowMut::F32(r)))
            }
            CpuStorage::F16(v) => {
                chunks(&mut v[start..end], self.width, |i, r| f(i, RowMut::F16(r)))
            }
            CpuStorage::BF16(v) => {
                chunks(&mut v[start..end], self.width, |i, r| f(i, RowMut::BF16(r)))
            }
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "for_each_row_mut: unsupported dtype {:?}",
                    other.dtype()
                )))
            }
        }
        Ok(())
    }
}

fn chunks<T>(data: &mut [T], width: usize, mut f: impl FnMut(usize, &mut [T])) {
    for (i, row) in data.chunks_exact_mut(width).enumerate() {
        f(i, row);
    }
}
