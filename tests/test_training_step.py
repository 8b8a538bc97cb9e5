"""The training step as an accelerator sees it: how often it waits for the device, and fp16's gradient scaler.

No GPU here, so both are checked on the CPU: a TorchDispatchMode counts every scalar read (``.item()``, ``float()``,
``bool()`` of a tensor dispatch ``aten._local_scalar_dense``) plus ``tolist``/``numpy`` read-backs, and flags float64
arithmetic; a ``torch.amp.GradScaler("cpu")`` with a huge initial scale forces the overflows a T4 or V100 meets.
"""

import collections
import contextlib
import math

import pytest
import torch
from accelerate.state import AcceleratorState
from torch.utils._python_dispatch import TorchDispatchMode

from ddpm_pipeline import divergence
from ddpm_pipeline.divergence import MAX_SKIPPED_STEPS
from ddpm_pipeline.training import loop, processes
from ddpm_pipeline.training import step as training_step
from ddpm_pipeline.training.config_checks import parse_args
from ddpm_pipeline.training.processes import MainProcessFailed
from ddpm_pipeline.training.recovery import TrainingDivergedError
from tests.conftest import tiny_args, tiny_pipeline

MAX_READS_PER_STEP = 2  # the losses with the gradient norm; the weights' norm after the update


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each test makes its own Accelerator (fp16 here, bf16 or no there): Accelerate's state is per process."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


class DeviceReads(TorchDispatchMode):
    """Counts the reads of tensor values back to the host, and the ops that compute in float64."""

    def __init__(self):
        super().__init__()
        self.reads = 0
        self.float64_ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            self.float64_ops[str(func)] += 1
        return out


@contextlib.contextmanager
def counting_reads(monkeypatch):
    """DeviceReads, with ``Tensor.tolist`` and ``Tensor.numpy`` (which read without dispatching) counted too."""
    mode = DeviceReads()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            mode.reads += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with mode:
        yield mode
    monkeypatch.undo()


def test_a_default_training_step_reads_the_device_at_most_twice(tmp_path, monkeypatch):
    # the default recipe (learned variance, class labels with dropout, EMA, clipping, the divergence guard)
    run = loop.build_run(parse_args(["--output_dir", str(tmp_path), "--logger", "none"]))
    training_step.optimizer_step(run)  # the first step casts the schedule's tables for the device, once
    before = [p.detach().clone() for p in run.parts.unet.parameters()]
    with counting_reads(monkeypatch) as reads:
        totals = training_step.optimizer_step(run)
    assert reads.reads <= MAX_READS_PER_STEP, f"{reads.reads} reads of the device in one step"
    assert not reads.float64_ops, f"float64 arithmetic in the training step: {dict(reads.float64_ops)}"
    # the step still did its work: it trained, and its numbers came back
    assert any(not torch.equal(a, b) for a, b in zip(before, run.parts.unet.parameters()))
    assert totals.loss > 0 and totals.grad_norm > 0 and totals.weight_norm > 0
    assert totals.stop_requested is False


def test_sampling_reads_do_not_grow_with_the_number_of_steps(monkeypatch):
    pipe = tiny_pipeline()
    counts = {}
    for steps in (4, 12):
        with counting_reads(monkeypatch) as reads:
            pipe(batch_size=4, num_inference_steps=steps, guidance_scale=2.0, output_type="pt")
        counts[steps] = reads.reads
    assert counts[4] == counts[12], counts


# ---------------------------------------------------------------------------------------------------- fp16 scaler
def with_cpu_grad_scaler(monkeypatch, **scaler_kwargs):
    """Make the run's Accelerator do what it does for fp16 on a GPU: float16 autocast and a GradScaler."""
    original = loop.setup_accelerator

    def setup(config):
        accelerator, precision = original(config)
        accelerator.native_amp = True  # accelerate's autocast and unscaling then act as on a GPU with fp16
        accelerator.scaler = torch.amp.GradScaler("cpu", **scaler_kwargs)
        return accelerator, precision

    monkeypatch.setattr(loop, "setup_accelerator", setup)


def fp16_run(tmp_path):
    config = parse_args(tiny_args(tmp_path, "--mixed_precision", "fp16", "--max_train_steps", "100"))
    run = loop.build_run(config)
    assert run.parts.accelerator.mixed_precision == "fp16" and run.parts.accelerator.scaler is not None
    return run


def test_scaler_overflows_are_skipped_steps_not_a_divergence(tmp_path, monkeypatch):
    # 2^100 overflows float16 gradients at once; the scaler lowers it 2^20 at a time until they fit
    with_cpu_grad_scaler(monkeypatch, init_scale=2.0**100, backoff_factor=2.0**-20)
    run = fp16_run(tmp_path)
    weights = [p.detach().clone() for p in run.parts.unet.parameters()]
    skipped = 0
    while True:
        totals = training_step.optimizer_step(run)
        unchanged = all(torch.equal(a, b) for a, b in zip(weights, run.parts.unet.parameters()))
        if not unchanged:
            break
        assert not math.isfinite(totals.grad_norm)  # an overflow: the update was skipped, the weights kept
        skipped += 1
    assert 1 <= skipped < MAX_SKIPPED_STEPS
    assert run.parts.accelerator.scaler.get_scale() <= 2.0 ** (100 - 20 * skipped)
    assert run.state.guard.skipped_in_a_row == 0 and run.state.global_step == skipped + 1
    for _ in range(3):  # training goes on, with finite gradients
        assert math.isfinite(training_step.optimizer_step(run).grad_norm)


def test_overflows_at_every_scale_stop_the_run_and_say_so(tmp_path, monkeypatch):
    with_cpu_grad_scaler(monkeypatch, init_scale=2.0**100, backoff_factor=0.999)  # the scale barely comes down
    monkeypatch.setattr(divergence, "MAX_SKIPPED_STEPS", 4)  # the real limit (30) takes longer to reach
    run = fp16_run(tmp_path)
    with pytest.raises(TrainingDivergedError, match="skipped 4 steps in a row") as stopped:
        for _ in range(5):
            training_step.optimizer_step(run)
    assert "overflow however far they are scaled down" in str(stopped.value)
    assert run.state.global_step == 3  # the fourth skipped step stopped the run


def test_a_nan_loss_with_a_scaler_still_stops_at_once(tmp_path, monkeypatch):
    with_cpu_grad_scaler(monkeypatch, init_scale=2.0**8)
    run = fp16_run(tmp_path)
    training_step.optimizer_step(run)
    run.parts.images.zero_()  # keep the shapes; poison the model's output instead
    with torch.no_grad():
        next(run.parts.unet.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="the loss became nan"):
        training_step.optimizer_step(run)


# ---------------------------------------------------------------------------------------------------- main-only work
class FakeAccelerator:
    def __init__(self, is_main_process: bool, num_processes: int = 2):
        self.is_main_process, self.num_processes = is_main_process, num_processes


def on_main(run, work):
    processes.on_main_process(run.accelerator, work, run.config.num_cpu_threads)


class FakeRun:
    def __init__(self, is_main_process: bool, threads: int | None = None):
        self.accelerator = FakeAccelerator(is_main_process)
        flags = ["--num_cpu_threads", str(threads)] if threads else []
        self.config = parse_args(["--logger", "none", *flags])


def test_a_failure_of_main_only_work_stops_every_process(monkeypatch):
    sent = []

    def broadcast(objects, from_process):  # what the main process sends, as every rank receives it
        sent.append(objects[0])
        return [sent[0]]

    monkeypatch.setattr(processes, "broadcast_object_list", broadcast)

    def failing_push():
        raise OSError("the Hub refused the upload")

    with pytest.raises(OSError, match="refused"):  # the main process: its own error
        on_main(FakeRun(is_main_process=True), failing_push)
    ran = []
    with pytest.raises(MainProcessFailed, match="OSError: the Hub refused the upload"):
        on_main(FakeRun(is_main_process=False), lambda: ran.append(1))
    assert not ran  # the other ranks never do main-only work
    sent.clear()
    on_main(FakeRun(is_main_process=False), lambda: None)  # success: every rank goes on


def test_main_only_work_gets_every_core_and_gives_them_back(monkeypatch):
    monkeypatch.setattr(processes, "broadcast_object_list", lambda objects, from_process: objects)
    monkeypatch.setattr(processes, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(1)  # as `accelerate launch` leaves a process on a GPU machine
        on_main(FakeRun(is_main_process=True), lambda: seen.append(torch.get_num_threads()))
        assert seen == [4] and torch.get_num_threads() == 1
        on_main(FakeRun(True, threads=2), lambda: seen.append(torch.get_num_threads()))
        assert seen[-1] == 2  # --num_cpu_threads is respected
    finally:
        torch.set_num_threads(before)


def test_value_checks_in_the_step_raise_value_errors_without_reading_back(pipe):
    from ddpm_pipeline.unet_mnist import _require

    with pytest.raises(ValueError, match="some timesteps"):
        pipe.scheduler.variational_bound_terms(
            torch.zeros(1, 2, 28, 28), torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28), torch.tensor([50])
        )
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 9\]"):
        pipe.unet.train()(torch.zeros(1, 1, 28, 28), 3, torch.tensor([-1]))
    with DeviceReads() as reads:
        _require(torch.tensor([1, 2]).gt(0).all(), "never shown")
    assert reads.reads == 0
