"""Peer of arena_judge on the GPU: PyTorch + transformers (SDPA) on exactly the judge's rows.

Reads the judge's `--dump-prompts` file (JSON lines; uses `id`, `token_ids` and `batch`, the
index of the batch the row ran in), loads the same checkpoint directory (AWQ GEMM layers
dequantized on the GPU with AutoAWQ's nibble order, as scripts/reference_logits.py does), builds
transformers' Qwen2ForCausalLM with SDPA attention in f16 or bf16, and runs the judge's batches
in the judge's order: right-padded rows with an attention mask, the lm_head on each row's last
real token only, then the softmax over the logits of A, B and tie (what the judge's ForceToken
and log_softmax leave).

Usage:
  python3 peer_judge_torch.py CHECKPOINT_DIR PROMPTS.jsonl --dtype f16 [--out probs.csv]
                              [--compare submission.csv] [--choices 32,33,48731] [--passes 2]

Prints, per pass (the first one includes PyTorch's first-use costs): seconds, real and padded
tokens, real tokens/s, and peak memory (torch's allocated and reserved); the GPU memory in use on
the device (as `crates/qwen2/benches/judge_batches.rs` prints it) before loading, after loading
and after the passes; with --compare, the max |p_ours - p_peer| over all rows and classes and
how many rows' top choice agree. Probabilities are read back at the end of each pass.
"""

import argparse
import csv
import json
import os
import time
from collections import OrderedDict

import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def load_raw(ckpt):
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


def build_model(ckpt, dtype):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    q = cfg.get("quantization_config")
    raw = load_raw(ckpt)
    sd = {}
    for name in list(raw):
        t = raw[name]
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
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.get("tie_word_embeddings") and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.get("tie_word_embeddings"):
        model.lm_head.weight = model.model.embed_tokens.weight
    del sd
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return model


def read_batches(path):
    batches = OrderedDict()
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        batches.setdefault(r["batch"], []).append((str(r["id"]), r["token_ids"]))
    return [batches[k] for k in sorted(batches)]


def run_pass(model, batches, choices):
    probs = {}
    pending = []
    real = padded = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        for rows in batches:
            n, longest = len(rows), max(len(ids) for _, ids in rows)
            ids = torch.zeros((n, longest), dtype=torch.long)
            mask = torch.zeros((n, longest), dtype=torch.long)
            for i, (_, toks) in enumerate(rows):
                ids[i, : len(toks)] = torch.tensor(toks)
                mask[i, : len(toks)] = 1
            ids, mask = ids.cuda(non_blocking=True), mask.cuda(non_blocking=True)
            last = torch.tensor([len(t) - 1 for _, t in rows], device="cuda")
            h = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            logits = model.lm_head(h[torch.arange(n, device="cuda"), last]).float()
            # Read back after the pass (as the Rust bench does): no synchronisation per batch.
            pending.append((rows, torch.softmax(logits[:, choices], dim=-1)))
            real += sum(len(t) for _, t in rows)
            padded += n * longest
        for rows, p in pending:
            for (rid, _), row in zip(rows, p.double().cpu().tolist()):
                probs[rid] = row
    torch.cuda.synchronize()
    return time.perf_counter() - t0, real, padded, probs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("prompts")
    ap.add_argument("--dtype", choices=["f16", "bf16"], default="f16")
    ap.add_argument("--out")
    ap.add_argument("--compare")
    ap.add_argument("--choices", default="32,33,48731")
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args()
    dtype = torch.float16 if a.dtype == "f16" else torch.bfloat16
    choices = torch.tensor([int(c) for c in a.choices.split(",")], device="cuda")
    used = lambda: (lambda f, t: (t - f) / 2**20)(*torch.cuda.mem_get_info())
    torch.cuda.init()
    before = used()
    t = time.perf_counter()
    model = build_model(a.checkpoint, dtype)
    loaded = used()
    batches = read_batches(a.prompts)
    print(f"peer: torch {torch.__version__}, transformers SDPA, {a.dtype}, {torch.cuda.get_device_name()}; "
          f"{sum(len(b) for b in batches)} rows in {len(batches)} batches; model built in {time.perf_counter() - t:.1f} s", flush=True)
    torch.cuda.reset_peak_memory_stats()
    for i in range(a.passes):
        secs, real, padded, probs = run_pass(model, batches, choices)
        print(f"peer {a.dtype} pass {i + 1}{' (first: includes first-use costs)' if i == 0 else ''}: {secs:.3f} s, "
              f"{real} real tokens ({padded} padded), {real / secs:,.0f} real tokens/s, "
              f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"peak reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB", flush=True)
    print(f"peer {a.dtype} GPU memory in use on the device (torch.cuda.mem_get_info): {before:.0f} MiB before loading, "
          f"{loaded:.0f} MiB loaded, {used():.0f} MiB after the passes", flush=True)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "winner_model_a", "winner_model_b", "winner_tie"])
            for rid, p in probs.items():
                w.writerow([rid] + [f"{x:.6f}" for x in p])
    if a.compare:
        ours = {}
        with open(a.compare) as f:
            for r in csv.DictReader(f):
                ours[r["id"]] = [float(r["winner_model_a"]), float(r["winner_model_b"]), float(r["winner_tie"])]
        common = [k for k in probs if k in ours]
        dmax = max(abs(x - y) for k in common for x, y in zip(ours[k], probs[k]))
        dmean = sum(abs(x - y) for k in common for x, y in zip(ours[k], probs[k])) / (3 * len(common))
        agree = sum(max(range(3), key=lambda j: ours[k][j]) == max(range(3), key=lambda j: probs[k][j]) for k in common)
        print(f"peer {a.dtype} vs {a.compare}: {len(common)} rows, max |dp| {dmax:.4f}, mean |dp| {dmean:.5f}, "
              f"top choice equal on {agree}/{len(common)}", flush=True)


if __name__ == "__main__":
    main()
