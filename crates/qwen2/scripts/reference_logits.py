#!/usr/bin/env python3
"""Golden last-position logits for generated Qwen2 checkpoints, computed with PyTorch/Transformers.

For each checkpoint directory (config.json + model.safetensors in the Hugging Face layout, AWQ GEMM
4-bit or dense), this script

1. reads the weights with safetensors/numpy and dequantizes AWQ layers itself, following
   AutoAWQ's order (awq/utils/packing_utils.py: shifts 0,4,...,28 then AWQ_REVERSE_ORDER =
   [0, 4, 1, 5, 2, 6, 3, 7]; weight[in, out] = (q - z) * s), independently of the Rust code;
2. builds a plain transformers Qwen2ForCausalLM from config.json (quantization_config removed,
   eager attention, float32, CPU) and loads those float32 weights;
3. runs one right-padded batch of rows of different lengths (fixed token ids below) with an
   attention mask and positions 0..len-1, and keeps each row's logits at its last real token;
4. cross-checks against each row run alone, and against a small float64 numpy Qwen2 forward
   written here (per row, unpadded), and fails if either differs by more than 1e-3.

The fixture keeps, per row, what the Rust test needs rather than all 151936 logits (4 rows x
151936 x 4 bytes = 2.4 MB in float32; float16 would lose the precision the test checks): the
top-50 ids and values, 128 fixed probe ids and their values, and the logsumexp over the whole
vocabulary (which ties every logit into one number). Values are float32 printed exactly.
The file also records a position-weighted checksum of model.safetensors (the Rust test recomputes
it on a freshly generated checkpoint to prove it is looking at the same weights).

Usage:
  python3 scripts/reference_logits.py .devbin/tiny-ckpt .devbin/tiny-dense-ckpt \
      --out tests/fixtures/qwen2_tiny_logits.json
  python3 scripts/reference_logits.py DIR... --numpy-only --out /tmp/x.json   # no torch needed
"""

import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]

# Fixed token ids (taken modulo the vocabulary size); lengths 1, 5, 17 and 40.
BASE_ROWS = [
    [151644],
    [151644, 8948, 198, 2610, 525],
    [9707, 11, 1879, 0, 1096, 374, 264, 1273, 13, 151643, 42, 100000, 7, 3555, 30, 220, 151935],
    [(37 * i * i + 101 * i + 13) % 151936 for i in range(40)],
]
TOP_K = 50


def checksum(path: str) -> int:
    """Little-endian u64 words w_i of the zero-padded bytes: sum of w_i * (2i + 1) mod 2^64."""
    data = open(path, "rb").read()
    data += b"\0" * (-len(data) % 8)
    w = np.frombuffer(data, dtype="<u8")
    k = np.arange(len(w), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(np.sum(w * k, dtype=np.uint64))


def load_tensors(ckpt: str) -> dict:
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(ckpt, f)))
    return out


def awq_dequant(qweight, qzeros, scales, group):
    """AutoAWQ dequantize_gemm in numpy, float32 (exact), returned as [out, in]."""
    shifts = np.arange(0, 32, 4, dtype=np.int32)

    def unpack(p):
        u = (p.astype(np.int32)[:, :, None] >> shifts[None, None, :]).reshape(p.shape[0], -1)
        order = np.arange(u.shape[-1]).reshape(-1, 8)[:, AWQ_REVERSE_ORDER].reshape(-1)
        return u[:, order] & 0xF

    iw = unpack(qweight)
    iz = np.repeat(unpack(qzeros), group, axis=0)
    s = np.repeat(scales.astype(np.float32), group, axis=0)
    return ((iw - iz).astype(np.float32) * s).T.copy()


def dense_state_dict(ckpt: str, cfg: dict) -> dict:
    """All weights as float32 numpy arrays under Hugging Face names, AWQ layers dequantized."""
    raw = load_tensors(ckpt)
    q = cfg.get("quantization_config")
    sd = {}
    for name, t in raw.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            assert q and q["quant_method"] == "awq" and q["bits"] == 4 and q["version"].lower() == "gemm"
            in_f = t.shape[0]
            group = q["group_size"] if q["group_size"] != -1 else in_f
            sd[prefix + ".weight"] = awq_dequant(t, raw[prefix + ".qzeros"], raw[prefix + ".scales"], group)
        elif name.endswith(".qzeros") or name.endswith(".scales"):
            continue
        else:
            sd[name] = t.astype(np.float32)
    return sd


def numpy_forward(sd: dict, cfg: dict, ids: list) -> np.ndarray:
    """Float64 Qwen2 forward of one unpadded row; returns the last position's logits."""
    W = {k: v.astype(np.float64) for k, v in sd.items()}
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    d = H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    T = len(ids)

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)

    def rope(x):  # [T, heads, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        rot = np.concatenate([-x2, x1], axis=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((T, T), -np.inf), k=1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = norm(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"]).reshape(T, nh, d)
        k = (h @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"]).reshape(T, nkv, d)
        v = (h @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"]).reshape(T, nkv, d)
        q, k = rope(q), rope(k)
        out = np.zeros((T, nh, d))
        for hh in range(nh):
            kv = hh // (nh // nkv)
            s = q[:, hh, :] @ k[:, kv, :].T / math.sqrt(d) + causal
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, hh, :] = s @ v[:, kv, :]
        x = x + out.reshape(T, H) @ W[p + "self_attn.o_proj.weight"].T
        h = norm(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
    h = norm(x[-1], W["model.norm.weight"])
    lm = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else W["lm_head.weight"]
    return lm @ h


def torch_logits(sd: dict, cfg: dict, rows: list):
    """Padded-batch last logits and each row alone, via transformers' Qwen2ForCausalLM in f32."""
    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    c = {k: v for k, v in cfg.items() if k not in ("quantization_config", "torch_dtype", "dtype")}
    theta = float(cfg.get("rope_theta", 10000.0))
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    d = H // nh
    want_inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))

    def build(conf_dict):
        conf = Qwen2Config(**conf_dict)
        conf._attn_implementation = "eager"
        conf.use_cache = False
        return Qwen2ForCausalLM(conf).to(torch.float32).eval()

    model = build(c)
    inv = model.model.rotary_emb.inv_freq.float().cpu()
    if inv.shape != want_inv.shape or not torch.allclose(inv, want_inv, rtol=1e-6, atol=0):
        # Newer configs spell the RoPE base inside rope_parameters.
        c2 = dict(c)
        c2["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        model = build(c2)
        inv = model.model.rotary_emb.inv_freq.float().cpu()
        assert torch.allclose(inv, want_inv, rtol=1e-6, atol=0), "could not set rope_theta"

    state = {k: torch.from_numpy(v) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    allowed_missing = {"lm_head.weight"} if cfg.get("tie_word_embeddings", False) else set()
    assert not unexpected, f"unexpected keys {unexpected}"
    assert set(missing) <= allowed_missing, f"missing keys {missing}"
    if cfg.get("tie_word_embeddings", False):
        try:
            model.tie_weights()
        except TypeError:
            pass
        if not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight):
            model.lm_head.weight = model.model.embed_tokens.weight
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight), "lm_head not tied"
    else:
        assert torch.equal(model.lm_head.weight, state["lm_head.weight"])

    B, T = len(rows), max(len(r) for r in rows)
    ids = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    pos = torch.arange(T).unsqueeze(0).expand(B, T)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        batched = np.stack([out[i, len(r) - 1].float().numpy() for i, r in enumerate(rows)])
        alone = np.stack(
            [model(input_ids=torch.tensor([r]), use_cache=False).logits[0, -1].float().numpy() for r in rows]
        )
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    return batched, alone, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint directories")
    ap.add_argument("--out", required=True)
    ap.add_argument("--numpy-only", action="store_true", help="skip torch; golden = numpy forward")
    args = ap.parse_args()

    doc = {
        "description": "Last-position logits of right-padded batches (scripts/reference_logits.py)",
        "reference": "numpy-float64" if args.numpy_only else "transformers-Qwen2ForCausalLM-float32-cpu",
        "checkpoints": {},
    }
    failures = []
    for ckpt in args.checkpoints:
        key = os.path.basename(os.path.normpath(ckpt))
        cfg = json.load(open(os.path.join(ckpt, "config.json")))
        V = cfg["vocab_size"]
        rows = [[t % V for t in r] for r in BASE_ROWS]
        sd = dense_state_dict(ckpt, cfg)
        ref_np = np.stack([numpy_forward(sd, cfg, r) for r in rows])
        entry = {"rows": rows, "lengths": [len(r) for r in rows]}
        if args.numpy_only:
            golden = ref_np.astype(np.float32)
        else:
            golden, alone, versions = torch_logits(sd, cfg, rows)
            doc.update(versions)
            d_alone = float(np.max(np.abs(golden - alone)))
            d_np = float(np.max(np.abs(golden.astype(np.float64) - ref_np)))
            entry["max_abs_diff_batched_vs_alone"] = d_alone
            entry["max_abs_diff_torch_vs_numpy_f64"] = d_np
            print(f"{key}: torch batched vs alone {d_alone:.3e}, torch vs numpy f64 {d_np:.3e}")
            if not (d_alone < 1e-3 and d_np < 1e-3):
                failures.append(f"{key}: reference implementations disagree ({d_alone:.3e}, {d_np:.3e})")
        path = os.path.join(ckpt, "model.safetensors")
        entry["weights_checksum"] = str(checksum(path))
        entry["weights_bytes"] = os.path.getsize(path)
        probe_rng = np.random.default_rng(7)
        probes = sorted(set(range(32)) | set(range(V - 32, V)) | set(probe_rng.choice(V, 64, replace=False).tolist()))
        results = []
        for i in range(len(rows)):
            row = golden[i].astype(np.float32)
            top = np.argsort(-row, kind="stable")[:TOP_K]
            m = float(row.max())
            lse = m + math.log(float(np.sum(np.exp(row.astype(np.float64) - m))))
            results.append(
                {
                    "top_ids": [int(t) for t in top],
                    "top_values": [float(row[t]) for t in top],
                    "probe_ids": probes,
                    "probe_values": [float(row[t]) for t in probes],
                    "logsumexp": lse,
                    "std": float(row.std()),
                }
            )
        entry["results"] = results
        doc["checkpoints"][key] = entry
        print(f"{key}: vocab {V}, lengths {entry['lengths']}, logit std {[round(r['std'], 3) for r in results]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    if failures:
        print("FAILED:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
