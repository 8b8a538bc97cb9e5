"""Preemption and shared clusters: SIGTERM/SIGUSR1 stop a run with a whole checkpoint, a full disk keeps `latest` on
the last whole checkpoint, and two runs never share an output folder."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ddpm_pipeline.checkpointing import list_checkpoints
from ddpm_pipeline.preemption import EXIT_PREEMPTED, LOCK_FILE, OutputDirInUse, RunLock
from ddpm_pipeline.training import step as training_step
from ddpm_pipeline.training.main import main as train_main
from tests.conftest import tiny_args


def weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_saves_the_step_and_the_requeued_run_continues_exactly(
    tmp_path, monkeypatch, capsys, signal_number
):
    """The signal arrives during step 5 (sent by the process to itself, as a scheduler would): the step finishes, a
    whole checkpoint of it is written, the run exits with EXIT_PREEMPTED and the command to requeue; that command
    trains the same weights as a run that was never stopped."""
    common = ["--max_train_steps", "8", "--checkpointing_steps", "100"]
    straight = tmp_path / "straight"
    assert train_main(tiny_args(straight, *common)) == 0
    real_loss, calls = training_step.training_losses, {"n": 0}

    def signalled(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal_number)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training_step, "training_losses", signalled)
    stopped = tmp_path / "stopped"
    assert train_main(tiny_args(stopped, *common)) == EXIT_PREEMPTED
    message = capsys.readouterr().err
    assert signal.Signals(signal_number).name in message and "step 5 is saved" in message
    assert [p.name for p in list_checkpoints(stopped)] == ["checkpoint-5"]
    assert signal.getsignal(signal_number) in (signal.SIG_DFL, signal.default_int_handler)  # handlers restored
    monkeypatch.undo()
    assert train_main(tiny_args(stopped, *common, "--resume_from_checkpoint", "latest")) == 0
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not (stopped / LOCK_FILE).exists()  # the lock went with the run


def test_a_full_disk_keeps_latest_on_the_last_whole_checkpoint(tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    real_save, saves = Accelerator.save_state, {"n": 0}

    def save_until_the_disk_fills(self, output_dir=None, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            os.makedirs(output_dir, exist_ok=True)
            open(os.path.join(output_dir, "model.safetensors"), "wb").write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_until_the_disk_fills)
    out = tmp_path / "run"
    assert train_main(tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2")) == 2
    message = capsys.readouterr().err
    assert "Saving checkpoint-4 failed (No space left on device)" in message and "checkpoint-2" in message
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and not list(out.glob("*.tmp"))
    monkeypatch.undo()
    assert train_main(tiny_args(out, "--max_train_steps", "6", "--resume_from_checkpoint", "latest")) == 0


def test_a_second_run_on_a_locked_output_dir_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        assert train_main(tiny_args(out, "--max_train_steps", "2")) == 2
        message = capsys.readouterr().err
        assert f"in use by another run (process {sleeper.pid} on {socket.gethostname()}" in message
        assert not list(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its stale lock is taken over, and released at the end
    assert train_main(tiny_args(out, "--max_train_steps", "2")) == 0
    assert not (out / LOCK_FILE).exists()
    # a lock held on another host cannot be checked from here: refused, saying how to clear it
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-node", "started": "x"}))
    with pytest.raises(OutputDirInUse, match=f"remove {out / LOCK_FILE}"):
        RunLock(out).acquire()
