#!/usr/bin/env bash
# One GPU, at most 8 minutes, one JSON: everything in this project that needs a CUDA device.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--out FILE] [--budget SECONDS]
#
# Steps, in order, each under its own time limit (its share of --budget, default 470 s),
# each's stdout / stderr / exit code / seconds kept, then assembled into --out
# (default gpu_check.json) by benchmarks/gpu_check.py:
#
#   env         nvidia-smi, torch and CUDA versions
#   cuda_tests  pytest tests/jiio_core/test_cuda.py (CPU-against-CUDA, the CUDA graph tests;
#               they skip without CUDA), junit counts
#   graph       jiio_solve(cuda_graph=True) on the paper-width MDEQ at 28x28, batch 64, 80
#               iterations: captured, replayed twice, against the eager path
#   overhead    benchmarks/jiio_overhead.py --size paper --batch 64 --iters 80 (graph rows on CUDA)
#   bench       jiio bench attack with the strong baselines (cold, jfb, ift-4, ift-18 at PGD
#               step sizes 0.3/0.6/1.2) on synthetic MNIST-sized data, paper-width model
#
# --device cpu runs the same steps on the CPU (the CUDA tests skip, the graph step reports
# why it cannot run); --quick shrinks every size (seconds per step), which is what the
# slow test tests/benchmarks/test_gpu_check.py runs. A step that fails or times out does
# not stop the others; the exit code is 0 when every step exited 0.
set -u
DEVICE=cuda
QUICK=
OUT=gpu_check.json
BUDGET=470
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=--quick; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DIR="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
START=$(date +%s)

# share of the budget per step (seconds): tests 20%, graph 10%, overhead 25%, bench 40%, env rest
limit() { echo $(( BUDGET * $1 / 100 )); }

run_step() {  # name, limit in seconds, command...
  local name="$1" lim="$2"; shift 2
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$lim" "$@" >"$DIR/$name.out" 2>"$DIR/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  echo "$rc" >"$DIR/$name.rc"
  "$PY" -c "print(round($t1 - $t0, 2))" >"$DIR/$name.seconds"
  echo "[gpu_check $(( $(date +%s) - START ))s] $name: exit $rc" >&2
}

"$PY" - "$DEVICE" "$QUICK" "$BUDGET" >"$DIR/meta.json" <<'EOF'
import json, os, platform, sys, time
import torch
dev, quick, budget = sys.argv[1], bool(sys.argv[2]), int(sys.argv[3])
print(json.dumps({
    "device_asked": dev, "quick": quick, "budget_s": budget,
    "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "load_average_start": [round(v, 2) for v in os.getloadavg()],
}))
EOF

run_step env "$(limit 2)" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1 | sed "s/.*/{\"nvidia_smi\": \"&\"}/"; true'
run_step cuda_tests "$(limit 20)" "$PY" -m pytest -q -p no:cacheprovider tests/jiio_core/test_cuda.py --junitxml="$DIR/cuda_tests.xml"
run_step graph "$(limit 10)" "$PY" benchmarks/gpu_check.py graph --device "$DEVICE" $QUICK
if [ -n "$QUICK" ]; then
  run_step overhead "$(limit 25)" "$PY" benchmarks/jiio_overhead.py --size tiny --batch 8 --iters 6 --reps 1 --device "$DEVICE" --json
else
  run_step overhead "$(limit 25)" "$PY" benchmarks/jiio_overhead.py --size paper --batch 64 --iters 80 --reps 3 --device "$DEVICE" --json
fi
run_step bench "$(limit 40)" "$PY" benchmarks/gpu_check.py bench --device "$DEVICE" $QUICK

"$PY" benchmarks/gpu_check.py assemble "$DIR" "$OUT" >/dev/null
RC=$?
echo "[gpu_check $(( $(date +%s) - START ))s] wrote $OUT (step outputs in $DIR)" >&2
[ $RC -eq 0 ] || exit $RC
"$PY" -c "import json,sys; sys.exit(0 if json.load(open('$OUT'))['ok'] else 1)"
