#!/usr/bin/env python3
"""Make tests/fixtures/awq_reference.safetensors: random AWQ GEMM 4-bit tensors and their
dequantization, computed in numpy the way AutoAWQ does it.

Independent of the Rust code. The order facts come from AutoAWQ (awq/modules/linear/gemm.py,
WQLinear_GEMM.from_linear, and awq/utils/packing_utils.py, unpack_awq / reverse_awq_order /
dequantize_gemm):

* packing: for each word of eight output columns, nibble i (bits 4i..4i+4) holds column
  8*word + AWQ_ORDER[i], AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7], for qweight and qzeros alike;
* unpacking: shift right by 0, 4, ..., 28, then reorder each group of eight unpacked values with
  AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7] and mask to 4 bits;
* dequantization: scales and zeros repeated group_size times along the input dimension,
  weight[in, out] = (iweight - izeros) * scales (AutoAWQ computes it in float16).

Stored tensors (shape [in, out] = [64, 32], group 16):
  qweight i32 [in, out/8], qzeros i32 [in/group, out/8], scales f16 [in/group, out],
  intweight i32 [in, out], izeros i32 [in/group, out] (unpacked values, logical order),
  weight_f32 f32 [in, out] (exact (q - z) * s), weight_f16 f16 [in, out] (AutoAWQ's f16 result),
  group_size i32 [1].

Usage: python3 scripts/awq_reference.py [--out tests/fixtures/awq_reference.safetensors]
Needs: numpy, safetensors.
"""

import argparse
import os

import numpy as np
from safetensors.numpy import save_file

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]
BITS = 4


def pack_like_autoawq(values: np.ndarray) -> np.ndarray:
    """[rows, cols] ints in 0..15 -> [rows, cols/8] int32, AutoAWQ's from_linear loop."""
    rows, cols = values.shape
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    for col in range(cols // 8):
        for i in range(8):
            packed[:, col] |= values[:, col * 8 + AWQ_ORDER[i]].astype(np.uint32) << np.uint32(i * BITS)
    return packed.view(np.int32)


def unpack_like_autoawq(packed: np.ndarray) -> np.ndarray:
    """[rows, words] int32 -> [rows, 8*words] ints: shift, then reverse the AWQ order, mask."""
    shifts = np.arange(0, 32, BITS, dtype=np.int32)
    # Arithmetic shift of int32 as torch does; the mask below removes sign-extension bits.
    unpacked = (packed[:, :, None] >> shifts[None, None, :]).reshape(packed.shape[0], -1)
    order = np.arange(unpacked.shape[-1]).reshape(-1, 8)[:, AWQ_REVERSE_ORDER].reshape(-1)
    return unpacked[:, order] & ((1 << BITS) - 1)


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "awq_reference.safetensors"))
    args = ap.parse_args()

    in_f, out_f, group = 64, 32, 16
    groups = in_f // group
    rng = np.random.default_rng(20240611)
    intweight = rng.integers(0, 16, size=(in_f, out_f), dtype=np.int32)
    izeros = rng.integers(0, 16, size=(groups, out_f), dtype=np.int32)
    scales = rng.uniform(0.001, 0.02, size=(groups, out_f)).astype(np.float16)

    qweight = pack_like_autoawq(intweight)
    qzeros = pack_like_autoawq(izeros)
    assert (qweight < 0).any(), "want some words with the top bit set (sign handling)"

    iw = unpack_like_autoawq(qweight)
    iz = unpack_like_autoawq(qzeros)
    assert np.array_equal(iw, intweight), "AutoAWQ unpack does not invert its pack"
    assert np.array_equal(iz, izeros)

    zeros_rep = np.repeat(iz, group, axis=0)
    scales_rep = np.repeat(scales, group, axis=0)
    diff = (iw - zeros_rep).astype(np.int8)
    # Exact: a 4-bit difference times an f16 scale needs at most 15 mantissa bits.
    weight_f32 = diff.astype(np.float32) * scales_rep.astype(np.float32)
    # AutoAWQ: int8 tensor times f16 scales gives f16 (the exact product rounded once).
    weight_f16 = diff.astype(np.float16) * scales_rep
    assert np.array_equal(weight_f32.astype(np.float16), weight_f16)

    tensors = {
        "qweight": np.ascontiguousarray(qweight),
        "qzeros": np.ascontiguousarray(qzeros),
        "scales": scales,
        "intweight": intweight,
        "izeros": izeros,
        "weight_f32": weight_f32,
        "weight_f16": weight_f16,
        "group_size": np.array([group], dtype=np.int32),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(tensors, args.out, metadata={"source": "scripts/awq_reference.py", "order": "AutoAWQ GEMM"})
    print(f"wrote {args.out}: in={in_f} out={out_f} group={group}")


if __name__ == "__main__":
    main()
