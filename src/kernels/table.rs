//! Device-resident tables of `u32` rows, mirrored on the host.
//!
//! Processors keep their per-row state in a [`RowTable`]: writes go to the host mirror and
//! mark their rows dirty; [`RowTable::sync`] uploads only the dirty span (one host-to-device
//! copy on the device's stream, no synchronisation). On the CPU the mirror *is* the table.

use candle_core::Device;

use candle_core::Result;

/// `rows × width` `u32`s in row-major order, on the host and (for CUDA) on the device.
#[derive(Debug)]
pub(crate) struct RowTable {
    width: usize,
    host: Vec<u32>,
    /// Rows `lo..hi` differ between host and device.
    dirty: Option<(usize, usize)>,
    #[cfg(feature = "cuda")]
    cuda: Option<super::cuda::DeviceU32>,
}

impl RowTable {
    /// A zeroed table on `device`. Allocates once.
    pub(crate) fn new(rows: usize, width: usize, device: &Device) -> Result<Self> {
        let host = vec![0u32; rows * width];
        #[cfg(feature = "cuda")]
        let cuda = match device {
            Device::Cuda(dev) => Some(super::cuda::DeviceU32::from_host(dev, &host)?),
            _ => None,
        };
        #[cfg(not(feature = "cuda"))]
        let _ = device;
        Ok(Self {
            width,
            host,
            dirty: None,
            #[cfg(feature = "cuda")]
            cuda,
        })
    }

    /// A one-row table holding `values` (no dirty state: uploaded at once).
    pub(crate) fn from_values(values: &[u32], device: &Device) -> Result<Self> {
        let mut t = Self::new(1, values.len().max(1), device)?;
        t.host[..values.len()].copy_from_slice(values);
        t.dirty = Some((0, 1));
        t.sync()?;
        Ok(t)
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

    /// Uploads the dirty rows to the device (one asynchronous copy), if the table lives on one.
    pub(crate) fn sync(&mut self) -> Result<()> {
        let Some((lo, hi)) = self.dirty.take() else {
            return Ok(());
        };
        #[cfg(feature = "cuda")]
        if let Some(dev) = &mut self.cuda {
            let span = lo * self.width..hi * self.width;
            dev.upload(span.start, &self.host[span])?;
        }
        #[cfg(not(feature = "cuda"))]
        let _ = (lo, hi);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&super::cuda::DeviceU32> {
        self.cuda.as_ref()
    }
}
