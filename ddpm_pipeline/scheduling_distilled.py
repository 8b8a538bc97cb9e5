"""The few-step sampler of a distilled student: diffusers' LCMScheduler, held to the timesteps it was distilled at.

A distilled student predicts, from x_t, where the teacher's guided sampler ends (x_0), in one call; a few-step chain
then alternates that prediction with fresh noise to the next timestep (consistency sampling, Song et al. 2023; the
update is diffusers' LCMScheduler's). It predicts v (x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v), which stays
well-posed at t = T, where a noise prediction would divide by sqrt(abar_T) ~ 0. The student is only valid at the
timesteps it was distilled at: ``distilled_timesteps`` maps each step count to its chain, and any other step count
is refused, never run.
"""

from diffusers import LCMScheduler, SchedulerMixin  # noqa: F401  diffusers' loader looks up SchedulerMixin here
from diffusers.configuration_utils import register_to_config


class DistilledStepsError(ValueError):
    """A step count the student was not distilled for."""


class DistilledLCMScheduler(LCMScheduler):
    """LCMScheduler on the cosine schedule with v-prediction, whose ``set_timesteps(n)`` runs the chain the student was
    distilled for at n steps (``distilled_timesteps[str(n)]``) and refuses every other n.

    Args:
        distilled_timesteps: ``{"1": [3999], "2": [3999, 1999], ...}``: each step count's timesteps, descending.
        The others are LCMScheduler's, with the student's defaults: the cosine schedule, v-prediction, x_0 clipped.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        distilled_timesteps: dict | None = None,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "squaredcos_cap_v2",
        trained_betas=None,
        original_inference_steps: int = 50,
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "v_prediction",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            original_inference_steps=original_inference_steps,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            timestep_scaling=timestep_scaling,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self.register_to_config(distilled_timesteps=check_distilled_timesteps(distilled_timesteps, num_train_timesteps))

    @property
    def step_counts(self) -> list[int]:
        return sorted(int(count) for count in self.config.distilled_timesteps)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, **kwargs):
        chains = self.config.distilled_timesteps
        if kwargs.get("timesteps") is None and str(num_inference_steps) not in chains:
            raise DistilledStepsError(
                f"This distilled student runs {', '.join(map(str, self.step_counts))} steps (the timesteps it was "
                f"distilled at), not {num_inference_steps!r}: call it with num_inference_steps among those, or "
                "sample with its teacher for other step counts."
            )
        timesteps = kwargs.pop("timesteps", None) or chains[str(num_inference_steps)]
        super().set_timesteps(device=device, timesteps=list(timesteps), **kwargs)


def check_distilled_timesteps(chains: dict | None, num_train_timesteps: int) -> dict:
    """Each step count's chain: descending timesteps in [0, T), as many as the count."""
    if not chains:
        raise ValueError("distilled_timesteps is empty: a student needs the chains it was distilled at.")
    checked = {}
    for count, chain in chains.items():
        chain = [int(t) for t in chain]
        if int(count) != len(chain) or chain != sorted(set(chain), reverse=True):
            raise ValueError(f"distilled_timesteps[{count!r}] must be {count} descending timesteps, got {chain}.")
        if chain[0] >= num_train_timesteps or chain[-1] < 0:
            raise ValueError(f"distilled_timesteps[{count!r}] must lie in [0, {num_train_timesteps}), got {chain}.")
        checked[str(int(count))] = chain
    return checked
