"""ddpm_pipeline.losses: the prediction target of each type, L_simple and the hybrid loss."""

import pytest
import torch

from ddpm_pipeline import CosineDDPMScheduler, MnistUNet
from ddpm_pipeline.losses import diffusion_loss, prediction_target

pytestmark = pytest.mark.numerics  # the maths against diffusers' oracle: also run with kernels held to AVX2


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


def test_training_losses_noises_drops_labels_and_weights_the_bound():
    """The one objective against a direct computation: x_t by diffusers' own add_noise on the same cosine schedule,
    dropped labels sent to the null class, and the bound weighted by the plan's importance weights."""
    from diffusers import DDPMScheduler

    from ddpm_pipeline.batch_plan import BatchRandomness
    from ddpm_pipeline.losses import training_losses

    torch.manual_seed(0)
    scheduler = CosineDDPMScheduler(num_train_timesteps=100)
    oracle = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    randomness = BatchRandomness(
        noise=torch.randn(4, 1, 8, 8),
        timesteps=torch.tensor([0, 10, 50, 99]),
        drop_labels=torch.tensor([True, False, True, False]),
        vlb_importance=torch.tensor([0.5, 1.0, 2.0, 4.0]),
    )
    seen = {}
    output = torch.randn(4, 2, 8, 8)

    class Recorder(torch.nn.Module):
        def forward(self, sample, timesteps, class_labels):
            seen.update(sample=sample, timesteps=timesteps, class_labels=class_labels)
            return type("Out", (), {"sample": output})()

    labels = torch.tensor([3, 4, 5, 6])
    losses = training_losses(Recorder(), scheduler, x0, labels, randomness, null_class=10, vlb_weight=0.01)
    expected_noisy = oracle.add_noise(x0, randomness.noise, randomness.timesteps)
    torch.testing.assert_close(seen["sample"], expected_noisy, atol=2e-5, rtol=0)
    assert seen["class_labels"].tolist() == [10, 4, 10, 6] and torch.equal(seen["timesteps"], randomness.timesteps)
    direct = diffusion_loss(
        output, scheduler, x0, randomness.noise, seen["sample"], randomness.timesteps, vlb_weight=0.01
    )
    torch.testing.assert_close(losses.simple, direct.simple)
    terms = scheduler.variational_bound_terms(output, x0, seen["sample"], randomness.timesteps, stop_mean_gradient=True)
    torch.testing.assert_close(losses.vlb, (terms * randomness.vlb_importance).mean() * 100)
    torch.testing.assert_close(losses.loss, losses.simple + 0.01 * losses.vlb)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_are_float32_from_a_float64_computation(prediction_type):
    """min(SNR, gamma) per prediction type, by hand in float64 from the cosine schedule, handed over as float32 (an
    mps device has no float64; the tables stay on the CPU)."""
    from ddpm_pipeline.losses import min_snr_weights

    scheduler = CosineDDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    t = torch.tensor([0, 10, 500, 999])
    abar = scheduler.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=5.0)
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
    weights = min_snr_weights(scheduler, t, 5.0)
    assert weights.dtype == torch.float32 and weights.device == t.device
    torch.testing.assert_close(weights, expected.float())
