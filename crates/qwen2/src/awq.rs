//! AWQ "GEMM" 4-bit weights: the `quantization_config` of a checkpoint, nibble unpacking and
//! packing, and dequantization to a dense `[out, in]` weight.
//!
//! # Layout (AutoAWQ `WQLinear_GEMM`)
//!
//! For a linear layer with `in` inputs and `out` outputs and a quantization group of `g` input
//! rows, a checkpoint stores
//!
//! * `qweight`: i32 `[in, out / 8]`, eight 4-bit weights per 32-bit word,
//! * `qzeros`: i32 `[in / g, out / 8]`, eight 4-bit zero points per word, packed like `qweight`,
//! * `scales`: f16 `[in / g, out]`,
//!
//! and the dense weight, in `[in, out]` (the layout AutoAWQ multiplies as `x @ W`), is
//! `W[i][o] = (q[i][o] - z[i / g][o]) * s[i / g][o]`. Candle's linear layout is the transpose,
//! `[out, in]`, which [`dequantize_tensor`] returns.
//!
//! # Nibble order
//!
//! The eight values of one word are not stored in column order. Facts taken from AutoAWQ's source
//! (`awq/utils/packing_utils.py` and `awq/modules/linear/gemm.py`, repository
//! casper-hansen/AutoAWQ), with vLLM's AWQ Triton kernel using the same constants:
//!
//! * packing (`WQLinear_GEMM.from_linear`) writes, for each word of output columns
//!   `8c .. 8c + 8`, the column `8c + AWQ_ORDER[i]` into bits `4i .. 4i + 4`, with
//!   `AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`; `qzeros` uses the same order;
//! * unpacking (`unpack_awq`) shifts each word right by `0, 4, …, 28` (nibble `i` is
//!   `(word >> 4i) & 0xF`), then `reverse_awq_order` permutes each group of eight unpacked values
//!   with `AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]`, i.e. column `8c + j` is nibble
//!   `AWQ_REVERSE_ORDER[j]`;
//! * `dequantize_gemm` masks to 4 bits, repeats scales and zeros `group_size` times along the input
//!   dimension and computes `(iweight - izeros) * scales`; `group_size == -1` means one group
//!   spanning all inputs.
//!
//! The two permutations are inverses of each other, which [`pack`] and [`unpack`] rely on and the
//! tests check.

use candle_core::{DType, Device, Tensor};

use crate::error::{ensure, Error, Result};

/// Number of 4-bit values in one packed 32-bit word.
pub const PACK_FACTOR: usize = 8;

/// Packing order: nibble `i` of a word holds column `AWQ_ORDER[i]` of its group of eight.
pub const AWQ_ORDER: [usize; PACK_FACTOR] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Unpacking order: column `j` of a group of eight is stored in nibble `AWQ_REVERSE_ORDER[j]`.
pub const AWQ_REVERSE_ORDER: [usize; PACK_FACTOR] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The supported subset of a checkpoint's `quantization_config`: AWQ, 4 bits, GEMM layout, with
/// zero points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwqConfig {
    /// Input rows per quantization group; `None` when the config says `-1` (one group spanning
    /// all inputs of a layer).
    pub group_size: Option<usize>,
}

impl AwqConfig {
    /// A config with the given group size (`Some`) or per-channel groups (`None`).
    pub fn new(group_size: Option<usize>) -> Self {
        Self { group_size }
    }

    /// Parses the `quantization_config` object of a `config.json`.
    ///
    /// Accepts `quant_method: "awq"`, `bits: 4` (AutoAWQ also writes `w_bit`), `zero_point: true`
    /// (missing means true), `version: "gemm"` (case-insensitive; missing means GEMM) and an
    /// integer `group_size` (AutoAWQ also writes `q_group_size`) that is positive or `-1`.
    /// Anything else (GPTQ, GEMV, Marlin, 8 bits, …) is a clear error.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let unsupported = |reason: String| Error::UnsupportedModel { path: None, reason };
        let obj = value
            .as_object()
            .ok_or_else(|| unsupported("quantization_config is not a JSON object".into()))?;
        let method = obj
            .get("quant_method")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                unsupported("quantization_config has no string field `quant_method`".into())
            })?;
        ensure!(
            method.eq_ignore_ascii_case("awq"),
            unsupported(format!(
                "quantization method {method:?} is not supported (only AWQ GEMM 4-bit)"
            ))
        );
        let bits = obj
            .get("bits")
            .or_else(|| obj.get("w_bit"))
            .and_then(|v| v.as_i64())
            .ok_or_else(|| {
                unsupported("AWQ quantization_config has no integer field `bits`".into())
            })?;
        ensure!(
            bits == 4,
            unsupported(format!("AWQ with {bits} bits is not supported (only 4)"))
        );
        let version = obj
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("gemm");
        ensure!(
            version.eq_ignore_ascii_case("gemm"),
            unsupported(format!(
                "AWQ version {version:?} is not supported (only the GEMM packing layout; \
             GEMV, GEMV_fast, Marlin and ExLlama checkpoints pack weights differently)"
            ))
        );
        let zero_point = obj
            .get("zero_point")
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| unsupported("AWQ `zero_point` is not a boolean".into()))
            })
            .transpose()?
            .unwrap_or(true);
        ensure!(
            zero_point,
            unsupported(
                "AWQ with zero_point=false is not supported (only asymmetric GEMM with qzeros)"
                    .into()
            )
        );
        let group = obj
            .get("group_size")
            .or_else(|| obj.get("q_group_size"))
            .and_then(|v| v.as_i64())
            .ok_or_else(|| {
                unsupported("AWQ quantization_config has no integer field `group_size`".into())
            })?;
        let group_size = match group {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => {
                return Err(unsupported(format!(
                    "AWQ group_size {g} is invalid (must be positive or -1)"
                )))
            }
        };
        Ok(Self { group_size })
    }

    /// The group size for a layer with `in_features` inputs.
    pub fn group_for(&self, in_features: usize) -> usize {
        self.group_size.unwrap_or(in_features)
    }

    /// The `quantization_config` JSON object this config stands for, as AutoAWQ writes it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bits": 4,
            "group_size": self.group_size.map_or(-1, |g| g as i64),
            "modules_to_not_convert": null,
            "quant_method": "awq",
            "version": "gemm",
            "zero_point": true,
        })
    }
}

/// Unpacks one word into its eight 4-bit values in logical column order.
#[inline]
pub fn unpack_word(word: u32) -> [u8; PACK_FACTOR] {
    let mut out = [0u8; PACK_FACTOR];
    for (col, &nibble) in AWQ_REVERSE_ORDER.iter().enumerate() {
        out[col] = ((word >> (4 * nibble)) & 0xF) as u8;
    }
    out
}

/// Packs eight 4-bit values (logical column order; values above 15 are an error) into one word.
#[inline]
pub fn pack_word(values: &[u8; PACK_FACTOR]) -> Result<u32> {
    let mut word = 0u32;
    for (nibble, &col) in AWQ_ORDER.iter().enumerate() {
        let v = values[col];
        ensure!(
            v < 16,
            Error::InvalidInput(format!("value {v} does not fit in 4 bits"))
        );
        word |= (v as u32) << (4 * nibble);
    }
    Ok(word)
}

/// Unpacks a row-major `[rows, words_per_row]` packed matrix into `[rows, 8 * words_per_row]`
/// 4-bit values in logical column order.
pub fn unpack(packed: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() * PACK_FACTOR);
    for &w in packed {
        out.extend_from_slice(&unpack_word(w));
    }
    out
}

/// Packs a row-major matrix of 4-bit values whose row length is a multiple of eight into words
/// (the inverse of [`unpack`]), as AutoAWQ packs `qweight` and `qzeros`.
pub fn pack(values: &[u8]) -> Result<Vec<u32>> {
    ensure!(
        values.len().is_multiple_of(PACK_FACTOR),
        Error::InvalidInput(format!(
            "cannot pack {} values: not a multiple of {PACK_FACTOR}",
            values.len()
        ))
    );
    values
        .chunks_exact(PACK_FACTOR)
        .map(|c| pack_word(c.try_into().expect("chunk of eight")))
        .collect()
}

/// One AWQ GEMM linear layer as stored in a checkpoint (packed words as raw `u32`, scales widened
/// to f32).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqLayer {
    /// `[in_features, out_features / 8]` packed 4-bit weights, row-major.
    pub qweight: Vec<u32>,
    /// `[in_features / group, out_features / 8]` packed 4-bit zero points, row-major.
    pub qzeros: Vec<u32>,
    /// `[in_features / group, out_features]` scales, row-major.
    pub scales: Vec<f32>,
    /// Inputs of the layer.
    pub in_features: usize,
    /// Outputs of the layer.
    pub out_features: usize,
    /// Input rows per quantization group.
    pub group: usize,
}

impl AwqLayer {
    /// Checks that the three arrays have the shapes the layer's dimensions require.
    pub fn validate(&self) -> Result<()> {
        let (inf, outf, group) = (self.in_features, self.out_features, self.group);
        ensure!(
            outf % PACK_FACTOR == 0,
            Error::InvalidInput(format!(
                "out_features {outf} is not a multiple of {PACK_FACTOR}"
            ))
        );
        ensure!(
            group > 0 && inf % group == 0,
            Error::InvalidInput(format!(
                "in_features {inf} is not a multiple of the group size {group}"
            ))
        );
        let words = outf / PACK_FACTOR;
        let groups = inf / group;
        ensure!(
            self.qweight.len() == inf * words,
            Error::InvalidInput(format!(
                "qweight has {} words, expected [{inf}, {words}]",
                self.qweight.len()
            ))
        );
        ensure!(
            self.qzeros.len() == groups * words,
            Error::InvalidInput(format!(
                "qzeros has {} words, expected [{groups}, {words}]",
                self.qzeros.len()
            ))
        );
        ensure!(
            self.scales.len() == groups * outf,
            Error::InvalidInput(format!(
                "scales has {} values, expected [{groups}, {outf}]",
                self.scales.len()
            ))
        );
        Ok(())
    }

    /// Dequantizes into a row-major `[in_features, out_features]` f32 matrix.
    ///
    /// Every value is `(q - z) * s` computed exactly in f32 (a 4-bit difference times an f16
    /// scale is exact in f32, so rounding the result to f16 gives what AutoAWQ's f16
    /// `dequantize_gemm` gives). Work is split over input rows across the available CPU threads.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let (inf, outf, group) = (self.in_features, self.out_features, self.group);
        let words = outf / PACK_FACTOR;
        let zeros: Vec<f32> = unpack(&self.qzeros).into_iter().map(f32::from).collect();
        let (qweight, scales) = (&self.qweight, &self.scales);

        let dequant_rows = |first_row: usize, dst: &mut [f32]| {
            for (r, dst_row) in dst.chunks_exact_mut(outf).enumerate() {
                let row = first_row + r;
                let g = row / group;
                let z_row = &zeros[g * outf..(g + 1) * outf];
                let s_row = &scales[g * outf..(g + 1) * outf];
                let q_row = &qweight[row * words..(row + 1) * words];
                for (w, &word) in q_row.iter().enumerate() {
                    let q = unpack_word(word);
                    let base = w * PACK_FACTOR;
                    for (j, &qj) in q.iter().enumerate() {
                        let c = base + j;
                        dst_row[c] = (f32::from(qj) - z_row[c]) * s_row[c];
                    }
                }
            }
        };

        let mut out = vec![0f32; inf * outf];
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(inf.max(1));
        if threads <= 1 || inf * outf < (1 << 18) {
            dequant_rows(0, &mut out);
        } else {
            let rows_per_thread = inf.div_ceil(threads);
            std::thread::scope(|s| {
                for (t, chunk) in out.chunks_mut(rows_per_thread * outf).enumerate() {
                    let f = &dequant_rows;
                    s.spawn(move || f(t * rows_per_thread, chunk));
                }
            });
        }
        Ok(out)
    }

    /// Dequantizes into candle's linear layout `[out_features, in_features]` on `device` in
    /// `dtype`. The arithmetic is done in f32 on the CPU; the transpose and the cast run on
    /// `device`.
    pub fn to_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        let dense = self.dequantize()?;
        let w = Tensor::from_vec(dense, (self.in_features, self.out_features), &Device::Cpu)?
            .to_device(device)?
            .to_dtype(dtype)?;
        Ok(w.t()?.contiguous()?)
    }
}

/// Quantizes a dense weight to AWQ GEMM 4-bit with zero points, as AutoAWQ does: for each
/// output column and each group of `group` inputs, `s = max(max − min, 1e-5) / 15` (rounded to
/// f16, as stored), `z = clamp(round(−min / s), 0, 15)` and `q = clamp(round(w / s) + z, 0, 15)`,
/// so that `(q − z)·s` is within `s / 2` of every weight of the group that lies in its range.
///
/// `weight` is row-major `[out_features, in_features]` (candle's linear layout).
///
/// # Errors
/// The shapes do not fit AWQ packing (`out_features` a multiple of 8, `in_features` of `group`)
/// or `weight` has the wrong length.
pub fn quantize(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    group: usize,
) -> Result<AwqLayer> {
    ensure!(
        weight.len() == out_features * in_features,
        Error::InvalidInput(format!(
            "weight has {} values, expected [{out_features}, {in_features}]",
            weight.len()
        ))
    );
    ensure!(
        out_features.is_multiple_of(PACK_FACTOR) && group > 0 && in_features.is_multiple_of(group),
        Error::InvalidInput(format!(
            "[{out_features}, {in_features}] does not fit AWQ packing with group size {group}"
        ))
    );
    let groups = in_features / group;
    let mut scales = vec![0f32; groups * out_features];
    let mut zeros = vec![0u8; groups * out_features];
    let mut q = vec![0u8; in_features * out_features];
    for o in 0..out_features {
        let row = &weight[o * in_features..(o + 1) * in_features];
        for g in 0..groups {
            let part = &row[g * group..(g + 1) * group];
            let (lo, hi) = part
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &w| {
                    (lo.min(w), hi.max(w))
                });
            let s = half::f16::from_f32(((hi - lo).max(1e-5)) / 15.0).to_f32();
            let z = (-lo / s).round().clamp(0.0, 15.0);
            scales[g * out_features + o] = s;
            zeros[g * out_features + o] = z as u8;
            for (k, &w) in part.iter().enumerate() {
                let i = g * group + k;
                q[i * out_features + o] = ((w / s).round() + z).clamp(0.0, 15.0) as u8;
            }
        }
    }
    let layer = AwqLayer {
        qweight: pack(&q)?,
        qzeros: pack(&zeros)?,
        scales,
        in_features,
        out_features,
        group,
    };
    layer.validate()?;
    Ok(layer)
}
