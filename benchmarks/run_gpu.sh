#!/usr/bin/env bash
# Every benchmark on a lent GPU, in one call of at most about 9 minutes. From the repository root:
#
#     bash benchmarks/run_gpu.sh     # JSON in benchmarks/results/*_gpu*.json, or in $OUT when that is set
#
# The GPU machines of this workplace have torch but not diffusers, datasets or mlxtend: wheels for those, fetched
# beforehand into .whl/ (benchmarks/RESULTS.md gives the command), are installed into /tmp/site when it exists.
set -uo pipefail
export BENCH_RESULTS_DIR=${OUT:-$PWD/benchmarks/results}
mkdir -p "$BENCH_RESULTS_DIR"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"

step() {  # name, seconds allowed, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most $limit s)"
    local started=$SECONDS
    timeout "$limit" "$@" || echo "=== $name FAILED or timed out (exit $?)"
    echo "=== $name took $((SECONDS - started)) s"
}

step "training throughput, eager" 100 python3 benchmarks/bench_train.py --steps 50 --tag _gpu
step "sampling speed and quality" 130 python3 benchmarks/bench_sample.py --quality_samples 100 --tag _gpu
step "time to quality" 180 python3 benchmarks/bench_time_to_quality.py \
    --budget_minutes 1 --eval_every_minutes 0.25 --eval_samples 100 --tag _gpu
step "training throughput, torch.compile" 150 python3 benchmarks/bench_train.py --steps 50 \
    --configs "reference fp32" --compile --tag _gpu_compiled
exit 0
