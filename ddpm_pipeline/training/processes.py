"""The processes a run trains on: the Accelerator and its precision, CPU threads, and work only the main one does."""

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, parse_flag_from_env

from ..cpu_allocator import keep_freed_memory
from ..hardware import PrecisionChoice, choose_precision, use_deterministic_kernels
from ..training_config import TrainingConfig

logger = logging.getLogger(__name__)


class MainProcessFailed(RuntimeError):
    """Work that only the main process does (pictures, evaluation, a push) failed there; the other processes stop."""


def is_main_launch_process() -> bool:
    """Rank 0 as the launcher numbered it, known before any process group exists (no launcher: the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_accelerator(config: TrainingConfig) -> tuple[Accelerator, PrecisionChoice]:
    """The Accelerator, with ``mixed_precision: auto`` resolved for the device it will train on (and logged why)."""
    # the device Accelerate will train on; ACCELERATE_USE_CPU as AcceleratorState reads it, so that the process
    # state made here is the one the Accelerator then uses (several CPU processes included)
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    precision = choose_precision(config.mixed_precision, device)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=precision.mixed_precision,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logger.info(
        "Mixed precision %s -> %s (%s): %s.",
        config.mixed_precision,
        precision.mixed_precision,
        str(precision.dtype).removeprefix("torch."),
        precision.reason,
    )
    if precision.warning:
        logger.warning(precision.warning)
    return accelerator, precision


def setup_device(accelerator: Accelerator, config: TrainingConfig):
    """On a GPU: deterministic kernels (hardware.use_deterministic_kernels). On a CPU: one thread per core shared
    among the processes, and freed memory kept in the process."""
    if config.deterministic_kernels and use_deterministic_kernels(accelerator.device):
        logger.info("Deterministic CUDA kernels: so that a resumed run can repeat an unstopped one bit for bit.")
    if accelerator.device.type != "cpu":
        return
    # `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves a 2-core laptop.
    threads = config.num_cpu_threads or max(1, available_cores() // accelerator.state.num_processes)
    torch.set_num_threads(threads)
    logger.info("Using %d CPU thread(s) per process.", threads)
    if config.keep_freed_memory and keep_freed_memory():
        logger.info("Keeping freed memory in the process (glibc mallopt): no page faults on each step's buffers.")


def share_from_main(accelerator: Accelerator, value):
    """Rank 0's ``value`` on every rank (itself on one process)."""
    if accelerator.num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def on_main_process(accelerator: Accelerator, work, threads: int | None = None):
    """``work()`` on the main process, with every CPU core, while the other processes wait; they then learn whether
    it failed, and stop with it instead of waiting at the next barrier until the process group times out."""
    failure = None
    if accelerator.is_main_process:
        with all_cpu_cores(threads):
            try:
                work()
            except Exception as error:
                failure = error
    what = share_from_main(accelerator, None if failure is None else f"{type(failure).__name__}: {failure}")
    if what is not None and failure is None:
        raise MainProcessFailed(f"the main process failed ({what}); this process stops with it.")
    if failure is not None:
        raise failure


@contextlib.contextmanager
def all_cpu_cores(threads: int | None = None):
    """Every core of this machine's CPU (or ``threads``, --num_cpu_threads) for torch while the other processes wait:
    the launcher may have lowered the threads to one per process, or to one on a GPU machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or max(before, available_cores()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def log_image(accelerator: Accelerator, name: str, image, step: int):
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(image)[None], step, dataformats="CHW")
