#!/usr/bin/env python3
"""Independent reference for qwen2-prefill on real weights: a NumPy Qwen2 forward pass over a
GGUF file, read and dequantized by llama.cpp's own `gguf` Python package (not candle).

For each row of token ids it computes the last position's logits in float32 (float64 for the
norms' and softmax's reductions) and writes the logits of a few probe ids (A, B, tie by
default), the top-20 ids and values, and the log-sum-exp over the whole vocabulary.

  pip install numpy gguf     # the only dependencies
  python3 crates/qwen2/scripts/gguf_reference.py assets/models/qwen2.5-coder-0.5b-instruct.gguf \\
      --rows /tmp/prompts.jsonl --out crates/qwen2/tests/fixtures/qwen25_coder_05b_logits.json

`--rows` takes the JSON lines of arena_judge's `--dump-prompts` (their `token_ids`); `--take N`
uses the first N. The forward pass follows Hugging Face's Qwen2ForCausalLM: RMSNorm, q/k/v with
bias, rotate-half RoPE (GGUF qwen2 files keep Hugging Face's q/k layout), grouped-query causal
attention, SiLU-gated MLP, final RMSNorm, lm_head (`output.weight`, else the embeddings).
"""
import argparse
import hashlib
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key):
    return reader.fields[key].contents()


def load(path):
    r = GGUFReader(path)
    assert field(r, "general.architecture") == "qwen2", "only qwen2 GGUFs"
    cfg = {
        "layers": int(field(r, "qwen2.block_count")),
        "hidden": int(field(r, "qwen2.embedding_length")),
        "heads": int(field(r, "qwen2.attention.head_count")),
        "kv_heads": int(field(r, "qwen2.attention.head_count_kv")),
        "theta": float(field(r, "qwen2.rope.freq_base")),
        "eps": float(field(r, "qwen2.attention.layer_norm_rms_epsilon")),
    }
    tensors = {}
    for t in r.tensors:
        # GGUF shapes list the innermost dimension first; numpy wants it last.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        tensors[t.name] = w
    return cfg, tensors


def rms_norm(x, w, eps):
    var = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)).astype(np.float32) * w


def rope(x, theta):
    # x: [heads, seq, dim]; rotate-half with positions 0..seq.
    heads, seq, dim = x.shape
    half = dim // 2
    inv = 1.0 / (theta ** (np.arange(0, half, dtype=np.float32) * 2.0 / dim))
    ang = np.arange(seq, dtype=np.float32)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def forward(cfg, t, ids):
    h = t["token_embd.weight"][np.asarray(ids)]
    nh, nkv = cfg["heads"], cfg["kv_heads"]
    hd = cfg["hidden"] // nh
    seq = len(ids)
    mask = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), k=1)
    for l in range(cfg["layers"]):
        p = f"blk.{l}."
        x = rms_norm(h, t[p + "attn_norm.weight"], cfg["eps"])
        q = x @ t[p + "attn_q.weight"].T + t[p + "attn_q.bias"]
        k = x @ t[p + "attn_k.weight"].T + t[p + "attn_k.bias"]
        v = x @ t[p + "attn_v.weight"].T + t[p + "attn_v.bias"]
        q = rope(q.reshape(seq, nh, hd).transpose(1, 0, 2), cfg["theta"])
        k = rope(k.reshape(seq, nkv, hd).transpose(1, 0, 2), cfg["theta"])
        v = v.reshape(seq, nkv, hd).transpose(1, 0, 2)
        group = nh // nkv
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        s = (q @ k.transpose(0, 2, 1)) / np.float32(np.sqrt(hd)) + mask
        s = s.astype(np.float64)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = (s / s.sum(axis=-1, keepdims=True)).astype(np.float32)
        a = (s @ v).transpose(1, 0, 2).reshape(seq, nh * hd)
        h = h + a @ t[p + "attn_output.weight"].T
        x = rms_norm(h, t[p + "ffn_norm.weight"], cfg["eps"])
        g = x @ t[p + "ffn_gate.weight"].T
        u = x @ t[p + "ffn_up.weight"].T
        h = h + ((g / (1.0 + np.exp(-g))) * u) @ t[p + "ffn_down.weight"].T
    last = rms_norm(h[-1:], t["output_norm.weight"], cfg["eps"])
    head = t.get("output.weight", t["token_embd.weight"])
    return (last @ head.T)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--rows", required=True, help="JSON lines with token_ids (--dump-prompts)")
    ap.add_argument("--take", type=int, default=3)
    ap.add_argument("--probes", default="32,33,48731", help="ids whose logits are stored")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    with open(args.rows) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("token_ids"):
                rows.append(rec)
            if len(rows) == args.take:
                break
    cfg, tensors = load(args.gguf)
    probes = [int(p) for p in args.probes.split(",")]
    results = []
    for rec in rows:
        logits = forward(cfg, tensors, rec["token_ids"]).astype(np.float64)
        top = np.argsort(-logits)[:20]
        m = logits.max()
        results.append({
            "id": rec.get("id"),
            "token_ids": rec["token_ids"],
            "probe_ids": probes,
            "probe_values": [float(logits[i]) for i in probes],
            "top_ids": [int(i) for i in top],
            "top_values": [float(logits[i]) for i in top],
            "logsumexp": float(m + np.log(np.exp(logits - m).sum())),
        })
        print(f"row {rec.get('id')}: {len(rec['token_ids'])} tokens, A/B/tie logits "
              f"{[round(v, 4) for v in results[-1]['probe_values']]}")
    size = os.path.getsize(args.gguf)
    with open(args.gguf, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    json.dump({
        "description": "Last-position logits of real rows, NumPy Qwen2 over the GGUF "
                       "(crates/qwen2/scripts/gguf_reference.py, gguf package dequantization)",
        "gguf": os.path.basename(args.gguf),
        "gguf_bytes": size,
        "gguf_first_mib_sha256": head,
        "rows": results,
    }, open(args.out, "w"), indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
