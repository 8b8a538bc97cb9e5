"""Stop a diverging run before its bad state is applied or saved, without stopping a healthy run for one odd batch.

A NaN loss is the late symptom. The step before it often has a finite loss and an explosive update (weights at 1e30),
and a checkpoint written then holds nothing to resume from. So every step is checked twice:

- before the update: the loss and the gradient norm are finite (else stop at once), and neither jumps far above its
  recent median. A jump is *suspicious*: the (clipped) update goes ahead, the outlier stays out of the medians, and
  only a jump that persists for ``PERSISTENCE`` steps in a row stops the run. One bad batch is not a divergence: a
  long bf16 run met a single batch at 20x its median loss and trained on at its usual loss;
- after the update (before EMA and any save): every weight is finite and the weights' norm did not jump (else stop
  at once).

While a step is suspicious, ``suspicious`` is True and the training loop holds back checkpoints, so that a state
from the start of a real divergence is never saved.

The thresholds are far outside what a healthy run shows (measured on the default run: the gradient norm moves by less
than 10x between neighbouring steps after the first few, the loss by less than 3x, the weight norm by under 1%).
"""

import math
from collections import deque

import torch

LOSS_JUMP = 20.0  # a step's loss above 20x the recent median
GRAD_NORM_JUMP = 100.0  # a gradient norm above 100x the recent median
WEIGHT_NORM_JUMP = 4.0  # the weights' norm growing 4x in one step
HISTORY = 50  # recent steps the medians are taken over
WARMUP = 10  # steps of history before jumps are judged
PERSISTENCE = 3  # consecutive jumping steps that make a divergence
MAX_SKIPPED_STEPS = 30  # fp16: consecutive steps the gradient scaler skips (its scale divided by 2^30) before a stop


class DivergenceError(RuntimeError):
    """The run is diverging; the message says at which step and what was seen."""


def _median(values) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class DivergenceGuard:
    """Keeps the recent losses and gradient norms, and judges each step against them."""

    def __init__(self):
        self.losses: deque[float] = deque(maxlen=HISTORY)
        self.grad_norms: deque[float] = deque(maxlen=HISTORY)
        self.weight_norm: float | None = None
        self.jumps: list[str] = []  # what each step of the current run of jumping steps showed
        self.outliers = 0  # suspicious steps the run trained through
        self.skipped_in_a_row = 0  # fp16: steps the gradient scaler skipped since the last update

    @property
    def suspicious(self) -> bool:
        """The last step jumped: hold back checkpoints until a normal step."""
        return bool(self.jumps)

    def check_before_update(self, step: int, loss: float, grad_norm: float):
        """Raise DivergenceError if the loss or gradient norm of ``step`` is not finite, or if it jumped far above its
        recent median for ``PERSISTENCE`` steps in a row; a shorter jump is recorded as suspicious."""
        if not math.isfinite(loss):
            raise DivergenceError(f"the loss became {loss} at step {step}")
        if not math.isfinite(grad_norm):
            raise DivergenceError(f"the gradient norm became {grad_norm} at step {step} (loss {loss:.4g})")
        self.skipped_in_a_row = 0
        jump = self._jump(loss, grad_norm)
        if jump is None:
            self.jumps = []
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)
            return
        self.jumps.append(f"step {step}: {jump}")
        if len(self.jumps) >= PERSISTENCE:
            raise DivergenceError(f"a jump persisted for {len(self.jumps)} steps in a row ({'; '.join(self.jumps)})")
        self.outliers += 1

    def _jump(self, loss: float, grad_norm: float) -> str | None:
        """What jumped above its recent median, or None (also before WARMUP steps of history)."""
        if len(self.losses) < WARMUP:
            return None
        if loss > LOSS_JUMP * _median(self.losses):
            return f"loss {loss:.4g}, over {LOSS_JUMP:g}x its recent median {_median(self.losses):.4g}"
        if grad_norm > GRAD_NORM_JUMP * _median(self.grad_norms):
            return (
                f"gradient norm {grad_norm:.4g}, over {GRAD_NORM_JUMP:g}x its recent median "
                f"{_median(self.grad_norms):.4g}"
            )
        return None

    def record_skipped_step(self, step: int, scale: float):
        """fp16: the gradient scaler skipped ``step`` (its gradients overflowed; the loss was finite) and lowered its
        scale to ``scale``. That is how the scaler finds its scale; raise DivergenceError only when it keeps
        skipping for ``MAX_SKIPPED_STEPS`` steps in a row, so that the gradients overflow at any scale."""
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
            raise DivergenceError(
                f"the gradient scaler skipped {self.skipped_in_a_row} steps in a row up to step {step} (its scale is "
                f"now {scale:.3g}): the gradients overflow however far they are scaled down, though the loss is finite"
            )

    def check_after_update(self, step: int, parameters) -> None:
        """Raise DivergenceError if the update left a weight non-finite or blew up the weights' norm."""
        # one fused norm, read once: also non-finite when any weight is
        norms = torch._foreach_norm([p.detach() for p in parameters])
        norm = float(torch.linalg.vector_norm(torch.stack(norms).float()))
        if not math.isfinite(norm):
            raise DivergenceError(f"the update of step {step} made some weights infinite or NaN")
        if self.weight_norm is not None and norm > WEIGHT_NORM_JUMP * max(self.weight_norm, 1e-12):
            raise DivergenceError(
                f"the update of step {step} blew the weights' norm up from {self.weight_norm:.4g} to {norm:.4g}"
            )
        self.weight_norm = norm


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
