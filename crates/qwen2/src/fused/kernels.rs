//! The fused forward pass's CUDA kernels: compiled from the `.cu` files beside this one by NVRTC
//! (once per process and compute capability), loaded once per device, launched on candle's
//! stream with raw device addresses.
//!
//! | kernel | file | one launch does |
//! | --- | --- | --- |
//! | `embed_rows` | `embed.cu` | gathers the token embeddings |
//! | `rms_norm_*` | `rms_norm.cu` | RMSNorm (optionally of gathered rows) |
//! | `bias_rope_*` | `rope.cu` | q/k/v bias + RoPE on q and k, in place |
//! | `flash_attn_*_hd{64,128}` | `flash_attn.cu` | causal GQA attention over packed rows |
//! | `silu_mul_*` | `silu_mul.cu` | `silu(gate) · up`, in place |

use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::WrapErr;
use candle_core::CudaDevice;

use crate::error::{Error, Result};

/// CUDA C source: the shared header first, then one file per kernel family.
const SOURCE: &str = concat!(
    include_str!("common.cuh"),
    include_str!("flash_attn.cu"),
    include_str!("rms_norm.cu"),
    include_str!("rope.cu"),
    include_str!("silu_mul.cu"),
    include_str!("embed.cu"),
);

/// Threads per block of each kernel (their `__launch_bounds__`).
const FLASH_THREADS: u32 = 128;
const NORM_THREADS: u32 = 256;
const ROPE_THREADS: u32 = 128;
const SILU_THREADS: u32 = 256;
const EMBED_THREADS: u32 = 256;
/// Queries (and keys) per attention tile (`FA_TILE`).
pub(crate) const ATTN_TILE: usize = 64;

/// PTX per compute capability, compiled once per process.
static PTX: Mutex<Vec<(i32, Arc<str>)>> = Mutex::new(Vec::new());

/// The oldest compute capability with every instruction the kernels use (`mma.sync` on bf16,
/// `cp.async`, `ldmatrix`).
pub(crate) const MIN_COMPUTE_CAP: i32 = 80;

/// The compute capability of `dev` as `10 · major + minor`.
pub(crate) fn compute_cap(dev: &CudaDevice) -> Result<i32> {
    let ctx = dev.cuda_stream().context().clone();
    let major = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .w()?;
    let minor = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        .w()?;
    Ok(major * 10 + minor)
}

fn ptx_for(cc: i32) -> Result<Arc<str>> {
    let mut cache = PTX.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ptx)) = cache.iter().find(|(c, _)| *c == cc) {
        return Ok(ptx.clone());
    }
    let opts = nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{cc}"),
            "--std=c++17".into(),
        ],
        name: Some("qwen2_prefill_fused.cu".into()),
        ..Default::default()
    };
    let ptx: Arc<str> = nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| {
            Error::cuda(
                "NVRTC could not compile the fused prefill kernels",
                format!("{e:?}"),
            )
        })?
        .to_src()
        .into();
    cache.push((cc, ptx.clone()));
    Ok(ptx)
}

/// The model dtype of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Half {
    F16,
    BF16,
}

/// The loaded kernels of one device for one dtype and head size.
pub(crate) struct Kernels {
    stream: Arc<CudaStream>,
    embed: CudaFunction,
    norm: CudaFunction,
    rope: CudaFunction,
    attn: CudaFunction,
    silu: CudaFunction,
    sms: u32,
}

impl Kernels {
    /// Compiles (first use in the process) and loads the kernels for `half` and `head_dim`.
    ///
    /// # Errors
    /// The device is older than [`MIN_COMPUTE_CAP`], `head_dim` is not 64 or 128, or NVRTC or
    /// the driver fails.
    pub(crate) fn load(dev: &CudaDevice, half: Half, head_dim: usize) -> Result<Self> {
        let cc = compute_cap(dev)?;
        if cc < MIN_COMPUTE_CAP {
            return Err(Error::Unsupported(format!(
                "compute capability {cc} is below {MIN_COMPUTE_CAP}"
            )));
        }
        if head_dim != 64 && head_dim != 128 {
            return Err(Error::Unsupported(format!(
                "head_dim {head_dim} has no fused attention kernel (64 or 128)"
            )));
        }
        let ptx = ptx_for(cc)?;
        let t = match half {
            Half::F16 => "f16",
            Half::BF16 => "bf16",
        };
        let load = |name: String| -> Result<CudaFunction> {
            Ok(dev
                .get_or_load_custom_func(&name, "qwen2_prefill_fused", &ptx)?
                .into_cuda_function())
        };
        let stream = dev.cuda_stream();
        let sms = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .w()? as u32;
        Ok(Self {
            embed: load("embed_rows".into())?,
            norm: load(format!("rms_norm_{t}"))?,
            rope: load(format!("bias_rope_{t}"))?,
            attn: load(format!("flash_attn_{t}_hd{head_dim}"))?,
            silu: load(format!("silu_mul_{t}"))?,
            stream,
            sms,
        })
    }

    /// `x[t] = table[ids[t]]` for `tokens` rows of `hidden` values.
    ///
    /// # Safety
    /// The addresses hold `tokens` ids (each < the table's rows), the table and `tokens × hidden`
    /// outputs; `hidden % 8 == 0`.
    pub(crate) unsafe fn embed(
        &self,
        table: u64,
        ids: u64,
        x: u64,
        tokens: usize,
        hidden: usize,
    ) -> Result<()> {
        let hidden = hidden as u32;
        let mut b = self.stream.launch_builder(&self.embed);
        b.arg(&table).arg(&ids).arg(&x).arg(&hidden);
        b.launch(grid1(tokens, EMBED_THREADS)).w()?;
        Ok(())
    }

    /// RMSNorm of `rows` rows (see `rms_norm.cu`): `h[r] = w · norm(x[r])`, or of rows
    /// `gather[r]` of `x` when `gather != 0`.
    ///
    /// # Safety
    /// The addresses hold the rows they are read or written at (`hidden` values each, `hidden %
    /// 8 == 0`, 16-byte aligned) and `gather`, if set, `rows` row indices of `x`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn rms_norm(
        &self,
        x: u64,
        weight: u64,
        h: u64,
        gather: u64,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let hidden = hidden as u32;
        let mut b = self.stream.launch_builder(&self.norm);
        b.arg(&x)
            .arg(&weight)
            .arg(&h)
            .arg(&gather)
            .arg(&hidden)
            .arg(&eps);
        b.launch(grid1(rows, NORM_THREADS)).w()?;
        Ok(())
    }

    /// Bias + RoPE in place on `tokens` rows of `qkv` (see `rope.cu`).
    ///
    /// # Safety
    /// `qkv` holds `tokens` rows of `ld ≥ heads · head_dim` values, `bias` `heads · head_dim`,
    /// `pos` `tokens` positions each below the rows of the `[positions, head_dim / 2]` tables.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn bias_rope(
        &self,
        qkv: u64,
        bias: u64,
        cos: u64,
        sin: u64,
        pos: u64,
        tokens: usize,
        ld: usize,
        heads: usize,
        rope_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let (ld, heads, rope_heads, hd) =
            (ld as u32, heads as u32, rope_heads as u32, head_dim as u32);
        let mut b = self.stream.launch_builder(&self.rope);
        b.arg(&qkv).arg(&bias).arg(&cos).arg(&sin).arg(&pos);
        b.arg(&ld).arg(&heads).arg(&rope_heads).arg(&hd);
        b.launch(grid1(tokens, ROPE_THREADS)).w()?;
        Ok(())
    }

    /// Causal attention over packed rows (see `flash_attn.cu`): `tiles` query tiles (pairs of
    /// row index and first query) for each of `heads` query heads.
    ///
    /// # Safety
    /// `tiles` holds `2 · n_tiles` words naming rows of `cu` and tile starts inside them, `cu`
    /// the row offsets into `qkv` (rows of `ld_qkv` values, query heads first, keys at `k_col`,
    /// values at `v_col`) and `out` rows of `ld_out ≥ heads · head_dim` values.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn attention(
        &self,
        qkv: u64,
        out: u64,
        tiles: u64,
        cu: u64,
        n_tiles: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        ld_qkv: usize,
        ld_out: usize,
    ) -> Result<()> {
        if n_tiles == 0 {
            return Ok(());
        }
        let (ld_qkv, ld_out) = (ld_qkv as u32, ld_out as u32);
        let group = (heads / kv_heads) as u32;
        let k_col = (heads * head_dim) as u32;
        let v_col = ((heads + kv_heads) * head_dim) as u32;
        let scale_log2 = std::f32::consts::LOG2_E / (head_dim as f32).sqrt();
        let mut b = self.stream.launch_builder(&self.attn);
        b.arg(&qkv).arg(&out).arg(&tiles).arg(&cu);
        b.arg(&ld_qkv)
            .arg(&ld_out)
            .arg(&group)
            .arg(&k_col)
            .arg(&v_col)
            .arg(&scale_log2);
        let cfg = LaunchConfig {
            grid_dim: (heads as u32, n_tiles as u32, 1),
            block_dim: (FLASH_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        b.launch(cfg).w()?;
        Ok(())
    }

    /// `gu[r, :inter] = silu(gu[r, :inter]) · gu[r, inter..]` for `rows` rows of `2 · inter`.
    ///
    /// # Safety
    /// `gu` holds `rows × 2 · inter` values; `inter % 8 == 0`.
    pub(crate) unsafe fn silu_mul(&self, gu: u64, rows: usize, inter: usize) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let (rows32, inter32) = (rows as u32, inter as u32);
        let blocks = (rows * inter / 8)
            .div_ceil(SILU_THREADS as usize)
            .min(self.sms as usize * 16);
        let mut b = self.stream.launch_builder(&self.silu);
        b.arg(&gu).arg(&rows32).arg(&inter32);
        b.launch(grid1(blocks, SILU_THREADS)).w()?;
        Ok(())
    }
}

/// A one-dimensional launch of `blocks` blocks (at least one).
fn grid1(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
