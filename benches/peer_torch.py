#!/usr/bin/env python3
"""The PyTorch peer of benches/gpu.rs: vLLM's sampler operations written with plain torch ops,
timed the same way on the same device, batch 256 x vocab 151,936, f32 / f16 / bf16.

Each op follows what vLLM (v0.10-0.11 sampler and logits processors) does, on tensors already
on the GPU (the host-side bookkeeping vLLM also does is not timed):
- allowed_token_ids (ForceToken): a persistent bool mask [batch, vocab], `masked_fill_`;
- grammar bitmask (TokenBitmask): unpack the int32 words with shifts and `& 1`, `masked_fill_`
  of the disallowed tokens;
- bad words / min tokens: `index_put_` of -inf at (row, token) pairs;
- logit bias: `index_put_(..., accumulate=True)` of the biases at (row, token) pairs;
- penalties: token counts of prompt and output with `scatter_add_` on [batch, vocab + 1]
  (vLLM's bincount), then repetition (`where` on the positive / non-positive logits),
  frequency (`-= f * counts`) and presence (`-= p * mask`);
- temperature: `div_` by a [batch, 1] tensor;
- min-p: softmax, row max, `probs < min_p * max`, -inf where true.
Workload as in benches/gpu.rs: 3 allowed ids, a random bitmask, 16 bias entries, 2 stop ids + EOS,
prompt 512 and output 128 tokens per row, temperature 0.8, min-p 0.05.

Timing: fresh random logits for every op, buffers rotated past L2, warm-up, the median of 9
repeats of n back-to-back calls timed with torch.cuda.Event (n sized for about 3 ms per
repeat); `dst.copy_(src)` as the floor.

Run: python3 benches/peer_torch.py
"""

import statistics

import torch

VOCAB = 151_936
BATCH = 256
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROTATE_BYTES = 256 << 20
REPEATS = 9
EOS = 151_645


def time_events(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(n, i0):
        start.record()
        for i in range(n):
            fn(i0 + i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000.0 / n

    run(10, 0)
    est = run(10, 10)
    n = int(min(2000, max(10, 3000.0 / max(est, 0.5))))
    return statistics.median(run(n, r * n) for r in range(REPEATS))


class State:
    """The device tensors vLLM keeps for the batch."""

    def __init__(self, dev):
        g = torch.Generator(device="cpu").manual_seed(7)
        rows = torch.arange(BATCH)
        self.allowed_mask = torch.ones(BATCH, VOCAB, dtype=torch.bool)
        self.allowed_mask[:, [32, 33, 48_731]] = False  # True = disallowed (vLLM's convention)
        self.allowed_mask = self.allowed_mask.to(dev)
        words = (VOCAB + 31) // 32
        self.bitmask = torch.randint(-(2**31), 2**31 - 1, (BATCH, words), generator=g, dtype=torch.int32).to(dev)
        self.shifts = torch.arange(32, dtype=torch.int32, device=dev)
        stops = torch.randint(0, VOCAB, (BATCH, 2), generator=g)
        stops = torch.cat([stops, torch.full((BATCH, 1), EOS)], dim=1)
        self.ban_rows = rows.repeat_interleave(3).to(dev)
        self.ban_cols = stops.reshape(-1).to(dev)
        bias_cols = torch.randint(0, VOCAB, (BATCH, 16), generator=g)
        self.bias_rows = rows.repeat_interleave(16).to(dev)
        self.bias_cols = bias_cols.reshape(-1).to(dev)
        self.bias_vals = torch.full((BATCH * 16,), 1.5)
        self.prompt = torch.randint(0, VOCAB, (BATCH, 512), generator=g).to(dev)
        self.output = torch.randint(0, VOCAB, (BATCH, 128), generator=g).to(dev)
        self.rep = torch.full((BATCH,), 1.1, device=dev)
        self.freq = torch.full((BATCH,), 0.2, device=dev)
        self.pres = torch.full((BATCH,), 0.1, device=dev)
        self.temp = torch.full((BATCH, 1), 0.8, device=dev)
        self.min_p = torch.full((BATCH, 1), 0.05, device=dev)


def force(s, x):
    x.masked_fill_(s.allowed_mask, float("-inf"))


def bitmask(s, x):
    bits = (s.bitmask.unsqueeze(-1) >> s.shifts) & 1
    allowed = bits.reshape(BATCH, -1)[:, :VOCAB].bool()
    x.masked_fill_(~allowed, float("-inf"))


def min_tokens(s, x):
    x.index_put_((s.ban_rows, s.ban_cols), torch.tensor(float("-inf"), device=x.device, dtype=x.dtype))


def bias(s, x):
    x.index_put_((s.bias_rows, s.bias_cols), s.bias_vals.to(x.device, x.dtype), accumulate=True)


def counts(tokens):
    c = torch.zeros(BATCH, VOCAB + 1, dtype=torch.long, device=tokens.device)
    c.scatter_add_(1, tokens, torch.ones_like(tokens))
    c = c[:, :VOCAB]
    return c, c > 0


def penalties(s, x):
    _, prompt_mask = counts(s.prompt)
    out_counts, out_mask = counts(s.output)
    rep = torch.where(prompt_mask | out_mask, s.rep.unsqueeze(1), 1.0)
    pos = x > 0
    x[pos] /= rep[pos].to(x.dtype)
    x[~pos] *= rep[~pos].to(x.dtype)
    x -= s.freq.unsqueeze(1) * out_counts
    x -= s.pres.unsqueeze(1) * out_mask


def temperature(s, x):
    x.div_(s.temp)


def min_p(s, x):
    probs = torch.softmax(x, dim=-1)
    top = probs.amax(dim=-1, keepdim=True)
    x[probs < top * s.min_p] = float("-inf")


def chain(*ops):
    def run(s, x):
        for op in ops:
            op(s, x)

    return run


def main():
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(f"# PyTorch {torch.__version__} peer on {name}, batch {BATCH} x vocab {VOCAB}")
    s = State(dev)
    ops = [
        ("ForceToken", force),
        ("TokenBitmask", bitmask),
        ("MinTokens", min_tokens),
        ("LogitBias", bias),
        ("Penalties", penalties),
        ("Temperature", temperature),
        ("MinP", min_p),
        ("Pipeline: Force+Bias+MinTokens+Penalties+MinP", chain(force, min_tokens, bias, penalties, min_p)),
        ("Pipeline: Bitmask+Bias+MinTokens+Penalties+MinP", chain(bitmask, min_tokens, bias, penalties, min_p)),
    ]
    rows = []
    for dtype in DTYPES:
        esize = torch.tensor([], dtype=dtype).element_size()
        nbytes = BATCH * VOCAB * esize
        nbuf = max(2, min(64, -(-ROTATE_BYTES // nbytes)))
        # Fresh logits for every op, as in benches/gpu.rs (an op changes them in place).
        fresh = lambda: [(torch.randn(BATCH, VOCAB, device=dev) * 3).to(dtype) for _ in range(nbuf)]
        for label, op in ops:
            bufs = fresh()
            t = time_events(lambda i, op=op: op(s, bufs[i % nbuf]))
            rows.append((str(dtype)[6:], label, t))
        dst = [torch.empty_like(b) for b in bufs]
        copy = time_events(lambda i: dst[(i + 1) % nbuf].copy_(bufs[i % nbuf]))
        rows.append((str(dtype)[6:], "copy_", copy))
        del bufs, dst
        torch.cuda.empty_cache()
        for d, label, t in rows:
            if d == str(dtype)[6:]:
                print(f"{d:>8} {label}: {t:.2f} us ({t / copy:.2f}x copy_)", flush=True)
    print()
    print("| op (PyTorch, vLLM's way) | dtype | us | x copy_ |")
    print("|---|---|---:|---:|")
    copies = {d: t for d, label, t in rows if label == "copy_"}
    for d, label, t in rows:
        print(f"| {label} | {d} | {t:.2f} | {t / copies[d]:.2f} |")


if __name__ == "__main__":
    main()
