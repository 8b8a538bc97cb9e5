"""CosineDDPMScheduler against diffusers' DDPMScheduler (the independent oracle) and closed-form facts."""

import inspect
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpm_pipeline import CosineDDPMScheduler
from ddpm_pipeline.scheduling_ddpm_cosine import discretized_gaussian_log_likelihood, normal_kl

pytestmark = pytest.mark.numerics  # the maths against diffusers' oracle: also run with kernels held to AVX2


def reference_scheduler(
    num_train_timesteps, variance_type, float64_schedule=True, timestep_spacing="linspace", **kwargs
):
    """diffusers' DDPMScheduler on the same cosine schedule.

    diffusers keeps alphas_cumprod in float32 and so computes beta_t = 1 - abar_t / abar_{t-1} with a relative error of
    ~1e-3 near t = 0 for T >= 1000; our float64 schedule is the more accurate one. For the step comparisons we run the
    oracle's own code on a float64 cumulative product of its own betas, which removes that rounding and nothing else.
    """
    reference = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        variance_type=variance_type,
        timestep_spacing=timestep_spacing,
        **kwargs,
    )
    if float64_schedule:
        reference.alphas_cumprod = torch.cumprod(1.0 - reference.betas.double(), dim=0)
    return reference


def model_output_for(variance_type, shape, generator):
    channels = 2 if variance_type == "learned_range" else 1
    output = torch.randn((shape[0], channels, *shape[2:]), generator=generator)
    if channels == 2:
        output[:, 1:] = torch.rand(output[:, 1:].shape, generator=generator) * 2 - 1  # v in [-1, 1]
    return output


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_schedule_matches_diffusers(T):
    ours = CosineDDPMScheduler(num_train_timesteps=T)
    reference = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours.betas.float(), reference.betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod.float(), reference.alphas_cumprod, atol=1e-6, rtol=0)
    assert ours.betas.dtype == torch.float64
    assert float(ours.betas.max()) <= 0.999


def test_schedule_formula_directly():
    T, s = 50, 0.008
    ours = CosineDDPMScheduler(num_train_timesteps=T)
    f = [math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(ours.alphas_cumprod[:-1], expected[:-1], atol=1e-12, rtol=0)


def test_long_chains_work():
    scheduler = CosineDDPMScheduler(num_train_timesteps=20000, timestep_spacing="linspace")
    assert torch.all(scheduler.betas > 0) and torch.all(torch.isfinite(scheduler.alphas_cumprod))
    assert float(scheduler.alphas_cumprod[0]) > 1 - 1e-5
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) == 50 and int(scheduler.timesteps[0]) == 19999


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_add_noise_matches_diffusers(T):
    ours = CosineDDPMScheduler(num_train_timesteps=T)
    reference = reference_scheduler(T, "fixed_small")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 28, 28, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.randint(0, T, (16,), generator=generator)
    torch.testing.assert_close(
        ours.add_noise(x0, noise, timesteps), reference.add_noise(x0, noise, timesteps), atol=1e-5, rtol=0
    )


def test_add_noise_statistics():
    """q(x_t|x_0) has mean sqrt(abar) x0 and variance 1 - abar."""
    scheduler = CosineDDPMScheduler(num_train_timesteps=1000)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    t = torch.full((20000,), 500)
    xt = scheduler.add_noise(x0, torch.randn_like(x0), t)
    abar = float(scheduler.alphas_cumprod[500])
    assert abs(xt.mean().item() - 0.5 * math.sqrt(abar)) < 0.02
    assert abs(xt.var().item() - (1 - abar)) < 0.03


@pytest.mark.parametrize("T", [10, 1000, 4000])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("respaced", ["full", "linspace", "leading"])
def test_step_matches_diffusers(T, variance_type, respaced):
    spacing = "leading" if respaced == "leading" else "linspace"
    ours = CosineDDPMScheduler(num_train_timesteps=T, variance_type=variance_type, timestep_spacing=spacing)
    reference = reference_scheduler(T, variance_type, timestep_spacing=spacing)
    if respaced != "full":
        n = min(50, T // 2)
        ours.set_timesteps(n)
        reference.set_timesteps(n)
        assert len(ours.timesteps) == n
    torch.testing.assert_close(ours.timesteps, reference.timesteps)
    generator = torch.Generator().manual_seed(T)
    sample = torch.randn(3, 1, 28, 28, generator=generator)
    timesteps = ours.timesteps.tolist()
    checked = sorted(set(timesteps[:: max(1, len(timesteps) // 25)] + timesteps[-3:] + timesteps[:2]), reverse=True)
    for t in checked:
        output = model_output_for(variance_type, sample.shape, generator)
        ours_out = ours.step(output, t, sample, generator=torch.Generator().manual_seed(t))
        ref_out = reference.step(output, t, sample, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours_out.prev_sample, ref_out.prev_sample, atol=1e-5, rtol=0, msg=f"t={t}")
        torch.testing.assert_close(
            ours_out.pred_original_sample, ref_out.pred_original_sample, atol=1e-5, rtol=0, msg=f"t={t}"
        )


def test_step_close_to_float32_diffusers_away_from_t0():
    """Against diffusers exactly as shipped (float32), the steps agree wherever float32 can resolve beta_t."""
    ours = CosineDDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    reference = reference_scheduler(1000, "learned_range", float64_schedule=False)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 1, 28, 28, generator=generator)
    for t in [999, 700, 300, 100]:
        output = model_output_for("learned_range", sample.shape, generator)
        a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        b = reference.step(output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_v_prediction_matches_diffusers():
    ours = CosineDDPMScheduler(
        num_train_timesteps=1000,
        variance_type="fixed_small",
        prediction_type="v_prediction",
        timestep_spacing="linspace",
    )
    reference = reference_scheduler(1000, "fixed_small", prediction_type="v_prediction")
    ours.set_timesteps(20)
    reference.set_timesteps(20)
    sample = torch.randn(2, 1, 28, 28)
    for t in ours.timesteps.tolist():
        output = torch.randn_like(sample)
        a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        b = reference.step(output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), reference.get_velocity(x0, noise, t))


def test_respaced_betas_come_from_kept_alpha_bars():
    scheduler = CosineDDPMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    chain = scheduler.chain
    kept = scheduler.alphas_cumprod[chain.timesteps]
    torch.testing.assert_close(chain.alphas_cumprod, kept)
    expected = 1 - kept[1:] / kept[:-1]
    torch.testing.assert_close(chain.betas[1:], expected)
    assert float(chain.betas[0]) == pytest.approx(1 - float(kept[0]))


def test_last_step_adds_no_noise():
    scheduler = CosineDDPMScheduler(num_train_timesteps=100, variance_type="fixed_large")
    scheduler.set_timesteps(5)
    sample, output = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    last = int(scheduler.timesteps[-1])
    a = scheduler.step(output, last, sample, generator=torch.Generator().manual_seed(0)).prev_sample
    b = scheduler.step(output, last, sample, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(a, b)
    first = int(scheduler.timesteps[0])
    a = scheduler.step(output, first, sample, generator=torch.Generator().manual_seed(0)).prev_sample
    b = scheduler.step(output, first, sample, generator=torch.Generator().manual_seed(1)).prev_sample
    assert not torch.equal(a, b)


# ------------------------------------------------------------------ the variational bound
def test_kl_of_identical_gaussians_is_zero():
    generator = torch.Generator().manual_seed(0)
    mean, log_variance = torch.randn(100, generator=generator), torch.randn(100, generator=generator)
    assert torch.allclose(normal_kl(mean, log_variance, mean, log_variance), torch.zeros(100), atol=1e-6)
    assert torch.equal(
        normal_kl(mean.double(), log_variance.double(), mean.double(), log_variance.double()).abs() < 1e-12,
        torch.ones(100, dtype=torch.bool),
    )
    # and a known value: KL(N(0,1) || N(1,1)) = 1/2
    assert normal_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.zeros(1)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("mean,log_scale", [(0.0, math.log(0.1)), (-0.97, math.log(0.02)), (0.5, math.log(1.5))])
def test_discretized_likelihood_sums_to_one(mean, log_scale):
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    log_likelihood = discretized_gaussian_log_likelihood(
        bins, means=torch.full_like(bins, mean), log_scales=torch.full_like(bins, log_scale)
    )
    assert torch.exp(log_likelihood).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_kl_term_is_zero_at_true_posterior():
    """With the exact noise and a variance equal to the posterior's, the per-step KL vanishes."""
    scheduler = CosineDDPMScheduler(num_train_timesteps=1000, variance_type="fixed_small")
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 5, 50, 200, 400, 600, 800, 999])
    xt = scheduler.add_noise(x0.double(), noise.double(), t)
    terms = scheduler.variational_bound_terms(noise.double(), x0.double(), xt, t)
    assert torch.all(terms.abs() < 1e-8), terms
    # learned_range with v = -1 is exactly the posterior variance beta_tilde
    learned = CosineDDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    output = torch.cat([noise.double(), -torch.ones_like(noise.double())], dim=1)
    assert torch.all(learned.variational_bound_terms(output, x0.double(), xt, t).abs() < 1e-8)
    # a wrong noise estimate costs bits
    assert torch.all(scheduler.variational_bound_terms(-noise.double(), x0.double(), xt, t) > 0)


def test_decoder_term_at_t0_is_a_likelihood_in_bits():
    scheduler = CosineDDPMScheduler(num_train_timesteps=1000, variance_type="fixed_small")
    x0 = (torch.randint(0, 256, (4, 1, 28, 28)).double() / 127.5) - 1
    noise = torch.randn_like(x0)
    t = torch.zeros(4, dtype=torch.long)
    xt = scheduler.add_noise(x0, noise, t)
    bits = scheduler.variational_bound_terms(noise, x0, xt, t)
    assert torch.all(bits > 0) and torch.all(bits < 8)  # at most the 8 bits of a uniform pixel


def test_respaced_chain_bound_terms():
    scheduler = CosineDDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    chain = scheduler.chain_for([999, 750, 500, 250, 0])
    x0 = torch.rand(5, 1, 8, 8).double() * 2 - 1
    noise = torch.randn_like(x0)
    t = chain.timesteps.flip(0)
    xt = scheduler.add_noise(x0, noise, t)
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    terms = scheduler.variational_bound_terms(output, x0, xt, t, chain=chain)
    assert torch.all(terms[:-1].abs() < 1e-8) and terms[-1] > 0
    with pytest.raises(ValueError, match="not on the given chain"):
        scheduler.variational_bound_terms(output[:1], x0[:1], xt[:1], torch.tensor([123]), chain=chain)
    assert torch.all(scheduler.prior_bpd(x0) < 1e-3)


# ------------------------------------------------------------------ swapping and bad input
def test_swappable_with_diffusers_schedulers():
    ours = CosineDDPMScheduler(num_train_timesteps=1000)
    assert "DDIMScheduler" in ours._compatibles and "DPMSolverMultistepScheduler" in ours._compatibles
    ddim = DDIMScheduler.from_config(ours.config)
    dpm = DPMSolverMultistepScheduler.from_config(ours.config)
    for other in (ddim, dpm):
        torch.testing.assert_close(other.alphas_cumprod.double(), ours.alphas_cumprod, atol=1e-6, rtol=0)
    back = CosineDDPMScheduler.from_config(ddim.config)
    assert back.config.num_train_timesteps == 1000


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_train_timesteps": 4000, "timestep_spacing": "linspace"},
        {"num_train_timesteps": 321, "variance_type": "fixed_large", "clip_sample": False, "prediction_type": "sample"},
        {"prediction_type": "v_prediction", "steps_offset": 1, "clip_sample_range": 2.0},
    ],
)
def test_config_round_trips_like_diffusers(tmp_path, kwargs):
    """``_use_default_values`` as in diffusers' own schedulers (DDPMScheduler, the control, in the same test): present
    for a freshly built scheduler, listing the defaulted keys; gone after save + load; ``from_config`` and save/load
    round trips give equal configs the way diffusers' test_from_pretrained compares them. Only the keys that define
    the schedule are never listed, so DDIM and DPM-Solver++ built from our config keep the cosine betas."""
    from ddpm_pipeline.scheduling_ddpm_cosine import SCHEDULE_KEYS

    ours = CosineDDPMScheduler(**kwargs)
    control = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=ours.config.num_train_timesteps)
    defaulted = set(inspect.signature(CosineDDPMScheduler.__init__).parameters) - {"self"} - set(kwargs)
    assert set(dict(control.config)["_use_default_values"]) == set(
        inspect.signature(DDPMScheduler.__init__).parameters
    ) - {"self", "beta_schedule", "num_train_timesteps"}
    assert set(dict(ours.config)["_use_default_values"]) == defaulted - set(SCHEDULE_KEYS) == {"sampling_order"}
    for scheduler in (ours, control):
        assert dict(type(scheduler).from_config(scheduler.config).config) == dict(scheduler.config)
        scheduler.save_config(tmp_path / type(scheduler).__name__)
        loaded = type(scheduler).from_pretrained(tmp_path / type(scheduler).__name__)
        assert "_use_default_values" not in loaded.config
        config = dict(scheduler.config)
        del config["_use_default_values"]  # what diffusers' test_from_pretrained does
        assert config == dict(loaded.config)
    for other in (DDIMScheduler.from_config(ours.config), DPMSolverMultistepScheduler.from_config(ours.config)):
        assert other.config.beta_schedule == "squaredcos_cap_v2"
        assert other.config.num_train_timesteps == ours.config.num_train_timesteps
        assert other.config.prediction_type == ours.config.prediction_type
        torch.testing.assert_close(other.alphas_cumprod.double(), ours.alphas_cumprod, atol=1e-6, rtol=0)
    # diffusers' control: a defaulted beta_schedule does not travel, so DDIM falls back to its own (linear)
    assert DDIMScheduler.from_config(DDPMScheduler().config).config.beta_schedule == "linear"


def test_use_default_values_is_absent_when_nothing_was_defaulted():
    ours = CosineDDPMScheduler(sampling_order=2)
    assert "_use_default_values" not in ours.config
    assert dict(CosineDDPMScheduler.from_config(ours.config).config) == dict(ours.config)


def test_save_and_load_config(tmp_path):
    ours = CosineDDPMScheduler(num_train_timesteps=321, variance_type="fixed_large", clip_sample=False)
    ours.save_pretrained(tmp_path)
    loaded = CosineDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.num_train_timesteps == 321 and loaded.config.variance_type == "fixed_large"
    torch.testing.assert_close(loaded.alphas_cumprod, ours.alphas_cumprod)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"variance_type": "learned"}, "variance_type"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"timestep_spacing": "random"}, "timestep_spacing"),
        ({"beta_schedule": "linear"}, "cosine"),
        ({"num_train_timesteps": 10**9}, "216 GB"),
        ({"num_train_timesteps": 4000.0}, "integer"),
        ({"clip_sample_range": 0}, "clip_sample_range"),
        ({"steps_offset": -1}, "steps_offset"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosineDDPMScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_bad_num_inference_steps(steps):
    scheduler = CosineDDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(steps)


def test_bad_custom_timesteps():
    scheduler = CosineDDPMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="descending"):
        scheduler.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        scheduler.set_timesteps(timesteps=[100, 50])
    with pytest.raises(ValueError, match="not both"):
        scheduler.set_timesteps(10, timesteps=[50, 0])
    scheduler.set_timesteps(timesteps=[90, 40, 0])
    assert scheduler.previous_timestep(90) == 40 and scheduler.previous_timestep(0) == -1
    with pytest.raises(ValueError, match="not on the current sampling chain"):
        scheduler.step(torch.zeros(1, 2, 4, 4), 41, torch.zeros(1, 1, 4, 4))


def test_wrong_channel_count_is_named():
    learned = CosineDDPMScheduler(num_train_timesteps=10, variance_type="learned_range")
    with pytest.raises(ValueError, match="learned_variance=True"):
        learned.step(torch.zeros(1, 1, 4, 4), 9, torch.zeros(1, 1, 4, 4))
    fixed = CosineDDPMScheduler(num_train_timesteps=10, variance_type="fixed_small")
    with pytest.raises(ValueError, match="3 channels"):
        fixed.step(torch.zeros(1, 3, 4, 4), 9, torch.zeros(1, 1, 4, 4))
    # a learned-variance output with a fixed variance: the variance half is ignored, as in diffusers
    output = torch.randn(1, 2, 4, 4)
    a = fixed.step(output, 9, torch.zeros(1, 1, 4, 4), generator=torch.Generator().manual_seed(0)).prev_sample
    b = fixed.step(output[:, :1], 9, torch.zeros(1, 1, 4, 4), generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)


def test_defaults_mirror_diffusers_ddpm_spacing():
    """With both left at their defaults, ours and diffusers' DDPMScheduler pick the same respaced timesteps."""
    ours, reference = CosineDDPMScheduler(num_train_timesteps=1000), DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ours.set_timesteps(50)
    reference.set_timesteps(50)
    torch.testing.assert_close(ours.timesteps, reference.timesteps)


def test_second_order_step_matches_diffusers_sde_dpm_solver_pp_2m():
    """sampling_order=2 with the fixed variance beta_tilde is diffusers' SDE-DPM-Solver++(2M): the same samples from
    the same model outputs and noise, on a respaced chain (first order on the first and last step, as diffusers with
    lower_order_final)."""
    T, chain = 1000, [999, 800, 600, 400, 200, 50, 0]
    ours = CosineDDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", clip_sample=False, sampling_order=2)
    reference = DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="squaredcos_cap_v2",
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    ours.set_timesteps(timesteps=chain)
    reference.set_timesteps(timesteps=chain)
    abar = ours.alphas_cumprod.float()

    def network(x, t):  # a smooth stand-in whose x_0 estimate changes from step to step: eps for x_0 = f(x, t)
        x0 = 0.8 * torch.tanh(x) + 0.3 * math.cos(3 * t / T)
        return (x - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()

    def sample(scheduler):
        scheduler.set_timesteps(timesteps=chain)
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        for t in chain:
            x = scheduler.step(network(x, t), t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        return x

    torch.testing.assert_close(sample(ours), sample(reference), atol=1e-3, rtol=1e-3)  # float64 vs float32 tables
    first = CosineDDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", clip_sample=False)
    assert (sample(first) - sample(reference)).abs().max() > 1e-2  # the first order is not the second


def test_sampling_order_is_checked():
    with pytest.raises(ValueError, match="sampling_order"):
        CosineDDPMScheduler(sampling_order=3)
