"""ddpm_pipeline.losses: the prediction target of each type, L_simple and the hybrid loss."""

import pytest
import torch

from ddpm_pipeline import CosineDDPMScheduler, MnistUNet
from ddpm_pipeline.losses import diffusion_loss, prediction_target


def test_hybrid_loss_parts_and_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    scheduler = CosineDDPMScheduler(num_train_timesteps=100)
    unet = MnistUNet(block_out_channels=(16, 32, 32), attention_head_dim=16, norm_num_groups=4)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    x0 = torch.rand(16, 1, 28, 28) * 2 - 1
    noise, t = torch.randn_like(x0), torch.randint(0, 100, (16,))
    noisy = scheduler.add_noise(x0, noise, t)
    history = []
    for _ in range(30):
        losses = diffusion_loss(unet(noisy, t).sample, scheduler, x0, noise, noisy, t, vlb_weight=0.001)
        assert torch.allclose(losses.loss, losses.simple + 0.001 * losses.vlb)
        optimizer.zero_grad()
        losses.loss.backward()
        optimizer.step()
        history.append(losses.loss.item())
    assert history[-1] < 0.5 * history[0]


def test_vlb_term_trains_only_the_variance():
    scheduler = CosineDDPMScheduler(num_train_timesteps=100)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([1, 10, 50, 99])
    noisy = scheduler.add_noise(x0, noise, t)
    output = torch.randn(4, 2, 8, 8, requires_grad=True)
    losses = diffusion_loss(output, scheduler, x0, noise, noisy, t, vlb_weight=1.0)
    losses.vlb.backward()
    assert output.grad[:, :1].abs().sum() == 0 and output.grad[:, 1:].abs().sum() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_trains_against_its_own_target(prediction_type):
    """Targets computed by hand from the cosine schedule: eps, v = sqrt(abar) eps - sqrt(1 - abar) x_0, and x_0."""
    scheduler = CosineDDPMScheduler(
        num_train_timesteps=100, variance_type="fixed_small", prediction_type=prediction_type
    )
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([0, 40, 90])

    def f(u):  # Nichol & Dhariwal's cosine: abar for 0-based timestep t is f((t + 1) / T) / f(0)
        return torch.cos((u + 0.008) / 1.008 * torch.pi / 2).double() ** 2

    abar = (f((t + 1) / 100) / f(torch.tensor(0.0))).reshape(-1, 1, 1, 1)
    by_hand = {
        "epsilon": noise,
        "v_prediction": (abar.sqrt() * noise - (1 - abar).sqrt() * x0).float(),
        "sample": x0,
    }[prediction_type]
    torch.testing.assert_close(prediction_target(scheduler, x0, noise, t), by_hand, atol=1e-5, rtol=1e-5)
    noisy = scheduler.add_noise(x0, noise, t)
    perfect = diffusion_loss(by_hand.clone(), scheduler, x0, noise, noisy, t)
    assert perfect.simple.item() < 1e-10 and perfect.vlb.item() == 0
    others = [kind for kind in ("epsilon", "v_prediction", "sample") if kind != prediction_type]
    for other in others:  # the loss is not satisfied by another type's target
        wrong = prediction_target(CosineDDPMScheduler(num_train_timesteps=100, prediction_type=other), x0, noise, t)
        assert diffusion_loss(wrong, scheduler, x0, noise, noisy, t).simple.item() > 1e-3


def test_an_unknown_prediction_type_is_refused():
    scheduler = CosineDDPMScheduler(num_train_timesteps=10)
    scheduler.register_to_config(prediction_type="velocity")  # past the scheduler's own check
    x0 = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="velocity"):
        prediction_target(scheduler, x0, x0, torch.tensor([1]))
