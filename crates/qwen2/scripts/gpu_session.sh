#!/usr/bin/env bash
# The GPU session behind docs/gpu-prefill.md (its "run 4"), run from the repository root on a
# machine with an NVIDIA GPU, PyTorch + transformers + CuPy, and no Rust. First-use costs: a cold
# judge process first; then kernel checks, the GPU tests, and for bf16 and f16: the judge, the
# previous judge, the model alone on the judge's batches (judge_batches) and transformers + SDPA
# on the same batches, with GPU memory and probability comparisons. $OUT receives the logs.
#
# $G holds, built on a CUDA-capable build machine (`source cuda-env.sh`, stripped, xz-compressed):
#   arena_judge_new.xz     cargo build --release --features cuda,qwen2-prefill/cuda --example arena_judge
#   arena_judge_before.xz  the same from the commit before the fused path (for the "previous" rows)
#   judge_batches.xz       cargo bench -p qwen2-prefill --features cuda --bench judge_batches --no-run
#   test_cuda_fused.xz, test_golden.xz
#                          cargo test --release -p qwen2-prefill --features cuda,synthetic --no-run
#   write-checkpoint.xz    cargo build --release -p qwen2-prefill --features cuda,synthetic --bin write-checkpoint
#   tokenizer.json.xz      assets/qwen2.5/tokenizer.json (scripts/setup.sh)
#   check_fused_kernels.py, peer_judge_torch.py, qwen2/src/fused/*.cu*, qwen2/tests/fixtures/*
set -u
OUT=${OUT:-/tmp/gpu-session}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib CUDA_CACHE_MAXSIZE=4294967296 PYTHONUNBUFFERED=1
G=${G:-.devbin/gpu}
DATA=examples/arena_judge/data/train_first100.csv
for f in arena_judge_new arena_judge_before tokenizer.json judge_batches test_cuda_fused test_golden write-checkpoint; do xz -d -k -f -T4 $G/$f.xz; done
chmod +x $G/arena_judge_new $G/arena_judge_before $G/judge_batches $G/test_cuda_fused $G/test_golden $G/write-checkpoint
nvidia-smi --query-gpu=name,driver_version,memory.used,clocks.sm --format=csv,noheader
t=$(date +%s); $G/write-checkpoint /tmp/q3b --preset qwen2.5-3b --tokenizer $G/tokenizer.json || exit 1; echo "generated in $(( $(date +%s) - t )) s"
mem() { local tag=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem_$tag.log & local pid=$!
  "$@" > /tmp/$tag.log 2>&1; local rc=$?
  kill $pid; wait $pid 2>/dev/null
  grep -v -E "^\s*$|rows/s\]|^  (rows|truncated|malformed|non-finite|submission|accuracy)|^prompts, token ids" /tmp/$tag.log | grep -v "^$"
  echo "$tag: rc $rc, peak GPU memory used over the whole process (nvidia-smi, 100 ms samples): $(sort -n /tmp/mem_$tag.log | tail -1) MiB"; }
cmp3() { python3 - "$@" <<'PY'
import csv, sys
rd = lambda p: {r["id"]: [float(r[k]) for k in ("winner_model_a", "winner_model_b", "winner_tie")] for r in csv.DictReader(open(p))}
a, b = rd(sys.argv[1]), rd(sys.argv[2])
ks = [k for k in a if k in b]
d = max(abs(x - y) for k in ks for x, y in zip(a[k], b[k]))
agree = sum(max(range(3), key=lambda j: a[k][j]) == max(range(3), key=lambda j: b[k][j]) for k in ks)
print(f"{sys.argv[3]}: {len(ks)} rows, max |dp| {d:.4f}, top choice equal {agree}/{len(ks)}")
PY
}
echo "== first judge process on this machine (f16): the first CUDA process on a fresh machine (driver JIT of candle's and our PTX)"
mem judge_cold_f16 $G/arena_judge_new --model /tmp/q3b --data $DATA --validate 100 --dtype f16 --out /tmp/judge_cold_f16.csv
echo "== kernel checks"; timeout 120 python3 $G/check_fused_kernels.py $G/qwen2/src/fused 2>&1 | tee /tmp/kernels.log | grep -v "^2.11"
echo "== GPU tests"
CARGO_MANIFEST_DIR=$PWD/$G/qwen2 timeout 200 $G/test_golden --ignored --nocapture cuda_matches_golden 2>&1 | grep -E "cuda |test result|panicked|FAILED"
timeout 200 $G/test_cuda_fused --ignored --nocapture 2>&1 | grep -E "max \||test result|panicked|FAILED"
for dt in bf16 f16; do
  echo "== $dt"
  mem judge_new_$dt $G/arena_judge_new --model /tmp/q3b --data $DATA --validate 100 --dtype $dt --out /tmp/judge_new_$dt.csv --dump-prompts /tmp/prompts_$dt.jsonl
  mem judge_before_$dt $G/arena_judge_before --model /tmp/q3b --data $DATA --validate 100 --dtype $dt --out /tmp/judge_before_$dt.csv
  mem bench_ours_$dt $G/judge_batches --model /tmp/q3b --prompts /tmp/prompts_$dt.jsonl --dtype $dt --passes 3 --out /tmp/bench_ours_$dt.csv
  mem peer_$dt python3 $G/peer_judge_torch.py /tmp/q3b /tmp/prompts_$dt.jsonl --dtype $dt --passes 3 --out /tmp/peer_$dt.csv --compare /tmp/bench_ours_$dt.csv
  cmp3 /tmp/judge_new_$dt.csv /tmp/judge_before_$dt.csv "$dt judge: fused vs previous"
  cmp3 /tmp/judge_before_$dt.csv /tmp/peer_$dt.csv "$dt previous judge vs peer"
  cmp3 /tmp/judge_new_$dt.csv /tmp/bench_ours_$dt.csv "$dt judge vs judge_batches (same model, same batches)"
done
true
cat /tmp/judge_new_bf16.log /tmp/judge_new_f16.log /tmp/judge_cold_f16.log > $OUT/judge_logs.txt
cat /tmp/bench_ours_*.log /tmp/peer_*.log /tmp/judge_before_*.log > $OUT/bench_peer_before_logs.txt
cp /tmp/kernels.log $OUT/kernels.log; gzip -c /tmp/prompts_f16.jsonl > $OUT/prompts_f16.jsonl.gz
cp /tmp/judge_new_f16.csv /tmp/peer_f16.csv $OUT/
