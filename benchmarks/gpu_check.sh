#!/usr/bin/env bash
# All the device work of the GPU check in one run of at most 9 minutes, every result under $OUT.
#
#   bash benchmarks/gpu_check.sh              # on a machine with an NVIDIA GPU, CuPy and CUDA torch
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU, cut short: checks the script
#
# Steps (each under its own time limit, so one that hangs cannot eat the others' time):
#   1. versions of Python, NumPy, CuPy, CUDA, torch and the GPU            -> $OUT/versions.txt
#   2. install the wheels brought in .whl/ (num2words, graphviz) and this
#      project, without a package index                                     -> $OUT/install.txt
#   3. TX_DEVICE=cuda python -m pytest -q (the whole suite on the GPU)      -> $OUT/pytest.txt
#   4. train numbers-en-fr on the GPU for 1.5 minutes, then evaluate       -> $OUT/train.txt, metrics.jsonl,
#                                                                             evaluate.json
#   5. benchmarks/gpu_bench.py on small, base, paper and large, and a      -> $OUT/bench.md, bench.json,
#      cProfile of five steps of paper                                       profile.txt
# and $OUT/summary.md with the lines that matter (suite summary, tokens/s, exact match, the table).
#
# The GPU machine has no package index: bring the wheels from a machine that has one, into .whl/
# (ignored by git, so a copy of the working tree must carry it along explicitly):
#   pip download num2words graphviz setuptools --no-deps -d .whl/
set -uo pipefail

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/out/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
START=$(date +%s)

say() { echo "== $* ($(( $(date +%s) - START )) s)" | tee -a "$OUT/summary.md"; }
# step NAME SECONDS COMMAND...: run under a time limit, output to $OUT/NAME.txt and the terminal
step() {
    local name=$1 limit=$2; shift 2
    say "$name: $* (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.txt") 2>&1
    local rc=$?
    [ $rc -eq 124 ] && echo "$name: stopped after ${limit} s" | tee -a "$OUT/summary.md"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "$name: exit status $rc" | tee -a "$OUT/summary.md"
    return $rc
}

echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ $DRY_RUN = 1 ] && echo ' (dry run on the CPU)')" > "$OUT/summary.md"

# ---------------------------------------------------------------------------- 1. versions
versions() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
    $PY - <<'EOF'
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda,
          "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())
except Exception as e:
    print("torch: not usable:", e)
try:
    import cupy
    rt = cupy.cuda.runtime
    print("cupy", cupy.__version__, "runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion(),
          "devices", rt.getDeviceCount())
except Exception as e:
    print("cupy: not usable:", type(e).__name__, e)
EOF
}

# ---------------------------------------------------------------------------- 2. install, no index
install() {
    if [ -d .whl ]; then     # setuptools >= 70.1 builds the editable wheel without the `wheel` package
        $PY -m pip install -q --no-index --find-links .whl --no-deps --upgrade setuptools
        $PY -m pip install -q --no-index --find-links .whl --no-deps num2words graphviz
    else
        echo "no .whl/ folder: num2words and graphviz must already be installed"
    fi
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
    $PY -c "import num2words, graphviz, tinygrad_tx, tinygrad_tx.models.transformer; print('imports ok')"
}
export PY
export -f versions install
step versions 30 bash -c versions
step install 40 bash -c install || say "install failed: the steps below will say what is missing"

if [ $DRY_RUN = 0 ]; then
    if ! $PY -c "import tinygrad_tx as tx, sys; sys.exit(0 if tx.cuda_available() else 1)"; then
        say "no GPU: CuPy cannot see a device here. On a CPU machine run: bash benchmarks/gpu_check.sh --dry-run"
        exit 2
    fi
    DEVICE=cuda
    TESTS=(); TRAIN=(--task numbers-en-fr --minutes 1.5); BENCH=(--configs small base paper large)
    PROFILE=paper
    LIMITS=(170 125 45 100)                    # seconds: pytest, train, evaluate, bench (with the rest: 510)
else
    DEVICE=cpu
    TESTS=(tests/test_backend.py tests/test_random.py); TRAIN=(--task copy --steps 4 --eval-every 4)
    BENCH=(--configs small --steps 2 --warmup 1 --device cpu --no-plain)
    PROFILE=small
    LIMITS=(600 600 300 600)                   # a busy CPU machine is slow; the limits are not the point here
fi

# ---------------------------------------------------------------------------- 3. the suite on the GPU
export TX_DEVICE=$DEVICE
# On a machine with pytest-xdist (the GPU machine has it) the suite runs on 16 workers, each with its
# own CUDA context (110-121 s on the H100 machine; 8 workers did not finish in 137 s); pytest-timeout
# stops a single test that hangs instead of the whole step. pytest-benchmark, where installed, only
# warns once per worker that xdist disables it.
PARALLEL=(-p no:benchmark)
$PY -c "import xdist" 2>/dev/null && [ $DRY_RUN = 0 ] && PARALLEL+=(-n 16)
$PY -c "import pytest_timeout" 2>/dev/null && PARALLEL+=(--timeout 90)
step pytest "${LIMITS[0]}" $PY -m pytest -p no:cacheprovider -rfE --durations=10 "${PARALLEL[@]}" "${TESTS[@]}"   # -q: pyproject
unset TX_DEVICE
echo "pytest summary: $(grep -E '(passed|failed|error)' "$OUT/pytest.txt" | tail -1)" | tee -a "$OUT/summary.md"

# ---------------------------------------------------------------------------- 4. train and evaluate
RUN="$OUT/run"
rm -rf "$RUN"
step train "${LIMITS[1]}" $PY -m tinygrad_tx train "${TRAIN[@]}" --device $DEVICE --out "$RUN"
cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
echo "training, last validation: $(tail -1 "$RUN/metrics.jsonl" 2>/dev/null)" | tee -a "$OUT/summary.md"
if [ $DRY_RUN = 0 ]; then
    TEST=(--task numbers-en-fr)                # its 1,000 held-out numbers
else                                           # a few pairs: an untrained model decodes slowly on a CPU
    printf '3 4 5\t3 4 5\n7 7 1 2\t7 7 1 2\n9\t9\n' > "$OUT/dry_test.tsv"
    TEST=(--data "$OUT/dry_test.tsv")
fi
step evaluate "${LIMITS[2]}" $PY -m tinygrad_tx evaluate --checkpoint "$RUN" "${TEST[@]}" --json --device $DEVICE
cp "$OUT/evaluate.txt" "$OUT/evaluate.json"
echo "evaluation: $(tail -1 "$OUT/evaluate.txt")" | tee -a "$OUT/summary.md"

# ---------------------------------------------------------------------------- 5. the benchmark against torch
step bench "${LIMITS[3]}" $PY benchmarks/gpu_bench.py "${BENCH[@]}" --json "$OUT/bench.json" \
    --profile "$PROFILE" --profile-out "$OUT/profile.txt"
grep '^|\|^Device' "$OUT/bench.txt" > "$OUT/bench.md"
cat "$OUT/bench.md" >> "$OUT/summary.md"

say "done; results in $OUT"
