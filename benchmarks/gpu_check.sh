#!/usr/bin/env bash
# One prepared check of the CUDA path, at most ~5 minutes on one GPU: `pytest -m gpu`, the throughput
# benchmark at 224 px twice: from the cache (epochs 2+ read the decoded cache, which the trainer holds on the
# GPU when it fits; epoch 1 reads the JPEG/PNG files) and from the files (--cache off: every epoch decodes,
# JPEGs on the GPU), and the demo on CUDA. Prints one table at the end.
#   bash benchmarks/gpu_check.sh            (from the repository root, with .venv built by `make test`)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-/tmp/mlic-gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

start=$(date +%s)
timeout 90 .venv/bin/pytest -q -m gpu tests > "$OUT/pytest.txt" 2>&1
tests_rc=$?
tests_line=$(tail -1 "$OUT/pytest.txt")

timeout 110 $PY benchmarks/throughput.py --sizes 224 --images 2048 --epochs 3 --device cuda \
  --data-dir "$OUT/throughput-data" > "$OUT/throughput.txt" 2>&1
bench_rc=$?
timeout 80 $PY benchmarks/throughput.py --sizes 224 --images 2048 --epochs 2 --device cuda --cache off \
  --data-dir "$OUT/throughput-data" > "$OUT/throughput-files.txt" 2>&1
files_rc=$?

timeout 60 .venv/bin/mlic demo --device cuda --output-dir "$OUT/demo" --no-progress > "$OUT/demo.txt" 2>&1
demo_rc=$?
end=$(date +%s)

echo
echo "| check | result |"
echo "|---|---|"
echo "| pytest -m gpu (rc $tests_rc) | $tests_line |"
grep -E "train img/s|model step|matmul peak|DISTURBED|batch-1" "$OUT/throughput.txt" | sed 's/^/| throughput, cache (rc '"$bench_rc"') | /; s/$/ |/'
grep -E "train img/s|DISTURBED" "$OUT/throughput-files.txt" | sed 's/^/| throughput, files (rc '"$files_rc"') | /; s/$/ |/'
echo "| demo on CUDA (rc $demo_rc) | $(grep -E 'test mAP|mAP' "$OUT/demo.txt" | tail -1) |"
echo "| wall time | $((end - start)) s |"
