"""ddpm_pipeline.divergence: an outlier batch is trained through; a persistent jump, or a non-finite value, stops."""

import math

import pytest
import torch

from ddpm_pipeline.divergence import PERSISTENCE, WARMUP, DivergenceError, DivergenceGuard


def warmed_up() -> DivergenceGuard:
    guard = DivergenceGuard()
    for step in range(1, WARMUP + 5):
        guard.check_before_update(step, 0.05 + 0.001 * (step % 3), 0.5)
    return guard


def test_one_outlier_batch_is_suspicious_but_not_a_divergence():
    guard = warmed_up()
    history = list(guard.losses)
    guard.check_before_update(100, 1.15, 0.6)  # the bf16 run's outlier: 23x its median loss
    assert guard.suspicious and guard.outliers == 1 and "step 100: loss 1.15" in guard.jumps[0]
    assert list(guard.losses) == history  # the outlier stays out of the medians
    guard.check_before_update(101, 0.05, 0.5)
    assert not guard.suspicious and guard.losses[-1] == 0.05


def test_a_jump_that_persists_stops_the_run():
    guard = warmed_up()
    for step in range(200, 200 + PERSISTENCE - 1):
        guard.check_before_update(step, 5.0, 0.5)
    with pytest.raises(DivergenceError, match=f"persisted for {PERSISTENCE} steps in a row") as caught:
        guard.check_before_update(200 + PERSISTENCE - 1, 5.0, 0.5)
    assert "step 200: loss 5" in str(caught.value)


def test_gradient_norm_jumps_count_like_loss_jumps():
    guard = warmed_up()
    guard.check_before_update(300, 0.05, 80.0)  # 160x the median norm: suspicious
    assert guard.suspicious and "gradient norm 80" in guard.jumps[0]
    with pytest.raises(DivergenceError):
        for step in range(301, 301 + PERSISTENCE):
            guard.check_before_update(step, 0.05, 80.0)


@pytest.mark.parametrize("loss, grad_norm, words", [(math.nan, 0.5, "loss became nan"), (0.05, math.inf, "norm")])
def test_non_finite_values_stop_at_once(loss, grad_norm, words):
    with pytest.raises(DivergenceError, match=words):
        warmed_up().check_before_update(7, loss, grad_norm)


def test_weights_are_checked_after_the_update():
    guard = DivergenceGuard()
    weights = [torch.ones(10)]
    guard.check_after_update(1, weights)
    with pytest.raises(DivergenceError, match="blew the weights' norm up"):
        guard.check_after_update(2, [torch.ones(10) * 5])
    with pytest.raises(DivergenceError, match="infinite or NaN"):
        guard.check_after_update(3, [torch.tensor([1.0, math.inf])])
