"""ddpm_pipeline.batch_plan: the data order and randomness as a pure function of (seed, micro-batch)."""

import pytest
import torch

from ddpm_pipeline.batch_plan import BatchPlan


def test_ranks_draw_different_noise_and_images_and_add_up_to_one_process():
    plans = [BatchPlan(seed=0, batch_size=16, num_images=1000, num_processes=2, process_index=rank) for rank in (0, 1)]
    noise = [plan.randomness(7, (1, 28, 28), 50, 0.1).noise for plan in plans]
    indices = [plan.indices(7) for plan in plans]
    assert not torch.equal(noise[0], noise[1])
    assert not set(indices[0].tolist()) & set(indices[1].tolist())
    single = BatchPlan(seed=0, batch_size=32, num_images=1000)
    torch.testing.assert_close(single.randomness(7, (1, 28, 28), 50, 0.1).noise, torch.cat(noise))
    assert torch.equal(single.indices(7), torch.cat(indices))


def test_a_micro_batch_is_the_same_whenever_it_is_asked_for():
    plan = BatchPlan(seed=3, batch_size=10, num_images=100)
    late = [plan.indices(m) for m in (25, 3, 14)]
    fresh = BatchPlan(seed=3, batch_size=10, num_images=100)
    assert all(torch.equal(a, fresh.indices(m)) for a, m in zip(late, (25, 3, 14)))
    a, b = plan.randomness(11, (1, 4, 4), 50, 0.5), fresh.randomness(11, (1, 4, 4), 50, 0.5)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("noise", "timesteps", "drop_labels"))
    other_seed = BatchPlan(seed=4, batch_size=10, num_images=100)
    assert not torch.equal(other_seed.randomness(11, (1, 4, 4), 50, 0.5).noise, a.noise)


def test_timesteps_come_with_their_importance_weights():
    uniform = BatchPlan(seed=0, batch_size=64, num_images=1000).randomness(0, (1, 4, 4), 50, 0.1)
    assert uniform.vlb_importance is None  # uniform t: T * L_t is already unbiased
    probabilities = torch.softmax(torch.linspace(-2, 2, 50), 0)
    plan = BatchPlan(seed=0, batch_size=64, num_images=1000, timestep_probabilities=probabilities)
    drawn = plan.randomness(0, (1, 4, 4), 50, 0.1)
    expected = torch.tensor([1.0 / (50 * probabilities[t].item()) for t in drawn.timesteps.tolist()])
    torch.testing.assert_close(drawn.vlb_importance, expected)
    ranks = [
        BatchPlan(0, 32, 1000, 2, rank, timestep_probabilities=probabilities).randomness(0, (1, 4, 4), 50, 0.1)
        for rank in (0, 1)
    ]  # each rank's weights belong to its own slice of timesteps
    torch.testing.assert_close(torch.cat([r.vlb_importance for r in ranks]), drawn.vlb_importance)


def test_each_epoch_is_a_permutation():
    plan = BatchPlan(seed=0, batch_size=10, num_images=100)
    for epoch in range(3):
        seen = torch.cat([plan.indices(epoch * 10 + m) for m in range(10)])
        assert sorted(seen.tolist()) == list(range(100))
    assert plan.epoch_of(9) == 0 and plan.epoch_of(10) == 1


def test_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(ValueError, match="larger than the 100 training images"):
        BatchPlan(seed=0, batch_size=64, num_images=100, num_processes=2)
