"""Several processes and machines, on loopback (gloo): what a cluster user runs, checked here without a cluster.

Slow (a minute or more each: every launch starts Python, torch and diffusers in each process), so outside the default
run: `python -m pytest -m slow`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm_pipeline.checkpointing import list_checkpoints, read_training_state
from ddpm_pipeline.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from ddpm_pipeline.training.main import main as train_main
from tests.conftest import ROOT, tiny_args

pytestmark = pytest.mark.slow
ENV = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
COMMON = [
    "--cond_drop_prob",
    "0.3",
    "--lr_warmup_steps",
    "6",
    "--max_train_steps",
    "150",
    "--logger",
    "none",
    "--save_images_epochs",
    "1",
]  # a picture after each of the 2 epochs (main-only work)


def weights(folder: Path) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(output_dir: Path, *flags: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_machines", "1", str(ROOT / "train_ddpm.py"),
        *tiny_args(output_dir, "--train_batch_size", "8", *COMMON, *flags),
    ]  # fmt: skip
    return subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=stop_signals_by_default)  # fmt: skip


def stop_signals_by_default():
    """In the launched run, SIGINT and SIGHUP as a terminal gives them: a suite run under nohup or in a background job
    hands them down ignored, and a run leaves alone what it was started ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def rank_pid(output_dir: Path, rank: int) -> int | None:
    """The process id of the training process of ``rank`` writing to ``output_dir``."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(output_dir).encode() in command and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


def test_two_nodes_on_loopback_match_one_process(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_two_nodes.sh"), str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert "two nodes x 1 process == 1 process x batch 16" in result.stdout


@pytest.mark.parametrize(
    "signal_number, exit_code", [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGINT, EXIT_INTERRUPTED)]
)
def test_a_stop_signal_to_one_rank_of_a_two_process_run_saves_it_whole_and_resumes_exactly(
    tmp_path, signal_number, exit_code
):
    """The signal reaches rank 1 only (a scheduler may signal any task first): through the step's all-reduce both
    ranks stop after the same step, write one whole checkpoint and exit with the signal's code; the requeued command
    on 2 processes gives the uninterrupted run's weights bit for bit, and 1 process with the same global batch
    continues the same batches."""
    stopped = tmp_path / "stopped"
    job = launch_two(stopped, "--checkpointing_steps", "20")
    deadline = time.monotonic() + 240
    while not (stopped / "checkpoint-20").is_dir() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # training is under way once its first checkpoint is written
    pid = rank_pid(stopped, 1)
    assert pid is not None, "rank 1 is not running"
    os.kill(pid, signal_number)
    output, _ = job.communicate(timeout=240)
    assert f"exitcode  : {exit_code}" in output or f"exit code {exit_code}" in output, output[-3000:]
    assert f"{signal.Signals(signal_number).name} received" in output, output[-3000:]
    saved = list_checkpoints(stopped)[-1]  # the stop's checkpoint
    manifest = read_training_state(saved)
    assert 20 < manifest["global_step"] < 150, "the signal came too late to test a stop mid-run"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest["files"])
    assert not (stopped / "unet").exists()  # stopped, not finished

    straight = tmp_path / "straight"
    assert launch_two(straight).wait(timeout=300) == 0
    moved = tmp_path / "moved"  # the same checkpoint, continued by 1 process with the same global batch (16)
    shutil.copytree(saved, moved / saved.name)
    resumed = launch_two(stopped, "--resume_from_checkpoint", "latest")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output[-3000:]
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[name], b[name]) for name in a), "the resumed 2-process run differs from the straight one"
    args = tiny_args(moved, "--train_batch_size", "16", *COMMON, "--resume_from_checkpoint", "latest")
    assert train_main(args) == 0
    c = weights(moved)
    for name in a:  # the same batches; the gradient is summed in another order
        torch.testing.assert_close(a[name], c[name], atol=1e-4, rtol=1e-3, msg=name)


def test_two_processes_match_one_process(tmp_path, capsys):
    """2 ranks x batch 8 with gloo == 1 rank x batch 16: same batches, noise and timesteps, so the same weights. The
    two ranks train for a --time_budget: both take rank 0's length, and the run equals a 1-process run told that
    length from the start (the warm-up, where the speed is measured, does not depend on it)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    common = ["--cond_drop_prob", "0.3", "--lr_warmup_steps", "6"]
    two = tmp_path / "two"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_machines",
        "1",
    ]
    result = subprocess.run(
        launch
        + [str(ROOT / "train_ddpm.py"), *tiny_args(two, "--train_batch_size", "8", "--time_budget", "1.2s", *common)]
        + ["--checkpointing_steps", "4", "--checkpoints_total_limit", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr + result.stdout
    info = json.loads((two / "run_info.json").read_text())
    steps = info["global_step"]
    assert info["command"].startswith("accelerate launch train_ddpm.py")
    planned = result.stderr.rsplit("Time budget", 1)[-1]  # the last plan or re-plan
    assert steps >= 6 and (f"so {steps} steps in all" in planned or f"to {steps} steps" in planned)
    one = tmp_path / "one"
    assert train_main(tiny_args(one, "--train_batch_size", "16", "--max_train_steps", str(steps), *common)) == 0
    a, b = weights(two), weights(one)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=name)

    # the last checkpoint is whole: every rank's random states are in its manifest
    checkpoint = list_checkpoints(two)[-1]
    manifest = json.loads((checkpoint / "training_state.json").read_text())
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest["files"])
    assert (manifest["global_batch"], manifest["num_processes"]) == (16, 2)
    # resumed on 1 process: the same global batch continues with the same batches; another one is refused by name
    moved = tmp_path / "moved"
    shutil.copytree(checkpoint, moved / checkpoint.name)
    resume = [*common, "--resume_from_checkpoint", "latest"]  # the length and budget come from the checkpoint
    assert train_main(tiny_args(moved, "--train_batch_size", "8", *resume)) == 2
    assert "global batch 16 (2 process(es) x 8); this run's is 8 (1 x 8)" in capsys.readouterr().err
    assert train_main(tiny_args(moved, "--train_batch_size", "16", *resume)) == 0
    a, c = weights(two), weights(moved)
    for name in a:
        torch.testing.assert_close(a[name], c[name], atol=1e-4, rtol=1e-3, msg=name)
