"""The rules of the components a training config builds, asked of those components and named by config key.

TrainingConfig checks each key's own type and range and the rules between keys; whether a UNet, a scheduler, a
pipeline's default call and a learning-rate schedule can be built from the values is for those components to say.
``parse_args`` and ``load_config`` give a config that passed both: the one a run trains with.
"""

from diffusers.optimization import SchedulerType

from ..config_sources import parse_training_config
from ..pipeline_ddpm_mnist import SamplingArgumentError, check_sampling_arguments
from ..scheduling_ddpm_cosine import CosineDDPMScheduler, SchedulerConfigError
from ..training_config import WSD, ConfigError, TrainingConfig
from ..unet_mnist import MnistUNet, UNetConfigError

UNET_ARGUMENT_KEYS = {"sample_size": "resolution", "num_class_embeds": "class_conditional"}
# diffusers' named schedules that need nothing but a warm-up and a length (piecewise_constant needs its step rules)
LR_SCHEDULES = tuple(kind.value for kind in SchedulerType if kind is not SchedulerType.PIECEWISE_CONSTANT)


def parse_args(argv: list[str] | None = None) -> TrainingConfig:
    """The config of `train_ddpm.py`'s flags (defaults, --config file, flags), with the components' rules checked."""
    return check_buildable(parse_training_config(argv))


def load_config(values: dict) -> TrainingConfig:
    return check_buildable(TrainingConfig.from_dict(values))


def check_buildable(config: TrainingConfig) -> TrainingConfig:
    """``config``, if every component can be built from it; else ConfigError naming the key at fault."""
    try:
        CosineDDPMScheduler.check_config(config.num_train_timesteps, prediction_type=config.prediction_type)
    except SchedulerConfigError as error:
        _fail(config, error.argument, str(error))
    unet = {k: v for k, v in config.unet_kwargs().items() if k != "learned_variance"}
    num_classes = 10 if config.class_conditional else None
    try:
        MnistUNet.check_config(sample_size=config.resolution, in_channels=1, num_class_embeds=num_classes, **unet)
    except UNetConfigError as error:
        _fail(config, UNET_ARGUMENT_KEYS.get(error.argument, error.argument), str(error))
    try:
        check_sampling_arguments(
            config.num_inference_steps, config.guidance_scale, config.guidance_interval, config.num_train_timesteps
        )
    except SamplingArgumentError as error:
        _fail(config, error.argument, str(error))
    if config.lr_scheduler not in (WSD, *LR_SCHEDULES):
        _fail(config, "lr_scheduler", f"give {WSD} or one of diffusers' get_scheduler schedules that need only a "
              f"warm-up and a length: {', '.join(LR_SCHEDULES)}.")  # fmt: skip
    return config


def _fail(config: TrainingConfig, key: str, message: str):
    raise ConfigError(f"Invalid config value for {key!r} ({getattr(config, key)!r}): {message}")
