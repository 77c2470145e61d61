//! Device-resident tables of `u32` rows, mirrored on the host.
//!
//! Processors keep their per-row state in a [`RowTable`]: writes go to the host mirror and are
//! recorded as dirty; [`RowTable::sync`] brings the device copy up to date with at most one
//! host-to-device copy of a contiguous span of rows plus, for scattered single-word writes,
//! one copy of their indices and values and one scatter kernel (all on the device's stream, no
//! synchronisation). On the CPU the mirror *is* the table.
//!
//! A table can widen ([`RowTable::ensure_width`]): the host mirror is re-laid out and the device
//! copy reallocated and uploaded whole; amortised over the growth, as rare as a `Vec` doubling.

use candle_core::{Device, Result};

/// `rows × width` `u32`s in row-major order, on the host and (for CUDA) on the device.
#[derive(Debug)]
pub(crate) struct RowTable {
    rows: usize,
    width: usize,
    host: Vec<u32>,
    /// Rows `lo..hi` differ between host and device.
    dirty: Option<(usize, usize)>,
    /// Single words that differ between host and device (indices into `host`).
    scattered: Vec<u32>,
    /// The whole table must be uploaded (after a widening).
    all_dirty: bool,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device: Device,
    #[cfg(feature = "cuda")]
    cuda: Option<super::cuda::DeviceU32>,
}

/// Above this many scattered words, upload the span that covers them instead.
const MAX_SCATTERED: usize = 4096;

impl RowTable {
    /// A table of `rows × width` words all equal to `fill`, on `device`. Allocates once.
    pub(crate) fn new(rows: usize, width: usize, fill: u32, device: &Device) -> Result<Self> {
        let host = vec![fill; rows * width.max(1)];
        #[cfg(feature = "cuda")]
        let cuda = match device {
            Device::Cuda(dev) => Some(super::cuda::DeviceU32::from_host(dev, &host)?),
            _ => None,
        };
        Ok(Self {
            rows,
            width: width.max(1),
            host,
            dirty: None,
            scattered: Vec::new(),
            all_dirty: false,
            device: device.clone(),
            #[cfg(feature = "cuda")]
            cuda,
        })
    }

    /// A one-row table holding `values`, uploaded at once.
    pub(crate) fn from_values(values: &[u32], device: &Device) -> Result<Self> {
        let mut t = Self::new(1, values.len().max(1), 0, device)?;
        t.host[..values.len()].copy_from_slice(values);
        t.all_dirty = true;
        t.sync()?;
        Ok(t)
    }

    /// Words per row.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Row `row` of the host mirror.
    pub(crate) fn row(&self, row: usize) -> &[u32] {
        &self.host[row * self.width..(row + 1) * self.width]
    }

    /// The whole host mirror.
    pub(crate) fn host(&self) -> &[u32] {
        &self.host
    }

    /// Mutable row `row` of the host mirror; marks it dirty.
    pub(crate) fn row_mut(&mut self, row: usize) -> &mut [u32] {
        self.dirty = Some(match self.dirty {
            None => (row, row + 1),
            Some((lo, hi)) => (lo.min(row), hi.max(row + 1)),
        });
        &mut self.host[row * self.width..(row + 1) * self.width]
    }

    /// Sets word `col` of row `row` (a scattered write, uploaded by index at the next sync).
    pub(crate) fn set(&mut self, row: usize, col: usize, value: u32) {
        let i = row * self.width + col;
        if self.host[i] == value {
            return;
        }
        self.host[i] = value;
        if self.cuda_present() && !self.all_dirty {
            self.scattered.push(i as u32);
            if self.scattered.len() > MAX_SCATTERED {
                // Cheaper as one span: fold the scattered words into the dirty rows.
                let (mut lo, mut hi) = self.dirty.unwrap_or((usize::MAX, 0));
                for &j in &self.scattered {
                    let r = j as usize / self.width;
                    lo = lo.min(r);
                    hi = hi.max(r + 1);
                }
                self.dirty = Some((lo, hi));
                self.scattered.clear();
            }
        }
    }

    /// Makes every row at least `width` words wide, keeping each row's contents and padding
    /// with `fill`. Reallocates (host and device) only when it grows.
    pub(crate) fn ensure_width(&mut self, width: usize, fill: u32) -> Result<()> {
        if width <= self.width {
            return Ok(());
        }
        let width = width.max(self.width * 2);
        let mut host = vec![fill; self.rows * width];
        for r in 0..self.rows {
            host[r * width..r * width + self.width].copy_from_slice(self.row(r));
        }
        self.host = host;
        self.width = width;
        self.scattered.clear();
        self.dirty = None;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = &self.device {
            // Dropping the old buffer sends the writes queued for it first.
            self.cuda = None;
            self.cuda = Some(super::cuda::DeviceU32::from_host(dev, &self.host)?);
        }
        Ok(())
    }

    fn cuda_present(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.cuda.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Brings the device copy up to date: one asynchronous copy of the dirty span and, for
    /// scattered words, one copy of their indices and values plus one scatter launch.
    pub(crate) fn sync(&mut self) -> Result<()> {
        let span = self.dirty.take();
        let all = std::mem::take(&mut self.all_dirty);
        #[cfg(feature = "cuda")]
        if let Some(dev) = &mut self.cuda {
            if all {
                dev.upload(0, &self.host)?;
            } else if let Some((lo, hi)) = span {
                let range = lo * self.width..hi * self.width;
                dev.upload(range.start, &self.host[range])?;
            }
            if !all && !self.scattered.is_empty() {
                dev.scatter(&self.scattered, &self.host)?;
            }
        }
        #[cfg(not(feature = "cuda"))]
        let _ = (span, all);
        self.scattered.clear();
        Ok(())
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&super::cuda::DeviceU32> {
        self.cuda.as_ref()
    }
}
