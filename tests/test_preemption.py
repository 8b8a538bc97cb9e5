"""Every way a run is asked to stop (Ctrl-C, SIGHUP, SIGTERM, SIGUSR1) ends with a whole checkpoint and a command
that continues it; a full disk keeps `latest` on the last whole checkpoint; two runs never share an output folder."""

import errno
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ddpm_pipeline.checkpointing import list_checkpoints
from ddpm_pipeline.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, LOCK_FILE, OutputDirInUse, RunLock, StopRequest
from ddpm_pipeline.training import step as training_step
from ddpm_pipeline.training.main import main as train_main
from tests.conftest import tiny_args


def weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


STOPS = [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGUSR1, EXIT_PREEMPTED),
         (signal.SIGHUP, EXIT_PREEMPTED)]  # fmt: skip


def printed_command(message: str) -> list[str]:
    """The flags of the command a stopped run printed (after `... train_ddpm.py`)."""
    line = next(line for line in message.splitlines() if "train_ddpm.py" in line)
    words = shlex.split(line)
    return words[words.index("train_ddpm.py") + 1 :]


COMMON = ["--max_train_steps", "8", "--checkpointing_steps", "0"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run the stopped ones must end up equal to."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train_main(tiny_args(out, *COMMON)) == 0
    return out


def handled_by(request, number, handler):
    """Give ``number`` this handler for this test, and the test process's own back after it."""
    inherited = signal.signal(number, handler)
    request.addfinalizer(lambda: signal.signal(number, inherited))
    return handler


def not_ignored(request, number):
    """Give ``number`` its default handler for this test: a run leaves alone a signal it was started ignoring (nohup's
    SIGHUP, a background job's SIGINT), so a suite run that way would otherwise not see it caught."""
    return handled_by(request, number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)


@pytest.mark.parametrize("signal_number, exit_code", STOPS, ids=[s.name for s, _ in STOPS])
def test_every_stop_signal_saves_the_step_and_the_printed_command_continues_exactly(
    straight, tmp_path, monkeypatch, capsys, request, signal_number, exit_code
):
    """The signal arrives during a random step of a run with periodic checkpoints off (sent by the process to itself,
    as a terminal or a scheduler would): the step finishes, a whole checkpoint of it is written, the lock is released,
    the run exits with the signal's code (130 for Ctrl-C) and prints a command; that command trains the same weights
    as a run that was never stopped."""
    at = random.Random(signal_number).randint(2, 7)
    real_loss, calls = training_step.training_losses, {"n": 0}

    def signalled(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal_number)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training_step, "training_losses", signalled)
    default = not_ignored(request, signal_number)
    stopped = tmp_path / "stopped"
    assert train_main(tiny_args(stopped, *COMMON)) == exit_code
    message = capsys.readouterr().err
    assert signal.Signals(signal_number).name in message and f"step {at} is saved" in message
    assert "Traceback" not in message and "KeyboardInterrupt" not in message
    assert [p.name for p in list_checkpoints(stopped)] == [f"checkpoint-{at}"]
    assert not (stopped / LOCK_FILE).exists()  # the lock went with the run
    assert signal.getsignal(signal_number) is default  # handlers restored
    monkeypatch.undo()
    command = printed_command(message)
    assert command[-2:] == ["--resume_from_checkpoint", "latest"]
    assert train_main(command) == 0
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("signal_number", [signal.SIGHUP, signal.SIGINT], ids=["SIGHUP", "SIGINT"])
def test_a_signal_the_run_was_started_ignoring_stays_ignored(request, signal_number):
    """`nohup` starts a run with SIGHUP ignored, a shell's background job with SIGINT ignored: a closed terminal must
    not stop it, so the run leaves those signals alone (and restores the others)."""
    not_ignored(request, signal.SIGTERM)
    handled_by(request, signal_number, signal.SIG_IGN)
    with StopRequest().install() as stop:
        assert signal.getsignal(signal_number) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stop._record
        os.kill(os.getpid(), signal_number)
        assert not stop.asked
    assert signal.getsignal(signal_number) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) != stop._record


def test_a_second_ctrl_c_says_the_save_is_under_way_and_a_third_abandons_it(capsys):
    stop = StopRequest()
    stop._record(signal.SIGINT, None)
    assert stop.asked and stop.exit_code == EXIT_INTERRUPTED and capsys.readouterr().err == ""
    stop.saving = True
    stop._record(signal.SIGINT, None)
    said = capsys.readouterr().err
    assert "checkpoint is being saved" in said and "once more to abandon" in said
    with pytest.raises(KeyboardInterrupt, match="last whole checkpoint stays"):
        stop._record(signal.SIGINT, None)


def test_a_stop_during_set_up_saves_nothing_and_says_so(tmp_path, monkeypatch, capsys, request):
    from ddpm_pipeline.training import loop

    not_ignored(request, signal.SIGINT)

    real_build = loop.build_components

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the data loads
        return real_build(*args, **kwargs)

    monkeypatch.setattr(loop, "build_components", interrupted)
    assert train_main(tiny_args(tmp_path / "run", "--max_train_steps", "4")) == EXIT_INTERRUPTED
    message = capsys.readouterr().err
    assert "during set-up: nothing was trained or saved" in message and "Traceback" not in message
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / LOCK_FILE).exists()


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


def test_a_second_run_on_a_locked_output_dir_is_refused_and_a_dead_runs_lock_is_taken_over(
    tmp_path, monkeypatch, capsys
):
    """The lock comes first: a busy folder is refused before the accelerator (process group), data or model are set
    up, so the answer takes seconds on a loaded machine, not the set-up's half minute."""
    from ddpm_pipeline.training import loop

    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        with monkeypatch.context() as patched:
            for name in ("setup_accelerator", "build_components"):
                patched.setattr(loop, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} ran before the lock"))
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
