"""Peer for the arena_judge model: PyTorch + transformers prefill throughput on the same checkpoint.

Loads a generated Qwen2 AWQ checkpoint directory (config.json + model.safetensors[.index.json]),
dequantizes the AWQ GEMM layers on the GPU following AutoAWQ's order (as scripts/reference_logits.py
does in numpy), builds transformers' Qwen2ForCausalLM in bf16 with SDPA attention, and times the
same work as `Qwen2::last_logits` in examples/arena_judge/model.rs: a right-padded batch with an
attention mask, then the lm_head on each row's last real position only. Row lengths are drawn like
crates/qwen2/benches/prefill_cuda.rs (uniform in len/2..len, the last row full).

Usage: python3 benches/peer_qwen2_torch.py CHECKPOINT_DIR
Prints one line per shape: batch, len, real tokens, seconds (best of 2 after a warm-up), tokens/s,
and peak memory allocated by torch.
"""

import json
import os
import random
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]
SHAPES = [(1, 64), (16, 512), (8, 2048), (4, 4096), (2, 8192), (8, 8192)]


def load(ckpt):
    index = os.path.join(ckpt, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(ckpt, f), device="cuda"))
    return out


def unpack(p):
    shifts = torch.arange(0, 32, 4, device=p.device, dtype=torch.int32)
    u = (p.to(torch.int32)[:, :, None] >> shifts[None, None, :]).reshape(p.shape[0], -1)
    order = torch.arange(u.shape[-1], device=p.device).reshape(-1, 8)[:, AWQ_REVERSE_ORDER].reshape(-1)
    return u[:, order] & 0xF


def dequant(qweight, qzeros, scales, group, dtype):
    iw = unpack(qweight)
    iz = unpack(qzeros).repeat_interleave(group, dim=0)
    s = scales.float().repeat_interleave(group, dim=0)
    return ((iw - iz).float() * s).t().contiguous().to(dtype)


def main():
    ckpt = sys.argv[1]
    dtype = torch.bfloat16
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    q = cfg["quantization_config"]
    raw = load(ckpt)
    sd = {}
    for name, t in raw.items():
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            group = q["group_size"] if q["group_size"] != -1 else t.shape[0]
            sd[p + ".weight"] = dequant(t, raw[p + ".qzeros"], raw[p + ".scales"], group, dtype)
        elif not (name.endswith(".qzeros") or name.endswith(".scales")):
            sd[name] = t.to(dtype)
    del raw
    c = {k: v for k, v in cfg.items() if k not in ("quantization_config", "torch_dtype", "dtype")}
    conf = Qwen2Config(**c)
    conf._attn_implementation = "sdpa"
    conf.use_cache = False
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(conf).to(dtype).eval()
    model.load_state_dict(sd, strict=False)
    if cfg.get("tie_word_embeddings"):
        model.lm_head.weight = model.model.embed_tokens.weight
    del sd
    torch.cuda.synchronize()
    rng = random.Random(1)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {dtype}, sdpa")
    print("batch  len  real_tokens  seconds  tokens/s  peak_GiB")
    for batch, length in SHAPES:
        lens = [length if r + 1 == batch else rng.randint(length // 2, length) for r in range(batch)]
        ids = torch.zeros((batch, length), dtype=torch.long, device="cuda")
        mask = torch.zeros((batch, length), dtype=torch.long, device="cuda")
        for i, n in enumerate(lens):
            ids[i, :n] = torch.randint(0, 151_643, (n,), device="cuda")
            mask[i, :n] = 1
        last = torch.tensor([n - 1 for n in lens], device="cuda")
        torch.cuda.reset_peak_memory_stats()

        def step():
            with torch.no_grad():
                h = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                h = h[torch.arange(batch, device="cuda"), last]
                return model.lm_head(h).float()

        step()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            step()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        real = sum(lens)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{batch:5d} {length:5d} {real:11d} {best:8.3f} {real / best:9.0f} {peak:9.2f}", flush=True)


if __name__ == "__main__":
    main()
