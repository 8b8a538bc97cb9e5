"""--time_budget: a run that trains for a length of time rather than a number of steps.

The run's length in steps is what the schedule needs, so the budget is turned into steps from the measured speed:
first at the end of the warm-up (whose learning rates do not depend on the length), then again every few steps while
the learning rate is still constant (wsd's stable phase), from the median of the recent steps, so that a machine that
slows down or speeds up mid-run still ends near its budget. Once the cooldown starts the length is final: the
cooldown's rates depend on it. Every decision is rank 0's, broadcast, and logged.
"""

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

CALIBRATION_SKIP = 2  # steps not timed at the start (compilation, allocator warm-up)
CALIBRATION_STEPS = 20  # the first plan comes here, or at the end of the learning-rate warm-up if that is sooner
MAX_WINDOW = 50  # steps in the rolling measure of speed, at most ...
MIN_WINDOW = 10  # ... and at least; in between, a twentieth of the planned run, so that a short run reacts in time
REPLAN_TOLERANCE = 0.01  # a new plan within 1 % (or 2 steps) of the current one is not worth a new schedule
REPLAN_MIN_STEPS = 2


def now() -> float:
    """The budget's clock (tests give a run a clock of their own by replacing this)."""
    return time.perf_counter()


class BudgetTooShort(ValueError):
    """The budget allows fewer steps than the learning-rate warm-up."""


class TimeBudget:
    """Owns a budgeted run's length: ``planned_steps`` is None until the speed is known.

    ``spent`` is the budget's seconds used before this process started (a resumed run); ``decide`` (in
    ``after_step``) turns rank 0's number into every rank's (a broadcast on several processes)."""

    def __init__(
        self,
        seconds: float,
        warmup_steps: int,
        cooldown_steps: Callable[[int], int],
        clock: Callable[[], float] | None = None,
    ):
        self.seconds = seconds
        self.warmup_steps = warmup_steps
        self.cooldown_steps = cooldown_steps  # the cooldown's length for a run of n steps
        self.clock = clock or now
        self.spent = 0.0
        self.planned_steps: int | None = None
        self.started = self.clock()
        self.step_ends: deque[float] = deque(maxlen=MAX_WINDOW + 1)
        self.replans = 0

    def start(self):
        """The training loop starts now (set-up and resume are not training time)."""
        self.started = self.clock()
        self.step_ends.clear()

    @property
    def elapsed(self) -> float:
        return self.spent + self.clock() - self.started

    @property
    def window(self) -> int:
        """How many recent steps the speed is measured over."""
        if self.planned_steps is None:
            return MAX_WINDOW
        return max(MIN_WINDOW, min(MAX_WINDOW, self.planned_steps // 20))

    def final(self, step: int) -> bool:
        """The length can no longer change: the cooldown (whose rates depend on it) has started."""
        if self.planned_steps is None:
            return False
        return step >= self.planned_steps - self.cooldown_steps(self.planned_steps)

    def after_step(self, step: int, decide: Callable[[int], int] = int) -> int | None:
        """Record the end of ``step``; return a new planned length when one is made, else None. Whether a plan is
        made depends on the step and the plan alone, so every process calls ``decide`` at the same steps."""
        first = min(self.warmup_steps, CALIBRATION_STEPS)
        if step >= CALIBRATION_SKIP:
            self.step_ends.append(self.clock())
        if len(self.step_ends) < 3:
            return None
        if self.planned_steps is None:
            if step < first:
                return None
        elif self.final(step) or (step - first) % max(1, self.window // 2):
            return None
        ends = list(self.step_ends)[-(self.window + 1) :]
        seconds_per_step = statistics.median(b - a for a, b in zip(ends, ends[1:]))
        remaining = self.seconds - self.elapsed
        steps = decide(step + max(0, round(remaining / seconds_per_step)))
        if self.planned_steps is None:
            return self._first_plan(step, steps, seconds_per_step, remaining)
        steps = max(steps, step + self.cooldown_steps(steps) + 1)  # a re-plan never lands inside its own cooldown
        if abs(steps - self.planned_steps) <= max(REPLAN_MIN_STEPS, REPLAN_TOLERANCE * self.planned_steps):
            return None
        self.replans += 1
        logger.info(
            "Time budget %.4g s: now %.4g s per step (median of the last %d), %.0f s left at step %d: re-planned "
            "from %d to %d steps.", self.seconds, seconds_per_step, len(ends) - 1, remaining, step,
            self.planned_steps, steps,
        )  # fmt: skip
        self.planned_steps = steps
        return steps

    def _first_plan(self, step: int, steps: int, seconds_per_step: float, remaining: float) -> int:
        if steps < self.warmup_steps or remaining <= 0:
            raise BudgetTooShort(
                f"at {seconds_per_step:.3g} s per step here the budget allows {steps} steps, and the learning-rate "
                f"warm-up alone takes {self.warmup_steps}"
            )
        logger.info(
            "Time budget %.4g s: %.4g s per step over steps %d-%d here, so %d steps in all.",
            self.seconds, seconds_per_step, step - len(self.step_ends) + 2, step, steps,
        )  # fmt: skip
        self.planned_steps = steps
        return steps
