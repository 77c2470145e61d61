//! The masking kernel on CUDA: one fused, in-place launch on candle's stream.
//!
//! The kernel source (`mask.cu`) is compiled with NVRTC the first time a device needs it (once
//! per compute capability per process), loaded through candle's module cache, and its function
//! handles are kept per device, so a step costs one kernel launch: no host synchronisation, no
//! allocation (host or device) and no host-to-device copy.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use candle_core::cuda::{CudaDevice, CudaStorage, CudaStorageSlice, DeviceId, WrapErr};
use candle_core::Layout;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use super::IdsMode;
use super::MaskOp;

const SOURCE: &str = include_str!("mask.cu");

/// Threads per block (the kernel's `__launch_bounds__`).
const THREADS: u32 = 256;
/// The kernel's `LP_MAX_CHUNK`: the most tokens one block owns in a row.
const MAX_CHUNK: u32 = 16384;
/// The fewest tokens one block owns in a row (a multiple of 32: chunks start on bitmask words).
const MIN_CHUNK: u32 = 1024;
/// Blocks wanted per multiprocessor.
const BLOCKS_PER_SM: u32 = 4;

const MODE_NONE: i32 = 0;
const MODE_BOOST: i32 = 1;
const MODE_MASK: i32 = 2;

/// A `u32` buffer on a CUDA device: the device side of a [`RowTable`](super::table::RowTable).
pub(crate) struct DeviceU32 {
    slice: CudaSlice<u32>,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for DeviceU32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceU32")
            .field("len", &self.slice.len())
            .finish()
    }
}

impl DeviceU32 {
    /// A device copy of `host` (at least one element), on `dev`'s stream. Allocates.
    pub(crate) fn from_host(dev: &CudaDevice, host: &[u32]) -> candle_core::Result<Self> {
        let stream = dev.cuda_stream();
        let slice = if host.is_empty() {
            stream.alloc_zeros::<u32>(1).w()?
        } else {
            stream.clone_htod(host).w()?
        };
        Ok(Self { slice, stream })
    }

    /// Copies `host` into elements `offset..offset + host.len()`: one asynchronous copy on the
    /// stream (the driver stages pageable memory, so `host` may change once this returns), no
    /// allocation, no synchronisation.
    pub(crate) fn upload(&mut self, offset: usize, host: &[u32]) -> candle_core::Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        let end = offset + host.len();
        if end > self.slice.len() {
            candle_core::bail!(
                "upload of {}..{end} past a device table of {}",
                offset,
                self.slice.len()
            );
        }
        let mut dst = self.slice.slice_mut(offset..end);
        self.stream.memcpy_htod(host, &mut dst).w()
    }

    /// The device address, and a guard that records the read once the kernel is queued.
    fn ptr<'a>(&'a self, stream: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        self.slice.device_ptr(stream)
    }
}

/// The loaded kernels of one device.
struct Kernels {
    /// `lp_mask_{f32,f16,bf16}`.
    mask: [CudaFunction; 3],
    /// `lp_boost_{f32,f16,bf16}`.
    boost: [CudaFunction; 3],
    sms: u32,
}

/// Kernels per device, loaded once.
static KERNELS: Mutex<Vec<(DeviceId, Arc<Kernels>)>> = Mutex::new(Vec::new());
/// PTX per compute capability, compiled once.
static PTX: Mutex<Vec<(i32, Arc<str>)>> = Mutex::new(Vec::new());

fn attribute(stream: &CudaStream, attr: CUdevice_attribute) -> candle_core::Result<i32> {
    stream.context().attribute(attr).w()
}

fn ptx_for(cc: i32) -> candle_core::Result<Arc<str>> {
    let mut cache = PTX.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ptx)) = cache.iter().find(|(c, _)| *c == cc) {
        return Ok(ptx.clone());
    }
    let opts = cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        ftz: Some(false),
        options: vec![format!("--gpu-architecture=compute_{cc}")],
        name: Some("logits_processors_mask.cu".into()),
        ..Default::default()
    };
    let ptx: Arc<str> = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .w()?
        .to_src()
        .into();
    cache.push((cc, ptx.clone()));
    Ok(ptx)
}

fn kernels(dev: &CudaDevice) -> candle_core::Result<Arc<Kernels>> {
    let id = dev.id();
    {
        let cache = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = cache.iter().find(|(d, _)| *d == id) {
            return Ok(k.clone());
        }
    }
    let stream = dev.cuda_stream();
    let major = attribute(
        &stream,
        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
    )?;
    let minor = attribute(
        &stream,
        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
    )?;
    let sms = attribute(
        &stream,
        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
    )?;
    let cc = major * 10 + minor;
    let ptx = ptx_for(cc)?;
    let module = format!("logits_processors_mask_sm{cc}");
    let load = |name: &str| -> candle_core::Result<CudaFunction> {
        Ok(dev
            .get_or_load_custom_func(name, &module, &ptx)?
            .into_cuda_function())
    };
    let k = Arc::new(Kernels {
        mask: [
            load("lp_mask_f32")?,
            load("lp_mask_f16")?,
            load("lp_mask_bf16")?,
        ],
        boost: [
            load("lp_boost_f32")?,
            load("lp_boost_f16")?,
            load("lp_boost_bf16")?,
        ],
        sms: sms.max(1) as u32,
    });
    let mut cache = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, k)) = cache.iter().find(|(d, _)| *d == id) {
        return Ok(k.clone());
    }
    cache.push((id, k.clone()));
    Ok(k)
}

/// Tokens per block: enough blocks to fill the device (even for one row), at most
/// `MAX_CHUNK` tokens and 32 KiB of logits per block.
fn chunk_for(batch: usize, vocab: usize, elem_size: usize, sms: u32) -> u32 {
    let total = batch as u64 * vocab as u64;
    let want = total.div_ceil(u64::from(sms * BLOCKS_PER_SM)).max(1);
    let max = (32 * 1024 / elem_size as u32).min(MAX_CHUNK);
    let rounded = want.div_ceil(u64::from(MIN_CHUNK)) * u64::from(MIN_CHUNK);
    rounded.clamp(u64::from(MIN_CHUNK), u64::from(max)) as u32
}

fn launch(
    func: &CudaFunction,
    stream: &CudaStream,
    grid: (u32, u32, u32),
    params: &mut [*mut c_void],
) -> candle_core::Result<()> {
    stream.context().bind_to_thread().w()?;
    // SAFETY: `params` matches the kernel's signature (checked by the callers against
    // mask.cu), every pointer in it is live for the launch, and the kernel stays inside the
    // `[batch, vocab]` logits and the tables it is given.
    unsafe {
        cudarc::driver::result::launch_kernel(
            func.cu_function(),
            grid,
            (THREADS, 1, 1),
            0,
            stream.cu_stream(),
            params,
        )
    }
    .w()
}

/// The device side of a processor's table.
fn device_table(t: &super::table::RowTable) -> candle_core::Result<&DeviceU32> {
    t.cuda().ok_or_else(|| {
        candle_core::Error::Msg("processor state is not on the CUDA device of the logits".into())
    })
}

/// Applies `op` to the contiguous `[batch, vocab]` logits in `storage` in place: one kernel
/// launch on candle's stream.
pub(crate) fn mask(
    op: &MaskOp<'_>,
    storage: &mut CudaStorage,
    layout: &Layout,
) -> candle_core::Result<()> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("logits must be contiguous");
    };
    let (batch, vocab) = (op.batch, op.vocab);
    if batch == 0 || (op.force.is_none() && op.allowed.is_none()) {
        return Ok(());
    }
    if end - start != batch * vocab {
        candle_core::bail!(
            "logits hold {} elements, expected {batch} x {vocab}",
            end - start
        );
    }
    let (Ok(batch32), Ok(vocab32)) = (u32::try_from(batch), u32::try_from(vocab)) else {
        candle_core::bail!("batch {batch} or vocab {vocab} does not fit in a u32");
    };
    let force = op.force.map(|f| device_table(f.table)).transpose()?;
    let force_width = op.force.map_or(0, |f| f.table.row(0).len()) as u32;
    let (allowed_ids, allowed_bits) = match op.allowed {
        Some(a) => (Some(device_table(a.ids)?), Some(device_table(a.bits)?)),
        None => (None, None),
    };
    let (mode, mut boost) = match op.allowed.map(|a| a.mode) {
        None => (MODE_NONE, 0f32),
        Some(IdsMode::Boost(b)) => (MODE_BOOST, b),
        Some(IdsMode::Mask) => (MODE_MASK, 0f32),
    };
    let n_ids = op.allowed.map_or(0, |a| a.n_ids);
    if force.is_none() && mode == MODE_BOOST && n_ids == 0 {
        return Ok(());
    }

    let dev = storage.device.clone();
    let k = kernels(&dev)?;
    let stream = dev.cuda_stream();

    // The logits' device address (at the layout's start); the guard records the kernel's write
    // once it is queued.
    let (which, elem_size, (base, _logits_guard)) = match &mut storage.slice {
        CudaStorageSlice::F32(s) => (0usize, 4usize, s.device_ptr_mut(&stream)),
        CudaStorageSlice::F16(s) => (1, 2, s.device_ptr_mut(&stream)),
        CudaStorageSlice::BF16(s) => (2, 2, s.device_ptr_mut(&stream)),
        _ => candle_core::bail!("unsupported logits dtype (f32, f16 or bf16 only)"),
    };
    let mut logits = base + (start * elem_size) as u64;
    let (mut batch_arg, mut vocab_arg) = (batch32, vocab32);

    if force.is_none() && mode == MODE_BOOST {
        // AllowedIds boost alone: one thread per (row, id); only those logits are touched.
        let ids = allowed_ids.expect("boost mode has ids");
        let (mut ids_ptr, _ids_guard) = ids.ptr(&stream);
        let mut n_ids_arg = n_ids as u32;
        let total = batch as u64 * n_ids as u64;
        let blocks = total
            .div_ceil(u64::from(THREADS))
            .min(u64::from(k.sms) * 16)
            .max(1) as u32;
        let mut params: [*mut c_void; 6] = [
            (&mut logits) as *mut u64 as *mut c_void,
            (&mut batch_arg) as *mut u32 as *mut c_void,
            (&mut vocab_arg) as *mut u32 as *mut c_void,
            (&mut ids_ptr) as *mut u64 as *mut c_void,
            (&mut n_ids_arg) as *mut u32 as *mut c_void,
            (&mut boost) as *mut f32 as *mut c_void,
        ];
        return launch(&k.boost[which], &stream, (blocks, 1, 1), &mut params);
    }

    let chunk = chunk_for(batch, vocab, elem_size, k.sms);
    let grid = (vocab32.div_ceil(chunk), batch32.min(65_535), 1);
    let mut chunk_arg = chunk;
    let (mut force_ptr, _force_guard) = match force {
        Some(t) => {
            let (p, g) = t.ptr(&stream);
            (p, Some(g))
        }
        None => (0u64, None),
    };
    let mut force_width_arg = force_width;
    let (mut bits_ptr, _bits_guard) = match allowed_bits {
        Some(t) => {
            let (p, g) = t.ptr(&stream);
            (p, Some(g))
        }
        None => (0u64, None),
    };
    let mut mode_arg = mode;
    let mut params: [*mut c_void; 9] = [
        (&mut logits) as *mut u64 as *mut c_void,
        (&mut batch_arg) as *mut u32 as *mut c_void,
        (&mut vocab_arg) as *mut u32 as *mut c_void,
        (&mut chunk_arg) as *mut u32 as *mut c_void,
        (&mut force_ptr) as *mut u64 as *mut c_void,
        (&mut force_width_arg) as *mut u32 as *mut c_void,
        (&mut bits_ptr) as *mut u64 as *mut c_void,
        (&mut mode_arg) as *mut i32 as *mut c_void,
        (&mut boost) as *mut f32 as *mut c_void,
    ];
    launch(&k.mask[which], &stream, grid, &mut params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fill_the_device_and_stay_in_bounds() {
        // batch 1 of 151,936 f32 on 132 SMs: about 150 blocks of 1024 tokens.
        assert_eq!(chunk_for(1, 151_936, 4, 132), 1024);
        // big batches: 32 KiB of logits per block.
        assert_eq!(chunk_for(256, 151_936, 4, 132), 8192);
        assert_eq!(chunk_for(256, 151_936, 2, 132), 16384);
        assert_eq!(chunk_for(3, 37, 2, 132), 1024);
        for b in [1, 8, 64, 256, 1000] {
            for es in [2, 4] {
                let c = chunk_for(b, 151_936, es, 132);
                assert!(c % 32 == 0 && (MIN_CHUNK..=MAX_CHUNK).contains(&c));
            }
        }
    }
}
