#!/usr/bin/env bash
# Every GPU figure and CUDA check of the project in ONE device run (about 8 minutes at most),
# written to one results file ($OUT/gpu-results.md, or gpu-results/ beside the checkout).
#
# Runs on a bare GPU machine that has torch and nothing of ours: it installs the project itself,
# from the checkout, with the wheels of what such an image lacks carried in .gpu-wheels/
# (made here by bench/gpu_wheelhouse.sh; the device machine reaches no package index).
# Through the device tool:  run(command="bash bench/gpu.sh", carry=[".gpu-wheels"], timeout_s=560)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu-results}
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/gpu-results.md"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA GPU is visible to $PY (torch.cuda.is_available() is False);" \
         "this script only runs on a GPU machine" >&2
    exit 2
fi

if [ -d .gpu-wheels ] && ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps .gpu-wheels/*.whl
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . || exit 3

{
    echo "# GPU figures ($(date -u +%Y-%m-%d))"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo '```'
} > "$RESULTS"

# run TITLE SECONDS COMMAND...: one section of the results file; a step that fails or runs out
# of time is recorded as such and the next one still runs.
run() {
    local title=$1 limit=$2
    shift 2
    echo "== $title" >&2
    {
        echo
        echo "## $title"
        echo
        echo '```'
        echo "\$ $*"
        timeout "$limit" "$@" 2>&1
        echo "(exit $?)"
        echo '```'
    } >> "$RESULTS"
}

run "fp16 against fp32 (church-256, random weights): within the stated bounds" 60 \
    "$PY" -m bench.gpu_checks --device cuda --dtype float16
run "bf16 against fp32 (church-256, random weights)" 60 \
    "$PY" -m bench.gpu_checks --device cuda --dtype bfloat16
run "church-256 fp16: images/s against batch size" 60 \
    "$PY" -m bench.batching --gpu
run "step-level vs static vs one at a time (church-256 fp16, 48 jobs, saturation)" 150 \
    "$PY" -m bench.batching --network church-256 --device cuda --dtype float16 --jobs 48 \
    --load saturate --rounds 3 --max-batch 16
run "text-guided (SD-1.5 configuration, fp16, 512 px): images/s, step-level vs one at a time" 120 \
    "$PY" -m bench.gpu_sd --batches 1 2 4 8 16 --steps 25
run "crop-and-stitch vs dense at 1024 px (church-256 on the GPU)" 60 \
    "$PY" -m bench.crop_and_stitch --configs church-256 --size 1024 --areas 1 5 25 --steps 50 \
    --reps 3 --device cuda

cat "$RESULTS"
