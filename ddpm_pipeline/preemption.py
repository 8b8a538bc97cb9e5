"""Runs stop cleanly however they are asked, and never share an output folder.

A run is asked to stop by Ctrl-C (SIGINT) on a laptop, a closed terminal or SSH session (SIGHUP), a preemptible cloud
machine (SIGTERM before it is taken back), or SLURM (SIGTERM at the end of a job, or a chosen signal such as
``--signal=USR1@120`` shortly before its time limit). ``StopRequest`` records any of them (but not one the run was
started ignoring, as ``nohup`` ignores SIGHUP); the training loop finishes its step on every rank, writes a whole
checkpoint, releases the lock and exits with ``exit_code`` (130 for Ctrl-C, as shells expect; ``EXIT_PREEMPTED`` for the
others, so that schedulers requeue), printing the command that continues. A second Ctrl-C says that the save is under
way; a third abandons it (the last whole checkpoint stays: saves are atomic).

``RunLock`` keeps two runs out of one output folder: a second run is refused with the first one's process and host; a
lock left by a run that died (same host, no such process) is taken over.
"""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, resumable; schedulers can requeue on it
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell expects of a program stopped by Ctrl-C
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
LOCK_FILE = "run.lock"


class StopRequest:
    """Records a stop signal instead of dying mid-step; the training step tells every rank whether any was asked."""

    def __init__(self):
        self.signal_name: str | None = None
        self.interrupts = 0
        self.saving = False  # set while the stop's checkpoint is written
        self._previous = {}

    def install(self):
        """Catch the stop signals, except those this process was started ignoring: ``nohup`` ignores SIGHUP and a
        shell ignores SIGINT in background jobs, and a run started so must keep running when they arrive."""
        for number in STOP_SIGNALS:
            if signal.getsignal(number) == signal.SIG_IGN:
                continue
            self._previous[number] = signal.signal(number, self._record)
        return self

    def restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()

    def _record(self, number, frame):
        if number == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= 3:
                raise KeyboardInterrupt("a third Ctrl-C: the save was abandoned; the last whole checkpoint stays")
            if self.interrupts == 2:
                doing = "the checkpoint is being saved" if self.saving else "finishing this step, then saving it"
                print(f"\nStopping: {doing}. Press Ctrl-C once more to abandon the save (the last whole checkpoint "
                      "stays).", file=sys.stderr, flush=True)  # fmt: skip
        self.signal_name = self.signal_name or signal.Signals(number).name

    @property
    def asked(self) -> bool:
        """This process got a stop signal (the training step shares it with the other processes)."""
        return self.signal_name is not None

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_PREEMPTED


class OutputDirInUse(RuntimeError):
    """Another live run holds the output folder; the message names it."""


class RunLock:
    """``output_dir/run.lock`` with the holder's process id, host and start time."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE

    def acquire(self) -> "RunLock":
        if self.path.exists() and not self.path.is_file():
            raise OutputDirInUse(
                f"{self.path} is not a lock file (a run writes one there while it trains): remove it and run again."
            )
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
        """The lock's holder; None for no lock, or one that is unreadable or not a lock's (taken over: no run that
        holds a folder writes such a file)."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

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
