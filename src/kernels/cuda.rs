//! [`FusedOp`] on CUDA: at most two launches on candle's stream (sparse, dense), no host
//! synchronisation, no allocation once the scratch buffers have grown.
//!
//! With min-p, the dense launch is `lp_dense_once`: persistent blocks take (row, chunk)
//! tickets, hold their chunk in shared memory, and wait for the row's maximum from the other
//! chunks of the row, so kept logits are read once. It finishes only if the device can hold
//! more blocks at once than a row has chunks; where it cannot (a small device, a huge
//! vocabulary), the row maximum is a launch of its own (`lp_dense` pass 0, then pass 1).
//! Options (`ONCE_*`, overridden by `LOGITS_PROCESSORS_ONCE` for tests and benches): rows with
//! a mask publish their chunk's maximum without waiting (each block cuts at its own maximum,
//! which is never above the row's, and the row's last block cuts the few listed survivors);
//! a row's grammar mask is copied into shared memory beside its logits; after an
//! `lp_sparse` launch, `lp_dense_once` starts as its programmatic dependent (sm_90+), its
//! prologue overlapping `lp_sparse`'s end; and penalties are folded into it (`ONCE_FOLD`): the
//! rows it stages whole are penalised in their chunks in shared memory, `lp_sparse` only sorting
//! their penalty entries by chunk, instead of `lp_sparse` reading and writing each penalised
//! logit at random.
//!
//! On devices with thread-block clusters (compute capability 9.0 and later), a launch with
//! min-p *and* a temperature uses `lp_dense_cluster` instead: one cluster of 8 or 16 blocks
//! per row, the row held in the blocks' shared memory, the row maximum exchanged through
//! distributed shared memory (no tickets, no waiting on global memory). Other launches with
//! min-p keep `lp_dense_once`, which measured faster for them on the H100 (docs/benchmarks.md,
//! run 9). `LOGITS_PROCESSORS_CLUSTER` overrides the choice (`0`: never, `8`/`16`: every launch
//! with min-p, clusters of that size), so that tests can run both paths on one device.
//!
//! The kernel source (the files of `cu/`, concatenated in order into one unit) is compiled
//! with NVRTC the first time a device needs it (once per compute capability per process),
//! loaded through candle's module cache, and its function handles are kept per device.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use candle_core::cuda::{CudaDevice, CudaStorage, CudaStorageSlice, DeviceId, WrapErr};
use candle_core::{Layout, Result};
use cudarc::driver::sys::{self, CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use super::table::RowTable;
use super::{FusedOp, IdsMode, StepMask};

const SOURCE: &str = concat!(
    include_str!("cu/common.cu"),
    include_str!("cu/counts.cu"),
    include_str!("cu/sparse.cu"),
    include_str!("cu/dense.cu"),
    include_str!("cu/dense_once.cu"),
    include_str!("cu/dense_cluster.cu"),
    include_str!("cu/entries.cu"),
);

/// Threads per block (the kernels' `__launch_bounds__`).
const THREADS: u32 = 256;
/// Threads per block of `lp_dense_once` (the kernel's `LP_THREADS`).
const ONCE_THREADS: u32 = 256;
/// The kernel's `LP_MAX_CHUNK`: the most tokens one block owns in a row.
const MAX_CHUNK: u32 = 16384;
/// The fewest tokens one block owns in a row (a multiple of 32: chunks start on mask words).
const MIN_CHUNK: u32 = 1024;
/// The most bytes of logits one block of `lp_dense_once` holds in shared memory (the kernel's
/// `LP_THREADS * LP_VECS * 16`).
const ONCE_BYTES: u32 = 32 * 1024;
/// `lp_dense_once` runs only where a row has at most this fraction of the blocks the device
/// holds at once (1/4: several such launches on other streams of the same GPU still finish).
const ONCE_MARGIN: u32 = 4;
// A block of `lp_dense_once` reads a keep list with one thread per id.
const _: () = assert!(super::KEEP_LIST_MAX <= ONCE_THREADS as usize);
/// Blocks wanted per multiprocessor.
const BLOCKS_PER_SM: u32 = 4;
/// `lp_dense_cluster` prefers the smallest cluster (8 or 16 blocks) whose blocks hold at most
/// this many bytes of shared memory (several blocks per multiprocessor).
const CLUSTER_BYTES: u32 = 48 * 1024;
/// The environment variable that overrides where `lp_dense_cluster` runs: `0` never (the
/// device-wide form, as on devices without clusters), `8` or `16` for every launch with min-p
/// with clusters of that size. Unset: launches with min-p and a temperature (where it measured
/// faster on the H100, see docs/benchmarks.md run 9), clusters of 8 or 16.
const CLUSTER_ENV: &str = "LOGITS_PROCESSORS_CLUSTER";

/// The environment variable that overrides `lp_dense_once`'s options (a sum of the `ONCE_*`
/// bits below; unset: `ONCE_DEFAULT`), so that benches and tests can compare and run each path
/// on one device.
const ONCE_ENV: &str = "LOGITS_PROCESSORS_ONCE";
/// The kernel's `LP_ONCE_SPEC_CP`: a row with a step mask has its chunk loaded before its keep
/// mask is built, and a step mask that is the row's only mask is copied into the keep mask by
/// `cp.async` beside the chunk's loads (not read and combined before them). (Bit 1 is unused:
/// it was the same without the copy, measured slower in f16 and bf16.)
const ONCE_SPEC_CP: u32 = 2;
/// Host only: after an `lp_sparse` launch, `lp_dense_once` is launched as its programmatic
/// dependent (compute capability 9.0 and later): its blocks start while `lp_sparse` finishes
/// and wait for it before reading the logits.
const ONCE_PDL: u32 = 4;
/// The kernel's `LP_ONCE_NOWAIT`: rows with min-p never wait for their maximum; each block cuts
/// its chunk at its own maximum and lists the survivors, which the row's last block cuts at the
/// row's threshold.
const ONCE_NOWAIT: u32 = 8;
/// The kernel's `LP_ONCE_NOWAIT_MASKED`: `ONCE_NOWAIT` for the rows with a mask only.
const ONCE_NOWAIT_MASKED: u32 = 16;
/// Host and kernels: folded penalties. In a launch whose dense phase is `lp_dense_once`, the
/// rows it stages whole (min-p, no keep list) are penalised there, on their chunks in shared
/// memory: `lp_sparse` sorts each such row's penalty entries by chunk into a fold list instead
/// of reading and writing every penalised logit at random (see `lp_fold_row` in cu/sparse.cu).
const ONCE_FOLD: u32 = 32;
/// The kernel's `LP_FOLD_MAX_CHUNKS`: the most chunks a row may have for folded penalties.
const FOLD_MAX_CHUNKS: u32 = 256;
/// The kernel's `LP_SURV_ROW`: survivors listed per row per launch.
const SURV_ROW: usize = 2048;
/// The options used unless `ONCE_ENV` says otherwise: each measured faster on the H100 at batch
/// 256 (docs/benchmarks.md, runs 14 and 17), `ONCE_NOWAIT` for masked rows only (rows without a
/// mask measured slower with it in f16 and bf16).
const ONCE_DEFAULT: u32 = ONCE_SPEC_CP | ONCE_PDL | ONCE_NOWAIT_MASKED | ONCE_FOLD;

macro_rules! arg {
    ($x:expr) => {
        (&mut $x) as *mut _ as *mut c_void
    };
}

/// A `u32` buffer on a CUDA device: the device side of a [`RowTable`].
pub(crate) struct DeviceU32 {
    slice: CudaSlice<u32>,
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    /// The flush count when this buffer last queued writes: while it is current, the queue
    /// holds them, and newer writes to the same words must not share one scatter launch.
    queued_at: Option<u64>,
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
    pub(crate) fn from_host(dev: &CudaDevice, host: &[u32]) -> Result<Self> {
        let stream = dev.cuda_stream();
        let slice = if host.is_empty() {
            stream.alloc_zeros::<u32>(1).w()?
        } else {
            stream.clone_htod(host).w()?
        };
        Ok(Self {
            slice,
            dev: dev.clone(),
            stream,
            queued_at: None,
        })
    }

    /// A zeroed buffer of `n` elements (at least one) on `dev`'s stream. Allocates.
    pub(crate) fn zeros(dev: &CudaDevice, n: usize) -> Result<Self> {
        let stream = dev.cuda_stream();
        Ok(Self {
            slice: stream.alloc_zeros::<u32>(n.max(1)).w()?,
            dev: dev.clone(),
            stream,
            queued_at: None,
        })
    }

    /// Reads elements `offset..offset + len` back to the host: synchronises the stream (for
    /// tests and inspection only).
    pub(crate) fn read(&self, offset: usize, len: usize) -> Result<Vec<u32>> {
        flush(&self.dev)?;
        let view = self.slice.slice(offset..offset + len);
        self.stream.clone_dtoh(&view).w()
    }

    /// Copies `host` into elements `offset..offset + host.len()`: one asynchronous copy on the
    /// stream (the driver stages pageable memory, so `host` may change once this returns), no
    /// allocation, no synchronisation.
    pub(crate) fn upload(&mut self, offset: usize, host: &[u32]) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        flush(&self.dev)?; // queued single-word writes are older than this upload
        let end = offset + host.len();
        if end > self.slice.len() {
            candle_core::bail!(
                "upload of {offset}..{end} past a device table of {}",
                self.slice.len()
            );
        }
        let mut dst = self.slice.slice_mut(offset..end);
        self.stream.memcpy_htod(host, &mut dst).w()
    }

    /// Queues `host[i]` for element `i`, for every `i` in `indices`: the writes of every table
    /// of the device go out together, as one copy and one launch, at the next [`flush`] (before
    /// any kernel of the fused op, any span upload and any reallocation).
    pub(crate) fn scatter(&mut self, indices: &[u32], host: &[u32]) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        let (base, _g) = self.slice.device_ptr(&self.stream);
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.dev.id();
        let q = match pending.iter().position(|p| p.dev.id() == id) {
            Some(i) => &mut pending[i],
            None => {
                pending.push(Pending {
                    dev: self.dev.clone(),
                    triples: Vec::new(),
                    staging: None,
                    flushes: 0,
                });
                pending.last_mut().expect("pushed")
            }
        };
        // The writes of one scatter launch land in any order: if this buffer's older writes are
        // still queued, send them first.
        if self.queued_at == Some(q.flushes) {
            send(q)?;
        }
        self.queued_at = Some(q.flushes);
        for &i in indices {
            let addr = base + 4 * u64::from(i);
            q.triples
                .extend([addr as u32, (addr >> 32) as u32, host[i as usize]]);
        }
        Ok(())
    }

    /// The device address, and a guard that records the read once the kernel is queued.
    fn ptr<'a>(&'a self, stream: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        self.slice.device_ptr(stream)
    }
}

impl Drop for DeviceU32 {
    fn drop(&mut self) {
        // Queued writes may target this buffer: send them before it is freed.
        let _ = flush(&self.dev);
    }
}

/// Deferred single-word writes of one device's tables.
struct Pending {
    dev: CudaDevice,
    /// `[address low, address high, value]` triples.
    triples: Vec<u32>,
    staging: Option<CudaSlice<u32>>,
    /// How many times the queue was sent.
    flushes: u64,
}

static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());

/// Sends the queued table writes of `dev`: one copy and one scatter launch on its stream, no
/// synchronisation; nothing when none is queued.
pub(crate) fn flush(dev: &CudaDevice) -> Result<()> {
    flush_with(dev, &[]).map(|_| ())
}

/// [`flush`], with `extra` words sent in the same host-to-device copy, after the queued
/// writes: returns their device address (0 when `extra` is empty), valid for the kernels queued
/// before the next flush of `dev` (the stream orders the next copy after them).
pub(crate) fn flush_with(dev: &CudaDevice, extra: &[u32]) -> Result<u64> {
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let id = dev.id();
    let q = match pending.iter().position(|p| p.dev.id() == id) {
        Some(i) => &mut pending[i],
        None if extra.is_empty() => return Ok(0),
        None => {
            pending.push(Pending {
                dev: dev.clone(),
                triples: Vec::new(),
                staging: None,
                flushes: 0,
            });
            pending.last_mut().expect("pushed")
        }
    };
    send_with(q, extra)
}

/// Sends one device's queue (the caller holds the `PENDING` lock).
fn send(q: &mut Pending) -> Result<()> {
    send_with(q, &[]).map(|_| ())
}

/// Sends one device's queue and `extra` in one copy; returns the device address of `extra`
/// (0 when empty).
fn send_with(q: &mut Pending, extra: &[u32]) -> Result<u64> {
    if q.triples.is_empty() && extra.is_empty() {
        return Ok(0);
    }
    let dev = q.dev.clone();
    let stream = dev.cuda_stream();
    let n_words = q.triples.len();
    q.triples.extend_from_slice(extra);
    let need = q.triples.len();
    if q.staging.as_ref().is_none_or(|s| s.len() < need) {
        q.staging = Some(stream.alloc_zeros::<u32>(need.next_power_of_two()).w()?);
    }
    let staging = q.staging.as_mut().expect("allocated above");
    {
        let mut dst = staging.slice_mut(0..need);
        let copied = stream.memcpy_htod(&q.triples, &mut dst).w();
        q.triples.truncate(n_words);
        copied?;
    }
    let n = (n_words / 3) as u32;
    q.triples.clear();
    q.flushes += 1;
    let (mut ptr, _g) = staging.device_ptr(&stream);
    let extra_ptr = if extra.is_empty() {
        0
    } else {
        ptr + 4 * n_words as u64
    };
    if n > 0 {
        let k = kernels(&dev)?;
        let mut n_arg = n;
        let mut params: [*mut c_void; 2] = [
            (&mut ptr) as *mut u64 as *mut c_void,
            (&mut n_arg) as *mut u32 as *mut c_void,
        ];
        let blocks = n.div_ceil(THREADS).clamp(1, 1024);
        launch(&k.scatter, &stream, (blocks, 1, 1), &mut params)?;
    }
    Ok(extra_ptr)
}

/// Processes a penalty count log (see `counts.rs`) for every slot of the tables in `tab`: the
/// log travels with the queued table writes, then one launch; no synchronisation.
pub(crate) fn count_drain(tab: &DeviceU32, log: &[u32], slots: usize, w: usize) -> Result<()> {
    if slots == 0 {
        return Ok(());
    }
    let mut log_ptr = flush_with(&tab.dev, log)?;
    let k = kernels(&tab.dev)?;
    let stream = &tab.stream;
    let (mut ptr, _g) = tab.slice.device_ptr(stream);
    let (mut width, mut w_arg, mut slots_arg) =
        (super::counts::row_width(w) as u32, w as u32, slots as u32);
    let mut params: [*mut c_void; 5] = [
        arg!(ptr),
        arg!(width),
        arg!(w_arg),
        arg!(log_ptr),
        arg!(slots_arg),
    ];
    launch(&k.counts, stream, (slots as u32, 1, 1), &mut params)
}

/// Rehashes every slot of the penalty count tables `old` (`old_w` positions) into the zeroed
/// `new` (`w` positions): one launch, no synchronisation.
pub(crate) fn count_rehash(
    old: &DeviceU32,
    old_w: usize,
    new: &DeviceU32,
    w: usize,
    slots: usize,
) -> Result<()> {
    if slots == 0 {
        return Ok(());
    }
    let k = kernels(&old.dev)?;
    let stream = &old.stream;
    let (mut o, _g1) = old.slice.device_ptr(stream);
    let (mut t, _g2) = new.slice.device_ptr(stream);
    let (mut old_width, mut old_w_arg, mut width, mut w_arg) = (
        super::counts::row_width(old_w) as u32,
        old_w as u32,
        super::counts::row_width(w) as u32,
        w as u32,
    );
    let mut params: [*mut c_void; 6] = [
        arg!(o),
        arg!(old_width),
        arg!(old_w_arg),
        arg!(t),
        arg!(width),
        arg!(w_arg),
    ];
    launch(&k.rehash, stream, (slots as u32, 1, 1), &mut params)
}

/// The loaded kernels of one device.
struct Kernels {
    /// `lp_sparse_{f32,f16,bf16}`.
    sparse: [CudaFunction; 3],
    /// `lp_dense_{f32,f16,bf16}`.
    dense: [CudaFunction; 3],
    /// `lp_dense_once_{f32,f16,bf16}`.
    once: [CudaFunction; 3],
    /// `lp_dense_once_fold_{f32,f16,bf16}` (the same with folded penalties, `ONCE_FOLD`).
    once_fold: [CudaFunction; 3],
    /// Blocks of `lp_dense_once_*` (and of `_fold_*`) the device holds at once (occupancy
    /// times SMs, the smaller of the two).
    once_resident: [u32; 3],
    /// `ONCE_*` options (`ONCE_ENV`, else `ONCE_DEFAULT`).
    once_flags: u32,
    /// Programmatic dependent launches (compute capability 9.0 and later).
    pdl: bool,
    /// `lp_dense_cluster_{f32,f16,bf16}`, on devices with thread-block clusters (sm_90+).
    cluster: Option<[CudaFunction; 3]>,
    /// The most dynamic shared memory a block of `lp_dense_cluster_*` may have.
    cluster_smem: [u32; 3],
    /// Cluster sizes to try, in order of preference (empty: never clusters).
    cluster_sizes: Vec<u32>,
    /// Clusters also for launches without a temperature (set by `CLUSTER_ENV`).
    cluster_always: bool,
    /// The cluster launch chosen per (dtype, vocab), `None` where none fits.
    cluster_plans: Mutex<Vec<(usize, u32, Option<ClusterPlan>)>>,
    scatter: CudaFunction,
    /// `lp_counts`, `lp_count_rehash` (penalty counts).
    counts: CudaFunction,
    rehash: CudaFunction,
    sms: u32,
}

/// One row per cluster of `size` blocks, `slice` tokens and `smem` bytes of dynamic shared
/// memory per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClusterPlan {
    size: u32,
    slice: u32,
    smem: u32,
}

/// The slice and dynamic shared memory of a block of `lp_dense_cluster` when `size` blocks
/// share a row of `vocab` (the kernel's layout: the logits, then `slice / 32 + 2` keep words).
fn cluster_slice(vocab: u32, size: u32, elem_size: usize) -> (u32, u32) {
    let slice = vocab.div_ceil(size).div_ceil(32).max(1) * 32;
    let smem = slice * elem_size as u32 + (slice / 32 + 2) * 4;
    (slice, smem)
}

impl Kernels {
    /// The cluster launch for rows of `vocab` logits of dtype `which` (cached per vocab).
    fn cluster_plan(
        &self,
        which: usize,
        vocab: u32,
        elem_size: usize,
        stream: &CudaStream,
    ) -> Option<ClusterPlan> {
        let funcs = self.cluster.as_ref()?;
        let mut plans = self.cluster_plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, p)) = plans.iter().find(|(w, v, _)| *w == which && *v == vocab) {
            return *p;
        }
        let fits = |size: u32| -> Option<ClusterPlan> {
            let (slice, smem) = cluster_slice(vocab, size, elem_size);
            if smem > self.cluster_smem[which] {
                return None;
            }
            let n = max_active_clusters(&funcs[which], stream, size, smem).ok()?;
            (n >= 1).then_some(ClusterPlan { size, slice, smem })
        };
        let small = self
            .cluster_sizes
            .iter()
            .copied()
            .find(|&size| cluster_slice(vocab, size, elem_size).1 <= CLUSTER_BYTES);
        let plan = small
            .and_then(fits)
            .or_else(|| self.cluster_sizes.iter().rev().find_map(|&size| fits(size)));
        if plans.len() >= 64 {
            plans.clear();
        }
        plans.push((which, vocab, plan));
        plan
    }
}

/// How many clusters of `size` blocks of `lp_dense_cluster` with `smem` bytes of dynamic shared
/// memory the device holds at once (0 or an error: such a launch cannot run).
fn max_active_clusters(f: &CudaFunction, stream: &CudaStream, size: u32, smem: u32) -> Result<u32> {
    let mut attr = [cluster_attribute(size)];
    let cfg = launch_config((size, 1, 1), smem, stream, &mut attr);
    let mut n: std::ffi::c_int = 0;
    stream.context().bind_to_thread().w()?;
    // SAFETY: `cfg` and the attribute it points to are live for the call; `n` is written.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg).result() }.w()?;
    Ok(n.max(0) as u32)
}

fn cluster_attribute(size: u32) -> sys::CUlaunchAttribute {
    // SAFETY: plain C data; all-zero is a valid value of every field of the union.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
        x: size,
        y: 1,
        z: 1,
    };
    sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value,
    }
}

/// The launch attribute that lets a kernel start before the previous kernel of its stream has
/// completed (it waits for it with `griddepcontrol.wait`).
fn pdl_attribute() -> sys::CUlaunchAttribute {
    // SAFETY: plain C data; all-zero is a valid value of every field of the union.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.programmaticStreamSerializationAllowed = 1;
    sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    }
}

fn launch_config(
    grid: (u32, u32, u32),
    smem: u32,
    stream: &CudaStream,
    attrs: &mut [sys::CUlaunchAttribute],
) -> sys::CUlaunchConfig {
    sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: ONCE_THREADS,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    }
}

/// Kernels per device, loaded once.
static KERNELS: Mutex<Vec<(DeviceId, Arc<Kernels>)>> = Mutex::new(Vec::new());
/// PTX per compute capability, compiled once.
static PTX: Mutex<Vec<(i32, Arc<str>)>> = Mutex::new(Vec::new());
/// Per device, the row-maximum scratch of min-p's two-launch form (grow-only).
static PARTIAL: Mutex<Vec<(DeviceId, CudaSlice<f32>)>> = Mutex::new(Vec::new());
/// Per device, the tickets and row slots of `lp_dense_once` (grow-only; all zero between
/// launches: the kernel zeroes what it used).
static SYNC: Mutex<Vec<(DeviceId, CudaSlice<u32>)>> = Mutex::new(Vec::new());
/// Per device, the survivor lists of `lp_dense_once` with `ONCE_NOWAIT` (grow-only; each
/// launch writes what it reads).
static SURV: Mutex<Vec<(DeviceId, CudaSlice<u32>)>> = Mutex::new(Vec::new());
/// Per device, the fold lists of `ONCE_FOLD` (grow-only; each `lp_sparse` launch writes what
/// its `lp_dense_once` reads).
static FOLD: Mutex<Vec<(DeviceId, CudaSlice<u32>)>> = Mutex::new(Vec::new());

/// The position in `cache` of device `id`'s scratch buffer with at least `need` elements,
/// allocated zeroed (rounded up to a power of two, replacing the device's smaller one) when
/// there is none: grow-only, so steady-state steps allocate nothing.
fn scratch<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    cache: &mut Vec<(DeviceId, CudaSlice<T>)>,
    id: DeviceId,
    stream: &Arc<CudaStream>,
    need: usize,
) -> Result<usize> {
    if let Some(p) = cache.iter().position(|(d, s)| *d == id && s.len() >= need) {
        return Ok(p);
    }
    cache.retain(|(d, _)| *d != id);
    cache.push((id, stream.alloc_zeros::<T>(need.next_power_of_two()).w()?));
    Ok(cache.len() - 1)
}

fn attribute(stream: &CudaStream, attr: CUdevice_attribute) -> Result<i32> {
    stream.context().attribute(attr).w()
}

fn ptx_for(cc: i32) -> Result<Arc<str>> {
    let mut cache = PTX.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ptx)) = cache.iter().find(|(c, _)| *c == cc) {
        return Ok(ptx.clone());
    }
    let options = vec![format!("--gpu-architecture=compute_{cc}")];
    let opts = cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        ftz: Some(false),
        options,
        name: Some("logits_processors_fused.cu".into()),
        ..Default::default()
    };
    let ptx: Arc<str> = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .w()?
        .to_src()
        .into();
    cache.push((cc, ptx.clone()));
    Ok(ptx)
}

fn kernels(dev: &CudaDevice) -> Result<Arc<Kernels>> {
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
    let module = format!("logits_processors_fused_sm{cc}");
    let load = |name: &str| -> Result<CudaFunction> {
        Ok(dev
            .get_or_load_custom_func(name, &module, &ptx)?
            .into_cuda_function())
    };
    let once = [
        load("lp_dense_once_f32")?,
        load("lp_dense_once_f16")?,
        load("lp_dense_once_bf16")?,
    ];
    let once_fold = [
        load("lp_dense_once_fold_f32")?,
        load("lp_dense_once_fold_f16")?,
        load("lp_dense_once_fold_bf16")?,
    ];
    let sms = sms.max(1) as u32;
    let mut once_resident = [u32::MAX; 3];
    for (i, f) in once.iter().chain(&once_fold).enumerate() {
        // Its chunk lives in shared memory: ask for the largest shared part of L1 (its loads
        // bypass L1).
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
            100,
        )
        .w()?;
        let r = f
            .occupancy_max_active_blocks_per_multiprocessor(ONCE_THREADS, 0, None)
            .w()?
            * sms;
        once_resident[i % 3] = once_resident[i % 3].min(r);
    }
    let mut cluster_smem = [0u32; 3];
    let cluster_sizes: Vec<u32> = match std::env::var(CLUSTER_ENV).ok().as_deref() {
        Some("0") => Vec::new(),
        Some("8") => vec![8],
        Some("16") => vec![16],
        _ => vec![8, 16],
    };
    let cluster_always = matches!(
        std::env::var(CLUSTER_ENV).ok().as_deref(),
        Some("8") | Some("16")
    );
    let cluster = if major >= 9 && !cluster_sizes.is_empty() {
        let f = [
            load("lp_dense_cluster_f32")?,
            load("lp_dense_cluster_f16")?,
            load("lp_dense_cluster_bf16")?,
        ];
        let optin = attribute(
            &stream,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?;
        for (m, f) in cluster_smem.iter_mut().zip(&f) {
            let fixed = f
                .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .w()?;
            let dynamic = (optin - fixed).max(0);
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic,
            )
            .w()?;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
            .w()?;
            // Clusters of 16 are not portable: allowed where the device can (else the
            // occupancy query refuses them and 8 is used).
            let _ = f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            );
            *m = dynamic as u32;
        }
        Some(f)
    } else {
        None
    };
    let k = Arc::new(Kernels {
        sparse: [
            load("lp_sparse_f32")?,
            load("lp_sparse_f16")?,
            load("lp_sparse_bf16")?,
        ],
        dense: [
            load("lp_dense_f32")?,
            load("lp_dense_f16")?,
            load("lp_dense_bf16")?,
        ],
        once,
        once_fold,
        once_resident,
        once_flags: std::env::var(ONCE_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(ONCE_DEFAULT),
        pdl: major >= 9,
        cluster,
        cluster_smem,
        cluster_sizes,
        cluster_always,
        cluster_plans: Mutex::new(Vec::new()),
        scatter: load("lp_scatter")?,
        counts: load("lp_counts")?,
        rehash: load("lp_count_rehash")?,
        sms,
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

/// The chunk of `lp_dense_once` for a row of `vocab` when the device holds `resident` of its
/// blocks at once: `chunk` (at most `ONCE_BYTES` of logits), widened so that a row has at most
/// `resident / ONCE_MARGIN` chunks; `None` when that takes more than `ONCE_BYTES` per block.
fn once_chunk(chunk: u32, vocab: u32, elem_size: usize, resident: u32) -> Option<u32> {
    let most_chunks = resident / ONCE_MARGIN;
    if most_chunks == 0 {
        return None;
    }
    let max = ONCE_BYTES / elem_size as u32;
    let need = vocab.div_ceil(most_chunks).div_ceil(MIN_CHUNK) * MIN_CHUNK;
    let c = chunk.min(max).max(need);
    (c <= max).then_some(c)
}

fn launch(
    func: &CudaFunction,
    stream: &CudaStream,
    grid: (u32, u32, u32),
    params: &mut [*mut c_void],
) -> Result<()> {
    launch_with(func, stream, grid, THREADS, params)
}

fn launch_with(
    func: &CudaFunction,
    stream: &CudaStream,
    grid: (u32, u32, u32),
    threads: u32,
    params: &mut [*mut c_void],
) -> Result<()> {
    stream.context().bind_to_thread().w()?;
    // SAFETY: `params` matches the kernel's signature (checked by the callers against
    // cu/entries.cu), every pointer in it is live for the launch, and the kernel stays inside the
    // `[batch, vocab]` logits and the tables it is given.
    unsafe {
        cudarc::driver::result::launch_kernel(
            func.cu_function(),
            grid,
            (threads, 1, 1),
            0,
            stream.cu_stream(),
            params,
        )
    }
    .w()
}

/// The device side of a table.
fn device_table(t: &RowTable) -> Result<&DeviceU32> {
    t.cuda().ok_or_else(|| {
        candle_core::Error::Msg("processor state is not on the CUDA device of the logits".into())
    })
}

/// Pointer guards of one launch (no allocation).
struct Guards<'a>([Option<SyncOnDrop<'a>>; 12], usize);

impl<'a> Guards<'a> {
    fn new() -> Self {
        Self(std::array::from_fn(|_| None), 0)
    }

    /// The device address of an optional table (0 when absent) and its width.
    fn table(&mut self, t: Option<&'a RowTable>, stream: &'a CudaStream) -> Result<(u64, u32)> {
        let Some(t) = t else { return Ok((0, 0)) };
        let (p, g) = device_table(t)?.ptr(stream);
        self.0[self.1] = Some(g);
        self.1 += 1;
        Ok((p, t.width() as u32))
    }
}

/// Applies `op` to the contiguous `[batch, vocab]` logits in `storage` in place.
pub(crate) fn run(
    op: &FusedOp<'_>,
    storage: &mut CudaStorage,
    layout: &Layout,
    mask: Option<(&CudaStorage, &Layout)>,
) -> Result<()> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("logits must be contiguous");
    };
    let (batch, vocab) = (op.batch, op.vocab);
    if batch == 0 {
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
    let dev = storage.device.clone();
    // The processors' queued table writes go first, with the penalty count log in the same copy.
    let pen_log = op.penalties.and_then(|p| p.counts.payload()).unwrap_or(&[]);
    let mut pen_log_ptr = flush_with(&dev, pen_log)?;
    let k = kernels(&dev)?;
    let stream = dev.cuda_stream();

    let (which, elem_size, (base, _logits_guard)) = match &mut storage.slice {
        CudaStorageSlice::F32(s) => (0usize, 4usize, s.device_ptr_mut(&stream)),
        CudaStorageSlice::F16(s) => (1, 2, s.device_ptr_mut(&stream)),
        CudaStorageSlice::BF16(s) => (2, 2, s.device_ptr_mut(&stream)),
        _ => candle_core::bail!("unsupported logits dtype (f32, f16 or bf16 only)"),
    };
    let mut logits = base + (start * elem_size) as u64;
    let mut guards = Guards::new();

    // The dense launch is chosen first: with folded penalties, the sparse launch prepares it.
    let gmask = op.ids.filter(|a| a.mode == IdsMode::Mask).map(|a| a.bits);
    let dense = op.keep.is_some()
        || gmask.is_some()
        || op.step_mask.is_some()
        || op.temperature.is_some()
        || op.min_p.is_some();
    let chunk = chunk_for(batch, vocab, elem_size, k.sms);
    let cluster = op
        .min_p
        .filter(|_| dense && (k.cluster_always || op.temperature.is_some()))
        .and_then(|_| k.cluster_plan(which, vocab32, elem_size, &stream));
    let once = op
        .min_p
        .filter(|_| cluster.is_none())
        .and_then(|_| once_chunk(chunk, vocab32, elem_size, k.once_resident[which]))
        .filter(|&c| batch32.checked_mul(vocab32.div_ceil(c)).is_some());
    let (mut keep, mut keep_w) = guards.table(op.keep, &stream)?;
    let (mut minps, _) = guards.table(op.min_p, &stream)?;
    let (mut pen_params, _) = guards.table(op.penalties.map(|p| p.params), &stream)?;
    // Folded penalties (`ONCE_FOLD`): each row's list is its chunks' first entries (and the
    // end), padded to an even length, then two words per entry of its penalty table's list.
    let (mut fold, mut fold_stride) = (0u64, 0u32);
    let mut once_chunk_arg = 0u32;
    let mut once_nchunks = 0u32;
    if let (Some(c), Some(p)) = (once, op.penalties) {
        once_chunk_arg = c;
        once_nchunks = vocab32.div_ceil(c);
        if k.once_flags & ONCE_FOLD != 0 && once_nchunks <= FOLD_MAX_CHUNKS {
            fold_stride = ((once_nchunks + 2) & !1) + 2 * (p.counts.w() as u32 / 2);
            let mut cache = FOLD.lock().unwrap_or_else(|e| e.into_inner());
            let pos = scratch(&mut cache, dev.id(), &stream, batch * fold_stride as usize)?;
            // The stream orders the two launches; the buffer outlives them (static, grow-only).
            fold = cache[pos].1.device_ptr_mut(&stream).0;
        }
    }

    // Sparse phase.
    let mut sparse_launched = false;
    let boost = match op.ids {
        Some(a) if a.n_ids > 0 => match a.mode {
            IdsMode::Boost(b) => Some((a, b)),
            IdsMode::Mask => None,
        },
        _ => None,
    };
    if op.bans.iter().any(Option::is_some)
        || boost.is_some()
        || op.bias.is_some()
        || op.penalties.is_some()
    {
        let (mut b0, mut b0w) = guards.table(op.bans[0], &stream)?;
        let (mut b1, mut b1w) = guards.table(op.bans[1], &stream)?;
        let (mut ids, _) = guards.table(boost.map(|(a, _)| a.ids), &stream)?;
        let mut n_ids = boost.map_or(0, |(a, _)| a.n_ids as u32);
        let mut boost_v = boost.map_or(0f32, |(_, b)| b);
        let (mut bias, mut bias_w) = guards.table(op.bias, &stream)?;
        let (mut pen, mut pen_w, mut pen_hw, mut pen_slots) = match op.penalties {
            Some(p) => {
                let t = p.counts.cuda().ok_or_else(|| {
                    candle_core::Error::Msg(
                        "penalty counts are not on the CUDA device of the logits".into(),
                    )
                })?;
                let (ptr, g) = t.ptr(&stream);
                guards.0[guards.1] = Some(g);
                guards.1 += 1;
                (
                    ptr,
                    p.counts.width() as u32,
                    p.counts.w() as u32,
                    p.counts.slots() as u32,
                )
            }
            None => (0, 0, 0, 0),
        };
        let mut vocab_arg = vocab32;
        let mut params: [*mut c_void; 24] = [
            arg!(logits),
            arg!(vocab_arg),
            arg!(b0),
            arg!(b0w),
            arg!(b1),
            arg!(b1w),
            arg!(ids),
            arg!(n_ids),
            arg!(boost_v),
            arg!(bias),
            arg!(bias_w),
            arg!(pen),
            arg!(pen_w),
            arg!(pen_hw),
            arg!(pen_params),
            arg!(pen_log_ptr),
            arg!(pen_slots),
            arg!(fold),
            arg!(fold_stride),
            arg!(once_chunk_arg),
            arg!(once_nchunks),
            arg!(minps),
            arg!(keep),
            arg!(keep_w),
        ];
        launch(&k.sparse[which], &stream, (batch32, 1, 1), &mut params)?;
        if let Some(p) = op.penalties {
            p.counts.mark_sent();
        }
        sparse_launched = true;
    }

    // Dense phase.
    if !dense {
        return Ok(());
    }
    let nchunks = vocab32.div_ceil(chunk);
    let grid = (nchunks, batch32.min(65_535), 1);
    let (mut gbits, _) = guards.table(gmask, &stream)?;
    let (mut temps, _) = guards.table(op.temperature, &stream)?;
    let (mut sactive, _) = guards.table(op.step_mask.map(|m| m.active()), &stream)?;
    let mut smask = 0u64;
    let mut _smask_guard = None;
    let words = vocab.div_ceil(32);
    match op.step_mask {
        Some(StepMask::Table { words: w, .. }) => {
            let (p, g) = device_table(w)?.ptr(&stream);
            smask = p;
            _smask_guard = Some(g);
        }
        Some(StepMask::Tensor { .. }) => {
            let Some((m, ml)) = mask else {
                candle_core::bail!("the step's bitmask tensor was not passed to the kernel");
            };
            let Some((ms, me)) = ml.contiguous_offsets() else {
                candle_core::bail!("the bitmask must be contiguous");
            };
            if me - ms != batch * words {
                candle_core::bail!(
                    "the bitmask holds {} words, expected {batch} x {words}",
                    me - ms
                );
            }
            let (p, g) = m.as_cuda_slice::<u32>()?.device_ptr(&stream);
            smask = p + (ms * 4) as u64;
            _smask_guard = Some(g);
        }
        None => {}
    }
    let (mut batch_arg, mut vocab_arg) = (batch32, vocab32);
    if let Some(plan) = cluster {
        let funcs = k.cluster.as_ref().expect("a plan implies the kernels");
        let mut slice_arg = plan.slice;
        let mut params: [*mut c_void; 11] = [
            arg!(logits),
            arg!(batch_arg),
            arg!(vocab_arg),
            arg!(slice_arg),
            arg!(keep),
            arg!(keep_w),
            arg!(gbits),
            arg!(smask),
            arg!(sactive),
            arg!(temps),
            arg!(minps),
        ];
        let mut attr = [cluster_attribute(plan.size)];
        let cfg = launch_config(
            (plan.size, batch32.min(65_535), 1),
            plan.smem,
            &stream,
            &mut attr,
        );
        stream.context().bind_to_thread().w()?;
        // SAFETY: `params` matches `lp_dense_cluster_*` in cu/entries.cu, every pointer in it and
        // `cfg`'s attribute are live for the call, the plan's shared memory is within the
        // function's limit and the kernel stays inside the logits and the tables it is given.
        return unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                funcs[which].cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result()
        }
        .w();
    }
    if let Some(chunk) = once {
        let nchunks = vocab32.div_ceil(chunk);
        let tickets = batch32 * nchunks;
        let mut cache = SYNC.lock().unwrap_or_else(|e| e.into_inner());
        let pos = scratch(&mut cache, dev.id(), &stream, 2 + 4 * batch)?;
        let (mut sync, _sync_guard) = cache[pos].1.device_ptr_mut(&stream);
        let mut surv_cache = SURV.lock().unwrap_or_else(|e| e.into_inner());
        let mut surv = 0u64;
        let mut _surv_guard = None;
        if k.once_flags & (ONCE_NOWAIT | ONCE_NOWAIT_MASKED) != 0 {
            let pos = scratch(&mut surv_cache, dev.id(), &stream, SURV_ROW * batch)?;
            let (p, g) = surv_cache[pos].1.device_ptr_mut(&stream);
            surv = p;
            _surv_guard = Some(g);
        }
        let (mut chunk_arg, mut nchunks_arg) = (chunk, nchunks);
        let mut flags = k.once_flags & (ONCE_SPEC_CP | ONCE_NOWAIT | ONCE_NOWAIT_MASKED);
        let mut params: [*mut c_void; 18] = [
            arg!(logits),
            arg!(batch_arg),
            arg!(vocab_arg),
            arg!(chunk_arg),
            arg!(keep),
            arg!(keep_w),
            arg!(gbits),
            arg!(smask),
            arg!(sactive),
            arg!(temps),
            arg!(minps),
            arg!(sync),
            arg!(nchunks_arg),
            arg!(flags),
            arg!(surv),
            arg!(fold),
            arg!(fold_stride),
            arg!(pen_params),
        ];
        let blocks = tickets.min(k.once_resident[which]).max(1);
        let func = if fold != 0 {
            &k.once_fold[which]
        } else {
            &k.once[which]
        };
        if sparse_launched && k.pdl && k.once_flags & ONCE_PDL != 0 {
            let mut attr = [pdl_attribute()];
            let cfg = launch_config((blocks, 1, 1), 0, &stream, &mut attr);
            stream.context().bind_to_thread().w()?;
            // SAFETY: `params` matches `lp_dense_once_*` and `lp_dense_once_fold_*` in
            // cu/entries.cu, every pointer in it and `cfg`'s attribute are live for the call, and
            // the kernel stays inside the logits and the tables it is given; it reads the logits
            // (and the fold lists) only after `griddepcontrol.wait`, that is, after `lp_sparse`
            // has completed.
            return unsafe {
                sys::cuLaunchKernelEx(
                    &cfg,
                    func.cu_function(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
                .result()
            }
            .w();
        }
        return launch_with(func, &stream, (blocks, 1, 1), ONCE_THREADS, &mut params);
    }
    let mut partial = 0u64;
    let mut partial_cache = None;
    if op.min_p.is_some() {
        let mut cache = PARTIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pos = scratch(&mut cache, dev.id(), &stream, batch * nchunks as usize)?;
        partial_cache = Some(cache);
        let (p, g) = partial_cache.as_mut().expect("locked")[pos]
            .1
            .device_ptr_mut(&stream);
        partial = p;
        drop(g); // the stream orders the two passes; the buffer outlives them (static)
    }
    let (mut chunk_arg, mut nchunks_arg) = (chunk, nchunks);
    for pass in if op.min_p.is_some() { 0i32..2 } else { 1..2 } {
        let mut pass_arg = pass;
        let mut params: [*mut c_void; 14] = [
            arg!(logits),
            arg!(batch_arg),
            arg!(vocab_arg),
            arg!(chunk_arg),
            arg!(keep),
            arg!(keep_w),
            arg!(gbits),
            arg!(smask),
            arg!(sactive),
            arg!(temps),
            arg!(minps),
            arg!(partial),
            arg!(nchunks_arg),
            arg!(pass_arg),
        ];
        launch(&k.dense[which], &stream, grid, &mut params)?;
    }
    drop(partial_cache);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_source_compiles_with_nvrtc() {
        let ptx = ptx_for(90).unwrap();
        for name in [
            "lp_sparse_bf16",
            "lp_dense_f16",
            "lp_dense_once_f32",
            "lp_dense_cluster_bf16",
            "lp_scatter",
            "lp_counts",
            "lp_count_rehash",
        ] {
            assert!(ptx.contains(name), "{name} missing from the PTX");
        }
    }

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
                assert!(c.is_multiple_of(32) && (MIN_CHUNK..=MAX_CHUNK).contains(&c));
            }
        }
    }

    #[test]
    fn cluster_slices_cover_the_row_on_mask_words() {
        // f32 over 16 blocks and f16 over 8: about 37 KiB of shared memory per block.
        assert_eq!(cluster_slice(151_936, 16, 4), (9_504, 9_504 * 4 + 299 * 4));
        assert_eq!(cluster_slice(151_936, 8, 2), (19_008, 19_008 * 2 + 596 * 4));
        for vocab in [1, 37, 1009, 32_000, 151_936, 262_144] {
            for size in [8, 16] {
                for es in [2, 4] {
                    let (slice, smem) = cluster_slice(vocab, size, es);
                    assert!(slice.is_multiple_of(32) && slice * size >= vocab);
                    assert!(slice - 32 < vocab.div_ceil(size).max(1));
                    assert!(smem >= slice * es as u32 + (slice / 32 + 2) * 4);
                }
            }
        }
    }

    #[test]
    fn one_read_chunks_leave_room_for_every_row_and_fit_in_shared_memory() {
        // H100, 3 blocks per SM: batch 256 keeps its chunks (19 of f32, 10 of f16 per row).
        assert_eq!(once_chunk(8192, 151_936, 4, 396), Some(8192));
        assert_eq!(once_chunk(16384, 151_936, 2, 396), Some(16384));
        // batch 1 (1024-token chunks): widened to at most 99 chunks per row.
        let c = once_chunk(1024, 151_936, 4, 396).unwrap();
        assert!(151_936u32.div_ceil(c) <= 99 && c.is_multiple_of(MIN_CHUNK));
        // a small device or a huge vocabulary: the two-launch form.
        assert_eq!(once_chunk(8192, 151_936, 4, 40), None);
        assert_eq!(once_chunk(8192, 4_000_000, 4, 396), None);
        assert_eq!(once_chunk(1024, 151_936, 4, 0), None);
        for resident in [8, 64, 132, 396, 1056] {
            for vocab in [37, 1009, 32_000, 151_936, 262_144] {
                for es in [2, 4] {
                    if let Some(c) = once_chunk(1024, vocab, es, resident) {
                        assert!(vocab.div_ceil(c) * ONCE_MARGIN <= resident);
                        assert!(c * es as u32 <= ONCE_BYTES);
                    }
                }
            }
        }
    }
}
