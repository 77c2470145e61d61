#!/usr/bin/env python3
"""The PyTorch peer of benches/gpu.rs: the Python original's processors, timed the same way.

The original ForceToken keeps a request map {row: [ids]}; its apply builds row/column index
tensors from it, saves the kept logits (gather), fills the forced rows with -inf and writes the
kept values back. AllowedIds adds +100 to the listed ids of every row (`logits[:, ids] += 100`).
The pipeline is one after the other. A variant fills the rows with `index_fill_` instead of
advanced-index assignment (`logits[rows] = -inf`), torch's fastest plain route. Sizes, dtypes and ids are those of benches/gpu.rs: batch
1, 8, 64, 256 x vocab 151,936, f32 / f16 / bf16, every row forced to {32, 33, 48731}.

Timing: buffers rotated past L2, warm-up, then the median of 9 repeats of n back-to-back calls
timed with torch.cuda.Event (n sized for about 3 ms per repeat); plus torch's own d2d copy
(`dst.copy_(src)`) as a cross-check of the memory floor.

Run: python3 benches/peer_torch.py
"""

import statistics

import torch

VOCAB = 151_936
CHOICES = [32, 33, 48_731]
BATCHES = [1, 8, 64, 256]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROTATE_BYTES = 256 << 20
REPEATS = 9


class ForceTokenOriginal:
    """The original: a dict row -> forced ids, index tensors rebuilt at every apply."""

    def __init__(self, batch):
        self.requests = {row: list(CHOICES) for row in range(batch)}

    def apply(self, logits):
        if not self.requests:
            return logits
        dev = logits.device
        rows = list(self.requests.keys())
        row_idx = torch.tensor([r for r in rows for _ in self.requests[r]], device=dev)
        col_idx = torch.tensor([t for r in rows for t in self.requests[r]], device=dev)
        kept = logits[row_idx, col_idx]
        logits[torch.tensor(rows, device=dev)] = float("-inf")
        logits[row_idx, col_idx] = kept
        return logits


class ForceTokenIndexFill(ForceTokenOriginal):
    """The same, with the row fill done by index_fill_ (torch's fastest plain route)."""

    def apply(self, logits):
        if not self.requests:
            return logits
        dev = logits.device
        rows = list(self.requests.keys())
        row_idx = torch.tensor([r for r in rows for _ in self.requests[r]], device=dev)
        col_idx = torch.tensor([t for r in rows for t in self.requests[r]], device=dev)
        kept = logits[row_idx, col_idx]
        logits.index_fill_(0, torch.tensor(rows, device=dev), float("-inf"))
        logits[row_idx, col_idx] = kept
        return logits


class AllowedIdsOriginal:
    def __init__(self, ids, boost=100.0):
        self.ids = list(ids)
        self.boost = boost

    def apply(self, logits):
        logits[:, self.ids] += self.boost
        return logits


class PipelineOriginal:
    def __init__(self, *ps):
        self.ps = ps

    def apply(self, logits):
        for p in self.ps:
            logits = p.apply(logits)
        return logits


def time_events(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(n, i0):
        start.record()
        for i in range(n):
            fn(i0 + i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000.0 / n

    run(20, 0)
    est = run(20, 20)
    n = int(min(2000, max(20, 3000.0 / max(est, 0.5))))
    return statistics.median(run(n, r * n) for r in range(REPEATS))


def main():
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(f"# PyTorch {torch.__version__} peer on {name}, vocab {VOCAB}")
    rows = []
    for dtype in DTYPES:
        for batch in BATCHES:
            esize = torch.tensor([], dtype=dtype).element_size()
            nbytes = batch * VOCAB * esize
            nbuf = max(2, min(512, -(-ROTATE_BYTES // nbytes)))
            bufs = [torch.randn(batch, VOCAB, device=dev).to(dtype) for _ in range(nbuf)]
            procs = [
                ForceTokenOriginal(batch),
                AllowedIdsOriginal(CHOICES),
                PipelineOriginal(ForceTokenOriginal(batch), AllowedIdsOriginal(CHOICES)),
                ForceTokenIndexFill(batch),
            ]
            times = [time_events(lambda i, p=p: p.apply(bufs[i % nbuf])) for p in procs]
            dst = [torch.empty_like(b) for b in bufs]
            copy = time_events(lambda i: dst[(i + 1) % nbuf].copy_(bufs[i % nbuf]))
            del bufs, dst
            torch.cuda.empty_cache()
            print(
                f"{str(dtype)[6:]:>8} batch {batch:>3}: ForceToken {times[0]:8.2f} us, "
                f"AllowedIds {times[1]:8.2f} us, Pipeline {times[2]:8.2f} us, "
                f"ForceToken(index_fill_) {times[3]:8.2f} us, "
                f"copy_ {copy:8.2f} us ({2 * nbytes / copy / 1e3:6.0f} GB/s r+w)",
                flush=True,
            )
            rows.append((str(dtype)[6:], batch, copy, times))
    print()
    print(f"## PyTorch original on {name}, vocab {VOCAB} (median us per call; ratio = apply / copy_)")
    print()
    print(
        "| dtype | batch | copy_ | ForceToken | x copy | AllowedIds | x copy | Pipeline | x copy "
        "| ForceToken (index_fill_) | x copy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d, b, c, t in rows:
        print(
            f"| {d} | {b} | {c:.2f} | {t[0]:.2f} | {t[0] / c:.2f} | {t[1]:.2f} | {t[1] / c:.2f} "
            f"| {t[2]:.2f} | {t[2] / c:.2f} | {t[3]:.2f} | {t[3] / c:.2f} |"
        )


if __name__ == "__main__":
    main()
