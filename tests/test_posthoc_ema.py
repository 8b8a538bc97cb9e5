"""ddpm_pipeline.posthoc_ema against direct computations: the power profile's width, its weights, the average."""

import numpy as np
import pytest
import torch

from ddpm_pipeline.posthoc_ema import (
    SNAPSHOT_DIR,
    gamma_for_sigma_rel,
    list_snapshots,
    profile_weights,
    reconstruct,
    save_snapshot,
)


@pytest.mark.parametrize("sigma_rel", [0.03, 0.05, 0.1, 0.2, 0.28])
def test_gamma_gives_a_profile_of_that_relative_width(sigma_rel):
    """The profile p(s) = (gamma + 1) s^gamma on [0, 1] (the EMA at t = 1), integrated numerically: its standard
    deviation is sigma_rel (Karras et al. 2024 define sigma_rel as the width relative to t)."""
    if sigma_rel >= 0.28:
        with pytest.raises(ValueError, match="sigma_rel"):
            gamma_for_sigma_rel(sigma_rel)
        return
    gamma = gamma_for_sigma_rel(sigma_rel)
    s = np.linspace(0.0, 1.0, 2_000_001)
    density = (gamma + 1) * s**gamma
    mean = np.trapezoid(s * density, s)
    std = np.sqrt(np.trapezoid((s - mean) ** 2 * density, s))
    assert np.trapezoid(density, s) == pytest.approx(1.0, rel=1e-6)
    assert std == pytest.approx(sigma_rel, rel=1e-4)


def test_known_exponents_of_the_paper():
    # EDM2's table: gamma 16.97 gives sigma_rel 0.05, gamma 6.94 gives 0.10
    assert gamma_for_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_for_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)


def test_profile_weights_are_the_power_profile_at_the_snapshot_steps():
    steps = [100, 200, 300, 400]
    gamma = gamma_for_sigma_rel(0.1)
    direct = np.array([(step / 400) ** gamma for step in steps])
    weights = profile_weights(steps, 0.1)
    np.testing.assert_allclose(weights.numpy(), direct / direct.sum(), rtol=1e-12)
    assert torch.all(weights[1:] > weights[:-1])  # later weights count more


def test_reconstruct_is_the_weighted_average_of_the_snapshots(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    states = {}
    for step in (10, 20, 30):
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.normal_()
        states[step] = {k: v.clone() for k, v in module.state_dict().items()}
        save_snapshot(module, tmp_path / SNAPSHOT_DIR, step)
    assert [step for step, _ in list_snapshots(tmp_path / SNAPSHOT_DIR)] == [10, 20, 30]
    assert not list((tmp_path / SNAPSHOT_DIR).glob("*.tmp"))  # written by rename: no half files left
    weights = profile_weights([10, 20, 30], 0.15).tolist()
    averaged = reconstruct(tmp_path, 0.15)
    for name in states[10]:
        direct = sum(w * states[step][name].double() for w, step in zip(weights, (10, 20, 30)))
        torch.testing.assert_close(averaged[name], direct.float())


def test_a_run_without_snapshots_says_which_flag_keeps_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="--weight_snapshot_steps"):
        reconstruct(tmp_path, 0.1)
