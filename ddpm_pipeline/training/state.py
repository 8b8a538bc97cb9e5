"""A training run: its validated config (never changed), its components (built once) and where it stands."""

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..divergence import DivergenceGuard
from ..preemption import StopRequest
from ..training_config import TrainingConfig
from .components import Components
from .time_budget import TimeBudget


@dataclass(kw_only=True)
class RunState:
    """Everything the loop changes as it goes."""

    total_steps: int | None  # the run's length; None while a --time_budget run is measuring its speed
    lr_scheduler: object  # a function of the config, the length and the step: rebuilt when the length changes
    global_step: int = 0
    images_seen: int = 0
    started: float = 0.0  # perf_counter at the start of this process's training loop
    last_picture_epoch: int = -1
    checkpoint_held: bool = False  # a checkpoint came due on a suspicious step: save it at the next normal one
    resumed_from_step: int | None = None
    earlier_seconds: float | None = 0.0  # training seconds before the resumed checkpoint (None: it did not say)
    guard: DivergenceGuard = field(default_factory=DivergenceGuard)


@dataclass(kw_only=True)
class Run:
    config: TrainingConfig
    parts: Components
    state: RunState
    budget: TimeBudget | None = None  # --time_budget
    stop: StopRequest | None = None  # a stop signal, recorded while the run trains
    argv: list[str] | None = None  # the flags of this run, for the model card and the command that continues it
    resumes_from: Path | None = None  # the checkpoint it continues from: its own, or a cooldown branch's branch point

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def accumulation(self) -> int:
        return self.config.gradient_accumulation_steps

    @property
    def length_known(self) -> bool:
        return self.state.total_steps is not None

    def training_seconds(self) -> float:
        """The run's training-loop seconds so far, across resumes (this process's only, when a checkpoint it resumed
        from did not record the earlier ones)."""
        return (self.state.earlier_seconds or 0.0) + time.perf_counter() - self.state.started

    def saved_config(self) -> TrainingConfig:
        """The config as the run's folder records it: a budgeted run's length written in as max_train_steps."""
        if self.budget is None or self.state.total_steps is None:
            return self.config
        return self.config.with_values(max_train_steps=self.state.total_steps)
