#!/usr/bin/env bash
# Every benchmark on a lent GPU, in one call of at most about 9 minutes. From the repository root:
#
#     bash benchmarks/run_gpu.sh             # JSON in benchmarks/results/*_gpu*.json, or in $OUT when that is set
#     bash benchmarks/run_gpu.sh --dry-run   # on any machine: the set-up, and each step's command asked for --help
#
# The GPU machines of this workplace have torch but not diffusers, datasets or mlxtend, and no network: wheels for
# those, fetched beforehand into .whl/ (benchmarks/RESULTS.md, "On a GPU", gives the command), are installed into
# /tmp/site. The script stops at the first set-up failure, runs every step even if one fails, and exits non-zero if
# any step failed or timed out (a step's whole process group is killed at its limit).
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; fi

export BENCH_RESULTS_DIR=${OUT:-$PWD/benchmarks/results}
mkdir -p "$BENCH_RESULTS_DIR"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
elif [ "$dry_run" = 0 ]; then
    echo "run_gpu.sh: no nvidia-smi here, so no GPU: run it on the lent machine (or --dry-run to check it)" >&2
    exit 2
fi
# everything the steps import, so that a missing wheel stops the script here and names the package
python3 -c "import torch, diffusers, accelerate, datasets, mlxtend, ddpm_pipeline.training_setup as s, train_ddpm
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"

failed=()
step() {  # name, seconds allowed, command...
    local name=$1 limit=$2
    shift 2
    if [ "$dry_run" = 1 ]; then
        "$@" --help >/dev/null || failed+=("$name (--help)")
        echo "=== $name: would run $* (at most $limit s)"
        return 0
    fi
    echo "=== $name (at most $limit s)"
    local started=$SECONDS status=0 pid watchdog
    # in a process group of its own, so that the limit (and the end) kills its children too: timeout alone leaves
    # the processes a killed python started running
    setsid "$@" &
    pid=$!
    (sleep "$limit"; kill -TERM -- "-$pid" 2>/dev/null; sleep 10; kill -KILL -- "-$pid" 2>/dev/null) &
    watchdog=$!
    wait "$pid" || status=$?
    kill "$watchdog" 2>/dev/null || true
    kill -KILL -- "-$pid" 2>/dev/null || true
    if [ "$status" != 0 ]; then failed+=("$name (exit $status)"); fi
    echo "=== $name took $((SECONDS - started)) s, exit $status"
}

step "training throughput, eager" 100 python3 benchmarks/bench_train.py --steps 50 --tag _gpu
step "sampling speed and quality" 130 python3 benchmarks/bench_sample.py --quality_samples 100 --tag _gpu
step "time to quality" 180 python3 benchmarks/bench_time_to_quality.py \
    --budget_minutes 1 --eval_every_minutes 0.25 --eval_samples 100 --tag _gpu
step "training throughput, torch.compile" 150 python3 benchmarks/bench_train.py --steps 50 \
    --configs "reference fp32" --compile --tag _gpu_compiled

if [ ${#failed[@]} -gt 0 ]; then
    printf 'run_gpu.sh: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "run_gpu.sh: every step passed$([ "$dry_run" = 1 ] && echo ' (dry run)')"
