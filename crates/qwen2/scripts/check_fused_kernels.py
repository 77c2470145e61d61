"""Checks and times the fused prefill kernels (crates/qwen2/src/fused/*.cu) against PyTorch on the GPU.

Usage: python3 crates/qwen2/scripts/check_fused_kernels.py crates/qwen2/src/fused   (on a GPU machine)
Compiles common.cuh + the .cu files with NVRTC (through CuPy), then for f16 and bf16:
flash attention over packed rows vs PyTorch SDPA in float32 (relative error, every output
written), bias+RoPE / RMSNorm / SiLU*up vs Hugging Face's formulas in torch (max abs diff),
and times flash attention against SDPA on a padded batch of the same rows.
"""
import math
import os
import sys

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

d = sys.argv[1]
src = "".join(open(os.path.join(d, f)).read() for f in ["common.cuh", "flash_attn.cu", "rms_norm.cu", "rope.cu", "silu_mul.cu", "embed.cu"])
mod = cp.RawModule(code=src, options=("--std=c++17", "--gpu-architecture=sm_90"), backend="nvrtc")
fn = lambda name: mod.get_function(name)
torch.manual_seed(0)
dev = "cuda"


def P(t):
    if t is None:
        return np.uint64(0)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return cp.asarray(t)


def u32(x):
    return np.uint32(x)


def plan(lens):
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    tiles = []
    for s, n in enumerate(lens):
        for q0 in range(0, n, 64):
            tiles.append((q0, s))
    tiles.sort(key=lambda x: -x[0])
    flat = []
    for q0, s in tiles:
        flat += [s, q0]
    return torch.tensor(cu, dtype=torch.int32, device=dev), torch.tensor(flat, dtype=torch.int32, device=dev), len(tiles)


def flash(qkv, lens, nh, nkv, hd, dtype, out=None):
    T = qkv.shape[0]
    cu, tiles, nt = plan(lens)
    if out is None:
        out = torch.full((T, nh * hd), float("nan"), dtype=dtype, device=dev)
    name = f"flash_attn_{'f16' if dtype == torch.float16 else 'bf16'}_hd{hd}"
    f = fn(name)
    args = (P(qkv), P(out), P(tiles), P(cu), u32(qkv.shape[1]), u32(out.shape[1]), u32(nh // nkv), u32(nh * hd), u32((nh + nkv) * hd), np.float32(math.log2(math.e) / math.sqrt(hd)))
    return f, (nh, nt), (128,), args, out


def ref_attn(qkv, lens, nh, nkv, hd):
    outs = []
    o = 0
    for n in lens:
        x = qkv[o : o + n].float()
        q = x[:, : nh * hd].reshape(n, nh, hd).transpose(0, 1)
        k = x[:, nh * hd : (nh + nkv) * hd].reshape(n, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        v = x[:, (nh + nkv) * hd :].reshape(n, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        outs.append(F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0].transpose(0, 1).reshape(n, nh * hd))
        o += n
    return torch.cat(outs)


def time_ms(launch, reps=20):
    for _ in range(3):
        launch()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        launch()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


print(torch.__version__, torch.cuda.get_device_name())
for dtype in (torch.float16, torch.bfloat16):
    dn = "f16" if dtype == torch.float16 else "bf16"
    # --- attention correctness
    for nh, nkv, hd, lens in [
        (16, 2, 128, [1, 2, 7, 63, 64, 65, 100, 128, 129, 255, 500, 1000, 2049]),
        (4, 2, 64, [1, 3, 64, 65, 130, 700]),
        (16, 2, 128, [4096, 37, 8192]),
    ]:
        T = sum(lens)
        qkv = (torch.randn(T, (nh + 2 * nkv) * hd, device=dev) * 2).to(dtype)
        f, grid, block, args, out = flash(qkv, lens, nh, nkv, hd, dtype)
        f(grid, block, args)
        torch.cuda.synchronize()
        ref = ref_attn(qkv, lens, nh, nkv, hd)
        unwritten = torch.isnan(out.float()).sum().item()
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        # baseline: SDPA in the model dtype vs float32
        base = ref_attn(qkv.float(), lens, nh, nkv, hd)  # same as ref; dtype SDPA below
        o = 0
        bl = []
        for n in lens:
            x = qkv[o : o + n]
            q = x[:, : nh * hd].reshape(n, nh, hd).transpose(0, 1)
            k = x[:, nh * hd : (nh + nkv) * hd].reshape(n, nkv, hd).transpose(0, 1)
            v = x[:, (nh + nkv) * hd :].reshape(n, nkv, hd).transpose(0, 1)
            bl.append(F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)[0].transpose(0, 1).reshape(n, nh * hd))
            o += n
        bl = torch.cat(bl).float()
        rel_sdpa = ((bl - ref).norm() / ref.norm()).item()
        print(f"ATTN {dn} nh={nh} nkv={nkv} hd={hd} T={T}: rel err {rel:.2e} (torch SDPA {dtype}: {rel_sdpa:.2e}), max abs {(out.float()-ref).abs().max().item():.2e}, unwritten {unwritten}", flush=True)
    # --- attention timing on a realistic mix (one batch of ~16k real tokens)
    rng = np.random.default_rng(1)
    lens = []
    while sum(lens) < 16000:
        lens.append(int(np.clip(rng.lognormal(6.4, 0.7), 60, 8192)))
    lens.sort()
    nh, nkv, hd = 16, 2, 128
    T = sum(lens)
    qkv = (torch.randn(T, (nh + 2 * nkv) * hd, device=dev)).to(dtype)
    f, grid, block, args, out = flash(qkv, lens, nh, nkv, hd, dtype)
    ms = time_ms(lambda: f(grid, block, args))
    flops = sum(4 * n * (n + 1) / 2 * hd * nh for n in lens)
    B, L = len(lens), max(lens)
    qp = torch.randn(B, nh, L, hd, device=dev, dtype=dtype)
    kp = torch.randn(B, nkv, L, hd, device=dev, dtype=dtype)
    vp = torch.randn(B, nkv, L, hd, device=dev, dtype=dtype)
    mask = torch.zeros(B, 1, L, L, dtype=torch.bool, device=dev)
    for i, n in enumerate(lens):
        mask[i, 0, :n, :n] = torch.tril(torch.ones(n, n, dtype=torch.bool, device=dev))
        mask[i, 0, n:, 0] = True
    ms_mask = time_ms(lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=True))
    ms_causal = time_ms(lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True))
    print(f"ATTN-TIME {dn}: {B} rows, {T} tokens (max {L}): ours {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s useful); "
          f"SDPA padded+mask {ms_mask:.3f} ms; SDPA padded is_causal {ms_causal:.3f} ms", flush=True)

    # --- bias + rope
    T, nh, nkv, hd = 3000, 16, 2, 128
    W = (nh + 2 * nkv) * hd
    qkv = torch.randn(T, W, device=dev).to(dtype)
    bias = (torch.randn(W, device=dev) * 0.5).to(dtype)
    pos = torch.randint(0, 8192, (T,), device=dev, dtype=torch.int32)
    inv = 1.0 / (1000000.0 ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))
    ang = torch.arange(32768, device=dev, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos().to(dtype).contiguous(), ang.sin().to(dtype).contiguous()
    x = qkv + bias
    c, s = torch.cat([cos, cos], -1)[pos.long()][:, None], torch.cat([sin, sin], -1)[pos.long()][:, None]
    def rot(t):
        return torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1)
    q = x[:, : (nh + nkv) * hd].reshape(T, nh + nkv, hd)
    q = q * c + rot(q) * s
    ref = torch.cat([q.reshape(T, -1), x[:, (nh + nkv) * hd :]], 1)
    got = qkv.clone()
    fn(f"bias_rope_{dn}")((T,), (128,), (P(got), P(bias), P(cos), P(sin), P(pos), u32(W), u32(nh + 2 * nkv), u32(nh + nkv), u32(hd)))
    torch.cuda.synchronize()
    print(f"ROPE {dn}: max abs diff vs HF formula {(got.float() - ref.float()).abs().max().item():.3e} (values ~{ref.float().abs().max().item():.1f})")
    # --- rmsnorm (plain and gathered rows)
    H = 2048
    xs = torch.randn(T, H, device=dev).to(dtype)
    w = (1 + 0.1 * torch.randn(H, device=dev)).to(dtype)
    def hf_norm(h):
        hf = h.float()
        hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * hf.to(dtype)
    href = hf_norm(xs)
    hg = torch.full_like(xs, float("nan"))
    fn(f"rms_norm_{dn}")((T,), (256,), (P(xs), P(w), P(hg), np.uint64(0), u32(H), np.float32(1e-6)))
    rows = torch.tensor([5, 0, T - 1], dtype=torch.int32, device=dev)
    hg2 = torch.full((3, H), float("nan"), dtype=dtype, device=dev)
    fn(f"rms_norm_{dn}")((3,), (256,), (P(xs), P(w), P(hg2), P(rows), u32(H), np.float32(1e-6)))
    torch.cuda.synchronize()
    print(f"NORM {dn}: max abs diff vs HF {(hg.float() - href.float()).abs().max().item():.3e} "
          f"(ulps of ~{href.float().abs().max().item():.1f}); gathered rows {(hg2.float() - href[rows.long()].float()).abs().max().item():.3e}")
    # --- silu * up
    I = 11008
    gu = torch.randn(T, 2 * I, device=dev).to(dtype) * 3
    ref = F.silu(gu[:, :I]) * gu[:, I:]
    got = gu.clone()
    fn(f"silu_mul_{dn}")((1024,), (256,), (P(got), u32(T), u32(I)))
    torch.cuda.synchronize()
    print(f"SILU {dn}: max abs diff {(got[:, :I].float() - ref.float()).abs().max().item():.3e}, up untouched {torch.equal(got[:, I:], gu[:, I:])}")
    # --- embed
    table = torch.randn(1000, H, device=dev).to(dtype)
    ids = torch.randint(0, 1000, (T,), device=dev, dtype=torch.int32)
    xe = torch.empty(T, H, dtype=dtype, device=dev)
    fn("embed_rows")((T,), (256,), (P(table), P(ids), P(xe), u32(H)))
    torch.cuda.synchronize()
    print(f"EMBED {dn}: equal {torch.equal(xe, table[ids.long()])}")
    # elementwise timing at 16k tokens
    T = 16384
    xs = torch.randn(T, H, device=dev).to(dtype); hh = torch.empty_like(xs)
    gu = torch.randn(T, 2 * I, device=dev).to(dtype)
    qkv = torch.randn(T, W, device=dev).to(dtype); pos = torch.randint(0, 8192, (T,), device=dev, dtype=torch.int32)
    t_norm = time_ms(lambda: fn(f"rms_norm_{dn}")((T,), (256,), (P(xs), P(w), P(hh), np.uint64(0), u32(H), np.float32(1e-6))))
    t_silu = time_ms(lambda: fn(f"silu_mul_{dn}")((132 * 8,), (256,), (P(gu), u32(T), u32(I))))
    t_rope = time_ms(lambda: fn(f"bias_rope_{dn}")((T,), (128,), (P(qkv), P(bias), P(cos), P(sin), P(pos), u32(W), u32(nh + 2 * nkv), u32(nh + nkv), u32(hd))))
    gb = lambda b, ms: b / ms / 1e6
    print(f"ELEM-TIME {dn} T={T}: rms_norm {t_norm:.3f} ms ({gb(T*H*2*2, t_norm):.0f} GB/s), silu_mul {t_silu:.3f} ms ({gb(T*I*2*3, t_silu):.0f} GB/s), bias_rope {t_rope:.3f} ms ({gb(T*W*2*2, t_rope):.0f} GB/s)", flush=True)
