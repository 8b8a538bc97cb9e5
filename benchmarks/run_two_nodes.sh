#!/usr/bin/env bash
# A 2-machine job (1 process each, gloo) on this one machine over loopback, checked against 1 process with the same
# global batch: the weights must agree, and the checkpoints hold both machines' random states. It is the launch a
# cluster user types on each node, with 127.0.0.1 for the main node's address. From the repository root:
#
#     bash benchmarks/run_two_nodes.sh [WORK_DIR]      # default outputs/two_nodes; exit 0 when all agrees
#
# Each "node" runs `accelerate launch --num_machines 2 --machine_rank R --main_process_ip 127.0.0.1 ...`; both write
# to one output folder, as nodes on a shared file system do. About a minute on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-outputs/two_nodes}
rm -rf "$work"
mkdir -p "$work"
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
run=(--config configs/tiny.yaml --digits 0,1 --max_train_steps 12 --lr_warmup_steps 4 --cond_drop_prob 0.3
    --checkpointing_steps 6 --checkpoints_total_limit 1 --logger none)

node() {  # machine rank
    python -m accelerate.commands.launch --multi_gpu --num_machines 2 --machine_rank "$1" --num_processes 2 \
        --main_process_ip 127.0.0.1 --main_process_port "$port" --mixed_precision no --dynamo_backend no \
        train_ddpm.py "${run[@]}" --train_batch_size 8 --output_dir "$work/two_nodes" >"$work/node$1.log" 2>&1
}
node 0 &
main_node=$!
node 1 &
other_node=$!
status=0
wait "$main_node" || status=$?
wait "$other_node" || status=$?
if [ "$status" != 0 ]; then
    echo "run_two_nodes.sh: a node failed (exit $status); its log:" >&2
    tail -n 30 "$work"/node*.log >&2
    exit 1
fi
grep -q "global batch 16 (2 process(es) x 8)" "$work/node0.log"
python train_ddpm.py "${run[@]}" --train_batch_size 16 --output_dir "$work/one_process" >"$work/one_process.log" 2>&1

python - "$work" <<'EOF'
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

work = Path(sys.argv[1])
weights = [load_file(str(work / run / "unet" / "diffusion_pytorch_model.safetensors")) for run in ("two_nodes", "one_process")]
worst = max((weights[0][name] - weights[1][name]).abs().max().item() for name in weights[0])
for name in weights[0]:  # the same batches, noise and timesteps: equal up to the order of the gradient sums
    torch.testing.assert_close(weights[0][name], weights[1][name], atol=1e-4, rtol=1e-3, msg=name)
manifest = json.loads((work / "two_nodes" / "checkpoint-6" / "training_state.json").read_text())
assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest["files"]), manifest["files"]
assert (manifest["global_batch"], manifest["num_processes"]) == (16, 2)
print(f"two nodes x 1 process == 1 process x batch 16: largest weight difference {worst:.2e}; checkpoint whole")
EOF
