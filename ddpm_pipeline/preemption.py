"""Runs that outgrow the laptop: stop cleanly when the cluster asks, and never share an output folder.

Preemptible cloud machines send SIGTERM before they take a machine back; SLURM sends SIGTERM at the end of a job, or a
chosen signal (``--signal=USR1@120``) shortly before its time limit, and requeues the job. ``StopRequest`` records
either signal; the training loop finishes its step on every rank, writes a whole checkpoint and exits with
``EXIT_PREEMPTED``, so that the requeued command with ``--resume_from_checkpoint latest`` continues exactly.

``RunLock`` keeps two runs out of one output folder: a second run is refused with the first one's process and host; a
lock left by a run that died (same host, no such process) is taken over.
"""

import json
import os
import signal
import socket
import time
from pathlib import Path

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, resumable; schedulers can requeue on it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LOCK_FILE = "run.lock"


class StopRequest:
    """Records SIGTERM / SIGUSR1 instead of dying mid-step; the training step tells every rank whether any was asked."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def install(self):
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._record)
        return self

    def restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _record(self, number, frame):
        self.signal_name = signal.Signals(number).name

    @property
    def asked(self) -> bool:
        """This process got a stop signal (the training step shares it with the other processes)."""
        return self.signal_name is not None


class OutputDirInUse(RuntimeError):
    """Another live run holds the output folder; the message names it."""


class RunLock:
    """``output_dir/run.lock`` with the holder's process id, host and start time."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE

    def acquire(self) -> "RunLock":
        holder = self._holder()
        if holder is not None and self._alive(holder):
            raise OutputDirInUse(
                f"{self.path.parent} is in use by another run (process {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')}). Wait for it, stop it, or give another "
                f"--output_dir; if that run is gone (another machine), remove {self.path}."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}")
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        temporary.write_text(json.dumps(mine))
        os.replace(temporary, self.path)  # a stale lock is taken over in one step
        return self

    def release(self):
        holder = self._holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict) -> bool:
        """Another host's run cannot be checked from here: it counts as alive. On this host: is the process there?"""
        if holder.get("host") != socket.gethostname():
            return True
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's live process
            return True
        return True
