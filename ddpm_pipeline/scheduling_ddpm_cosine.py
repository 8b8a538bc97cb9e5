"""Cosine-schedule DDPM with learned-range variance (Nichol & Dhariwal, "Improved DDPM", 2021).

One algorithm, one file, in the diffusers style. All schedule arithmetic is done in float64: with T = 10^4 the first
betas are ~1e-6, below what 1 - beta can resolve in float32.

Conventions (the same as diffusers' ``DDPMScheduler``): timesteps are 0-indexed, ``0 .. T-1``; stepping from
timestep ``t`` goes to the previous timestep of the current chain, and the last step of a chain lands on x_0.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
MAX_TRAIN_TIMESTEPS = 100_000
# The arguments diffusers' DDPM/DDIM/DPM-Solver schedulers share with this one: they define the chain, so they travel
# in from_config to any of them and are never listed in _use_default_values.
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_schedule",
    "variance_type",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "timestep_spacing",
    "steps_offset",
)
SCHEDULE_BYTES_PER_TIMESTEP = 27 * 8  # the float64 tables of the schedule and its two chains


@dataclass
class CosineDDPMSchedulerOutput(BaseOutput):
    """Output of [`CosineDDPMScheduler.step`].

    Args:
        prev_sample: x_{t-1}, the sample at the previous timestep of the chain.
        pred_original_sample: the model's estimate of x_0 (after clipping, if enabled).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2)."""
    steps = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


@dataclass
class ChainCoefficients:
    """Per-step constants of a (possibly respaced) chain, ascending in time, all float64.

    Entry k describes the step from ``timesteps[k]`` down to ``timesteps[k-1]`` (x_0 for k = 0). On a respaced chain the
    betas are recomputed from the kept alpha_bars, beta_k = 1 - abar_k / abar_{k-1} (Improved DDPM, Sec. 4), so that a
    variance learned on the full chain stays valid on the short one.
    """

    timesteps: torch.Tensor  # (K,) int64, ascending
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # 1 - abar taken in float64: it is ~1e-6 at t = 0 for large T
    betas: torch.Tensor
    log_betas: torch.Tensor  # log beta: the upper end of the learned range
    log_betas_large: torch.Tensor  # Improved DDPM's fixed_large: log beta, with log beta_tilde_1 at the last step
    posterior_variance: torch.Tensor  # beta_tilde
    posterior_log_variance_clipped: torch.Tensor  # log beta_tilde, with beta_tilde_0 (= 0) replaced by beta_tilde_1
    posterior_mean_coef1: torch.Tensor  # multiplies x_0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t
    # each table as it is used, per (name, device, dtype): a look-up then stays on the device (no host-device sync)
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def gather(self, name: str, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The table ``name`` at chain positions ``index``, in ``like``'s dtype and device, shaped to broadcast
        against ``like``. The float64 table is cast once on the CPU (mps has no float64) and kept on the device, so
        the values are those of a float64 look-up cast afterwards, and the look-up never waits for the device."""
        key = (name, like.device, like.dtype)
        table = self._copies.get(key)
        if table is None:
            table = self._copies[key] = getattr(self, name).to(dtype=like.dtype).to(like.device)
        return table[index.to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod_all: torch.Tensor, timesteps_ascending: torch.Tensor):
        abar = alphas_cumprod_all[timesteps_ascending]
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        if len(abar) > 1:
            clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        else:  # a one-step chain has no beta_tilde_1 to borrow; use beta itself
            clipped = betas.clone()
        large = torch.cat([posterior_variance[1:2], betas[1:]]) if len(abar) > 1 else betas
        return cls(
            timesteps=timesteps_ascending,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=torch.sqrt(abar),
            sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - abar),
            betas=betas,
            log_betas=torch.log(betas),
            log_betas_large=torch.log(large),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=torch.log(clipped),
            posterior_mean_coef1=betas * torch.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * torch.sqrt(1.0 - betas) / (1.0 - abar),
        )


# Copied from ddpm_pipeline.unet_mnist._require (each component file stands alone for remote code)
def _require(condition: torch.Tensor, message: str):
    """ValueError(``message``) unless the boolean tensor ``condition`` holds, checked where it lies without reading it
    back (a read would make a GPU step wait): the CPU fails at once, CUDA with a device-side assert."""
    try:
        torch._assert_async(condition, message)
    except RuntimeError:
        raise ValueError(message) from None


class SchedulerConfigError(ValueError):
    """A CosineDDPMScheduler argument that cannot build a schedule; ``argument`` names it."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}"
        count /= 1000


class CosineDDPMScheduler(SchedulerMixin, ConfigMixin):
    """DDPM on the cosine schedule, with fixed or learned-range variance and respaced sampling.

    Args:
        num_train_timesteps: length T of the training chain (from 2; T of order 10^4 is fine).
        variance_type: ``"fixed_small"`` (beta_tilde), ``"fixed_large"`` (beta) or ``"learned_range"``: the model
            outputs 2C channels, noise and v, and Sigma = exp(frac log beta + (1 - frac) log beta_tilde),
            frac = (v + 1) / 2.
        prediction_type: what the (first C channels of the) model predict: ``"epsilon"``, ``"v_prediction"`` or
            ``"sample"``.
        clip_sample: clip the predicted x_0 to ``[-clip_sample_range, clip_sample_range]`` while sampling.
        timestep_spacing: how ``set_timesteps(num_inference_steps)`` picks the kept timesteps, as in diffusers
            (default ``"leading"``, diffusers' DDPMScheduler default). ``train_ddpm.py`` saves ``"linspace"``, which
            keeps both ends of the chain, as Improved DDPM's respacing does.
        steps_offset: added to the timesteps with ``"leading"`` spacing, as in diffusers.
        beta_schedule: kept as ``"squaredcos_cap_v2"``, the name diffusers' schedulers give this schedule, so that
            ``DDIMScheduler.from_config(ours.config)`` rebuilds the same betas.
        sampling_order: 1, the DDPM step; 2, the same step with a second-order estimate of x_0 in its mean
            (DPM-Solver++(2M), SDE form), the variance still the model's.
    """

    _compatibles = [
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "EulerDiscreteScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: str = "learned_range",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        beta_schedule: str = "squaredcos_cap_v2",
        sampling_order: int = 1,
    ):
        self.check_config(
            num_train_timesteps=num_train_timesteps,
            variance_type=variance_type,
            prediction_type=prediction_type,
            clip_sample_range=clip_sample_range,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            beta_schedule=beta_schedule,
            sampling_order=sampling_order,
        )
        self._pin_schedule_keys()

        self.betas = torch.from_numpy(cosine_betas(num_train_timesteps))
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.init_noise_sigma = 1.0

        # The full training chain: used by training (the variational bound) and by default for sampling.
        self.train_chain = ChainCoefficients.from_alphas_cumprod(
            self.alphas_cumprod, torch.arange(num_train_timesteps, dtype=torch.int64)
        )
        self.num_inference_steps = None
        self._set_chain(torch.arange(num_train_timesteps, dtype=torch.int64))

    def _pin_schedule_keys(self):
        """Keep ``_use_default_values`` as diffusers does (the keys left at their defaults), except for the keys
        that define the schedule.

        diffusers' ``from_config`` drops the listed keys when it builds another class, so that class uses its own
        defaults: ``DDIMScheduler.from_config(ours.config)`` would quietly build a linear schedule if
        ``beta_schedule`` were listed. The keys diffusers' schedulers share with this one always travel; only our
        own keys (``sampling_order``) may be listed. Saved configs never hold the list, so a loaded scheduler has none.
        """
        defaulted = self._internal_dict.get("_use_default_values")
        if defaulted is None:
            return
        kept = sorted(key for key in defaulted if key not in SCHEDULE_KEYS)
        config = {k: v for k, v in self._internal_dict.items() if k != "_use_default_values"}
        if kept:  # as in diffusers, the key is there only when some value was defaulted
            config["_use_default_values"] = kept
        self._internal_dict = FrozenDict(config)

    @staticmethod
    def check_config(
        num_train_timesteps: int,
        variance_type: str = "learned_range",
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        beta_schedule: str = "squaredcos_cap_v2",
        sampling_order: int = 1,
    ):
        """Every rule on the scheduler's arguments, checked before any table is built; raises
        ``SchedulerConfigError`` naming the first bad argument (the training config uses it too)."""
        T = num_train_timesteps
        if not _is_int(T) or not 2 <= T <= MAX_TRAIN_TIMESTEPS:
            memory = f" (its tables alone would take {_bytes(T * SCHEDULE_BYTES_PER_TIMESTEP)})" if _is_int(T) else ""
            raise SchedulerConfigError(
                "num_train_timesteps",
                f"num_train_timesteps must be an integer between 2 and {MAX_TRAIN_TIMESTEPS:,}, got {T!r}{memory}. "
                "A diffusion chain needs at least two steps; values of 1,000 to 10,000 are typical.",
            )
        for argument, value, choices in (
            ("variance_type", variance_type, VARIANCE_TYPES),
            ("prediction_type", prediction_type, PREDICTION_TYPES),
            ("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS),
        ):
            if value not in choices:
                raise SchedulerConfigError(
                    argument, f"Unknown {argument} {value!r}: choose one of {', '.join(choices)}."
                )
        if beta_schedule != "squaredcos_cap_v2":
            raise SchedulerConfigError(
                "beta_schedule",
                "CosineDDPMScheduler only implements the cosine schedule (beta_schedule='squaredcos_cap_v2'), "
                f"got {beta_schedule!r}. Use diffusers' DDPMScheduler for other schedules.",
            )
        if isinstance(clip_sample_range, bool) or not isinstance(clip_sample_range, (int, float)):
            raise SchedulerConfigError(
                "clip_sample_range", f"clip_sample_range must be a number, got {clip_sample_range!r}."
            )
        if not 0 < clip_sample_range < math.inf:
            raise SchedulerConfigError(
                "clip_sample_range", f"clip_sample_range must be positive, got {clip_sample_range}."
            )
        if sampling_order not in (1, 2) or isinstance(sampling_order, bool):
            raise SchedulerConfigError(
                "sampling_order", f"sampling_order must be 1 (DDPM) or 2 (second-order x_0), got {sampling_order!r}."
            )
        if not _is_int(steps_offset) or not 0 <= steps_offset < T:
            raise SchedulerConfigError(
                "steps_offset", f"steps_offset must be an integer in [0, {T - 1}], got {steps_offset!r}."
            )

    # ------------------------------------------------------------------ timesteps
    def _set_chain(self, timesteps_ascending: torch.Tensor):
        self.chain = ChainCoefficients.from_alphas_cumprod(self.alphas_cumprod, timesteps_ascending)
        self._previous_x0 = None  # (chain index, x_0 estimate) of the last step, for sampling_order 2
        self._chain_index = {int(t): k for k, t in enumerate(timesteps_ascending.tolist())}
        self.timesteps = timesteps_ascending.flip(0)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ):
        """Choose the sampling chain: the full chain (no arguments), ``num_inference_steps`` evenly spaced timesteps,
        or explicit descending ``timesteps``. The betas of a shortened chain are recomputed from the kept alpha_bars."""
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Pass either num_inference_steps or timesteps to set_timesteps, not both.")
        if timesteps is not None:
            chain = np.asarray(timesteps, dtype=np.int64)
            if chain.ndim != 1 or len(chain) == 0:
                raise ValueError("timesteps must be a non-empty list of integers.")
            if np.any(np.diff(chain) >= 0):
                raise ValueError(f"timesteps must be strictly descending, got {list(chain)}.")
            if chain[0] >= T or chain[-1] < 0:
                raise ValueError(f"timesteps must lie in [0, {T - 1}] for num_train_timesteps={T}.")
        else:
            if num_inference_steps is None:
                num_inference_steps = T
            if not isinstance(num_inference_steps, (int, np.integer)) or not 1 <= num_inference_steps <= T:
                raise ValueError(
                    f"num_inference_steps must be an integer between 1 and num_train_timesteps={T}, "
                    f"got {num_inference_steps!r}."
                )
            n = int(num_inference_steps)
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                chain = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
            elif spacing == "leading":
                chain = (np.arange(n) * (T // n))[::-1].astype(np.int64) + self.config.steps_offset
            else:  # trailing
                chain = np.round(T - np.arange(n) * (T / n)).astype(np.int64) - 1
            if chain[0] >= T:
                raise ValueError(f"steps_offset={self.config.steps_offset} pushes timesteps past T-1={T - 1}.")
        self.num_inference_steps = len(chain)
        self._set_chain(torch.from_numpy(chain[::-1].copy()))
        if device is not None:
            self.timesteps = self.timesteps.to(device)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep the chain steps to from ``timestep``; -1 means x_0."""
        k = self._index(timestep)
        return int(self.chain.timesteps[k - 1]) if k > 0 else -1

    def _index(self, timestep) -> int:
        t = int(timestep)
        if t not in self._chain_index:
            raise ValueError(
                f"Timestep {t} is not on the current sampling chain; call set_timesteps first and step through "
                "scheduler.timesteps."
            )
        return self._chain_index[t]

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM needs no input scaling; present for interchangeability with other schedulers."""
        return sample

    def __len__(self):
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ forward process
    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) by reparameterization, one t per sample."""
        timesteps = torch.as_tensor(timesteps).long().reshape(-1)
        signal = self.train_chain.gather("sqrt_alphas_cumprod", timesteps, original_samples)
        noise_scale = self.train_chain.gather("sqrt_one_minus_alphas_cumprod", timesteps, original_samples)
        return signal * original_samples + noise_scale * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target, v = sqrt(abar) eps - sqrt(1 - abar) x_0."""
        timesteps = torch.as_tensor(timesteps).long().reshape(-1)
        signal = self.train_chain.gather("sqrt_alphas_cumprod", timesteps, sample)
        noise_scale = self.train_chain.gather("sqrt_one_minus_alphas_cumprod", timesteps, sample)
        return signal * noise - noise_scale * sample

    # ------------------------------------------------------------------ reverse process
    def split_model_output(self, model_output: torch.Tensor, sample: torch.Tensor):
        """Split the network output into (prediction, variance values or None), checking its channel count."""
        channels = sample.shape[1]
        learned = self.config.variance_type == "learned_range"
        if model_output.shape[0] != sample.shape[0] or model_output.shape[2:] != sample.shape[2:]:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} does not match sample shape {tuple(sample.shape)}."
            )
        if model_output.shape[1] == 2 * channels:
            prediction, variance_values = model_output.split(channels, dim=1)
            return prediction, (variance_values if learned else None)
        if model_output.shape[1] == channels and not learned:
            return model_output, None
        expected = f"{2 * channels}" if learned else f"{channels} (or {2 * channels}, the variance half is ignored)"
        raise ValueError(
            f"model_output has {model_output.shape[1]} channels but variance_type={self.config.variance_type!r} "
            f"with {channels}-channel samples expects {expected}. A learned-range variance needs a UNet with "
            "learned_variance=True; for a noise-only UNet use variance_type='fixed_small' or 'fixed_large'."
        )

    def _predict_original(self, prediction, sample, chain_index, chain: ChainCoefficients) -> torch.Tensor:
        """The model's x_0 from x_t and its prediction, inverting x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps."""
        kind = self.config.prediction_type
        if kind == "sample":
            return prediction
        signal = chain.gather("sqrt_alphas_cumprod", chain_index, sample)
        noise_scale = chain.gather("sqrt_one_minus_alphas_cumprod", chain_index, sample)
        if kind == "epsilon":
            # x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (Ho et al. 2020, eq. 15)
            return (sample - noise_scale * prediction) / signal
        # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, so x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v
        # (Salimans & Ho 2022, "Progressive distillation", Sec. 4)
        return signal * sample - noise_scale * prediction

    def _model_log_variance(self, variance_values, index: torch.Tensor, like: torch.Tensor, chain: ChainCoefficients):
        """log Sigma_theta for the step at chain index ``index``."""
        variance_type = self.config.variance_type
        if variance_type == "learned_range":
            # Sigma = exp(v log beta_t + (1 - v) log beta_tilde_t), v = (output + 1) / 2 (Nichol & Dhariwal, eq. 15)
            min_log = chain.gather("posterior_log_variance_clipped", index, like)
            max_log = chain.gather("log_betas", index, like)
            frac = (variance_values + 1.0) / 2.0
            return frac * max_log + (1.0 - frac) * min_log
        if variance_type == "fixed_large":
            return chain.gather("log_betas_large", index, like).expand_as(like)
        return chain.gather("posterior_log_variance_clipped", index, like).expand_as(like)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        chain_index: torch.Tensor,
        chain: ChainCoefficients,
        clip_denoised: bool = False,
    ):
        """Mean, log-variance and predicted x_0 of p_theta(x_prev | x_t), batched over ``chain_index``."""
        prediction, variance_values = self.split_model_output(model_output, sample)
        pred_original = self._predict_original(prediction, sample, chain_index, chain)
        if clip_denoised:
            limit = self.config.clip_sample_range
            pred_original = pred_original.clamp(-limit, limit)
        mean, _ = self.q_posterior_mean_log_variance(pred_original, sample, chain_index, chain)
        log_variance = self._model_log_variance(variance_values, chain_index, sample, chain)
        return mean, log_variance, pred_original

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> CosineDDPMSchedulerOutput | tuple:
        """One reverse step: draw x_prev ~ p_theta(x_prev | x_t) = N(mu_theta, Sigma_theta).

        No noise is added on the last step of the chain, which lands on x_0.
        """
        # 1. where x_t sits on the current (full or respaced) chain
        k = self._index(timestep)
        index = torch.full((sample.shape[0],), k, dtype=torch.long)
        # 2. the model's x_0 (clipped), mu_theta = the posterior mean given that x_0, and log Sigma_theta
        mean, log_variance, pred_original = self.p_mean_variance(
            model_output, sample, index, self.chain, clip_denoised=self.config.clip_sample
        )
        # 2b. with sampling_order 2, the mean takes a second-order x_0 from this step's and the last one's estimates
        if self.config.sampling_order == 2:
            mean = self._second_order_mean(k, index, pred_original, sample, mean)
        # 3. x_prev = mu_theta + Sigma_theta^(1/2) z, z ~ N(0, I); the last step returns the mean
        prev_sample = mean
        if k > 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = mean + torch.exp(0.5 * log_variance) * noise
        if not return_dict:
            return prev_sample, pred_original
        return CosineDDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original)

    def _second_order_mean(self, k: int, index, pred_original, sample, first_order_mean):
        """The posterior mean at a second-order x_0: DPM-Solver++(2M)'s SDE step (Lu et al. 2022, "DPM-Solver++",
        midpoint form) is exactly the DDPM posterior step with x_0 replaced by D = m0 + (m0 - m1) / (2 r),
        r = h_prev / h in lambda = log(alpha / sigma). So the learned variance keeps its meaning. First order on the
        first step (no m1 yet) and the last (which lands on x_0)."""
        previous, self._previous_x0 = self._previous_x0, (k, pred_original)
        if previous is None or previous[0] != k + 1 or k == 0:
            return first_order_mean
        abar = self.chain.alphas_cumprod
        lambdas = 0.5 * (torch.log(abar) - torch.log1p(-abar))  # at chain indices; x_prev sits at k - 1
        h, h_previous = lambdas[k - 1] - lambdas[k], lambdas[k] - lambdas[k + 1]
        x0 = pred_original + (0.5 * h / h_previous).item() * (pred_original - previous[1])
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        mean, _ = self.q_posterior_mean_log_variance(x0, sample, index, self.chain)
        return mean

    # ------------------------------------------------------------------ the variational bound
    def q_posterior_mean_log_variance(
        self, original_samples: torch.Tensor, sample: torch.Tensor, chain_index: torch.Tensor, chain: ChainCoefficients
    ):
        """Mean and (clipped) log-variance of the true posterior q(x_prev | x_t, x_0).

        mu_tilde = sqrt(abar_prev) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t and
        beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t (Ho et al. 2020, eq. 7); on a respaced chain, alpha_t and
        beta_t are those of the kept steps.
        """
        coef1 = chain.gather("posterior_mean_coef1", chain_index, sample)
        coef2 = chain.gather("posterior_mean_coef2", chain_index, sample)
        log_variance = chain.gather("posterior_log_variance_clipped", chain_index, sample)
        return coef1 * original_samples + coef2 * sample, log_variance.expand_as(sample)

    def chain_for(self, timesteps: list[int] | torch.Tensor | None = None) -> ChainCoefficients:
        """Coefficients of the chain through ``timesteps`` (any order), or of the full training chain."""
        if timesteps is None:
            return self.train_chain
        ascending = torch.as_tensor(timesteps, dtype=torch.int64).unique(sorted=True)
        return ChainCoefficients.from_alphas_cumprod(self.alphas_cumprod, ascending)

    def variational_bound_terms(
        self,
        model_output: torch.Tensor,
        original_samples: torch.Tensor,
        noisy_samples: torch.Tensor,
        timesteps: torch.Tensor,
        chain: ChainCoefficients | None = None,
        stop_mean_gradient: bool = False,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """Per-sample term L_t of the variational bound, in bits per dimension.

        KL(q(x_prev|x_t,x_0) || p_theta(x_prev|x_t)) for steps above x_0, and the discretized Gaussian decoder's
        negative log-likelihood -log p_theta(x_0|x_1) at the last step. ``timesteps`` are timesteps on ``chain``
        (default: the full training chain). With ``stop_mean_gradient`` the bound trains only the variance, as in
        Improved DDPM's hybrid loss. ``clip_denoised`` clips the predicted x_0 to the data range, as Improved DDPM
        does when it evaluates the bound: near t = T, x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by
        sqrt(abar) ~ 1e-5, and on a respaced chain an unclipped estimate turns a tiny noise error into a huge KL.
        """
        chain = chain or self.train_chain
        chain_index = self._positions_on(chain, timesteps)
        prediction, variance_values = self.split_model_output(model_output, noisy_samples)
        if stop_mean_gradient:
            prediction = prediction.detach()
        output = prediction if variance_values is None else torch.cat([prediction, variance_values], dim=1)
        model_mean, model_log_variance, _ = self.p_mean_variance(
            output, noisy_samples, chain_index, chain, clip_denoised=clip_denoised
        )
        true_mean, true_log_variance = self.q_posterior_mean_log_variance(
            original_samples, noisy_samples, chain_index, chain
        )
        dims = tuple(range(1, original_samples.ndim))
        kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).mean(dim=dims) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            original_samples, means=model_mean, log_scales=0.5 * model_log_variance
        ).mean(dim=dims) / math.log(2.0)
        is_last_step = (chain_index == 0).to(kl.device)
        return torch.where(is_last_step, decoder_nll, kl)

    def _positions_on(self, chain: ChainCoefficients, timesteps) -> torch.Tensor:
        """The positions of ``timesteps`` on ``chain``; ValueError if some are not on it."""
        timesteps = torch.as_tensor(timesteps, dtype=torch.int64).reshape(-1)
        if chain is self.train_chain:
            # every timestep is its own position on the full chain: found where the timesteps are, and checked
            # without waiting for the device
            inside = ((timesteps >= 0) & (timesteps < len(chain.timesteps))).all()
            _require(inside, "variational_bound_terms: some timesteps are not on the given chain.")
            return timesteps
        timesteps = timesteps.cpu()
        chain_index = torch.searchsorted(chain.timesteps, timesteps)
        if torch.any(chain_index >= len(chain.timesteps)) or torch.any(
            chain.timesteps[chain_index.clamp(max=len(chain.timesteps) - 1)] != timesteps
        ):
            raise ValueError("variational_bound_terms: some timesteps are not on the given chain.")
        return chain_index

    def prior_bpd(self, original_samples: torch.Tensor, chain: ChainCoefficients | None = None) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) per sample, in bits per dimension: the bound's term that no network sees."""
        chain = chain or self.train_chain
        abar_T = float(chain.alphas_cumprod[-1])
        mean = math.sqrt(abar_T) * original_samples
        log_variance = torch.full_like(original_samples, math.log(1.0 - abar_T))
        zeros = torch.zeros_like(original_samples)
        dims = tuple(range(1, original_samples.ndim))
        return normal_kl(mean, log_variance, zeros, zeros).mean(dim=dims) / math.log(2.0)


def normal_kl(mean1, log_variance1, mean2, log_variance2) -> torch.Tensor:
    """KL(N(mean1, exp(log_variance1)) || N(mean2, exp(log_variance2))), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + log_variance2
        - log_variance1
        + torch.exp(log_variance1 - log_variance2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_variance2)
    )


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log-likelihood (nats, elementwise) of 8-bit images scaled to [-1, 1] under a Gaussian discretized into the
    256 pixel bins; the two edge bins take the tails, so the 256 probabilities sum to 1."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
