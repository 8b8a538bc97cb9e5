"""What a training config builds: the data, the UNet and noise scheduler, AdamW, the learning-rate schedule and EMA.

Shared by ``train_ddpm.py`` and the benchmarks, so that a benchmark measures the training loop's own objects.
"""

import warnings

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.optim.lr_scheduler import ConstantLR, LinearLR, SequentialLR

from .data import DatasetError, load_mnist_dataset, select_digits, to_training_tensors
from .pipeline_ddpm_mnist import DDPMMnistPipeline
from .scheduling_ddpm_cosine import CosineDDPMScheduler
from .training_config import WSD, TrainingConfig
from .unet_mnist import MnistUNet


def load_training_data(config: TrainingConfig):
    """uint8 images (N, 1, resolution, resolution) and digit labels (N,) or None, of the config's dataset."""
    dataset = load_mnist_dataset(config.dataset_name, config.train_data_dir, config.dataset_split)
    dataset = select_digits(dataset, config.digits, config.label_column)
    images, labels = to_training_tensors(dataset, config.image_column, config.label_column, config.resolution)
    if config.class_conditional and labels is None:
        raise DatasetError(
            f"class_conditional training needs labels, but there is no {config.label_column!r} column. "
            "Set label_column, or class_conditional: false."
        )
    return images, labels


def build_models(config: TrainingConfig, num_classes: int | None) -> tuple[MnistUNet, CosineDDPMScheduler]:
    unet = MnistUNet(
        sample_size=config.resolution,
        in_channels=1,
        **config.unet_kwargs(),
        num_class_embeds=num_classes,
    )
    scheduler = CosineDDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        variance_type="learned_range" if config.learned_variance else "fixed_small",
        prediction_type=config.prediction_type,
        timestep_spacing="linspace",  # respaced chains keep T-1 and 0, as in Improved DDPM
        sampling_order=config.sampling_order,
    )
    return unet, scheduler


def build_optimizer(config: TrainingConfig, parameters, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused kernel (one pass over all parameters instead of a loop per tensor) on CPU and CUDA."""
    return torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=torch.device(device).type in ("cpu", "cuda"),
    )


def build_lr_scheduler(config: TrainingConfig, optimizer, max_train_steps: int, at_step: int = 0):
    """diffusers' named schedule, stepped once per optimizer step, peaking at ``config.learning_rate``.

    The schedule is a function of the config, the run's length and the step, so it is always built from those:
    ``at_step`` = k gives it as it stands after k steps (stepped there; each step is microseconds)."""
    for group in optimizer.param_groups:  # torch's schedulers take their peak from these keys
        group["lr"] = group["initial_lr"] = config.learning_rate
    if config.lr_scheduler == WSD:
        cooldown = config.lr_cooldown_steps or round(config.lr_cooldown_fraction * max_train_steps)
        scheduler = warmup_stable_decay(optimizer, config.lr_warmup_steps, cooldown, max_train_steps)
    else:
        scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=max_train_steps
        )
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(at_step):
            scheduler.step()
    return scheduler


def warmup_stable_decay(optimizer, warmup_steps: int, cooldown_steps: int, total_steps: int):
    """Warmup-stable-decay (Hagele et al. 2024): a linear warm-up, a constant rate, and a linear cooldown to zero over
    the last ``cooldown_steps``, from torch's own schedulers. The rate at step k depends on the run's length only once
    the cooldown starts, so one long run's checkpoints can each branch a cooldown of their own."""
    cooldown_start = max(warmup_steps, total_steps - cooldown_steps)
    phases, milestones = [], []
    if warmup_steps:  # torch's LinearLR cannot start at 0, diffusers' warm-up does: start a millionth above it
        phases.append(LinearLR(optimizer, start_factor=1e-6, end_factor=1.0, total_iters=warmup_steps))
        milestones.append(warmup_steps)
    phases.append(ConstantLR(optimizer, factor=1.0, total_iters=0))
    milestones.append(cooldown_start)
    decay = max(1, total_steps - cooldown_start)  # a run no longer than its warm-up has a one-step cooldown after it
    phases.append(LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=decay))
    return SequentialLR(optimizer, phases, milestones)


def build_ema(config: TrainingConfig, unet: MnistUNet) -> EMAModel | None:
    """An EMA of the weights with diffusers' warmup (decay 1 - (1 + step / inv_gamma)^-power, capped), or None."""
    if not config.use_ema:
        return None
    return EMAModel(
        unet.parameters(),
        decay=config.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
        model_cls=MnistUNet,
        model_config=unet.config,
        foreach=True,  # one update over all tensors, not a Python loop
    )


def ema_pipeline(unet: MnistUNet, ema: EMAModel | None, scheduler_config, sampling_defaults: dict):
    """A separate pipeline holding the EMA weights (sampling never touches the training weights), carrying the
    sampling defaults its default call uses."""
    copy = MnistUNet.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    if ema is not None:
        ema.copy_to(copy.parameters())
    copy.eval()
    scheduler = CosineDDPMScheduler.from_config(scheduler_config)
    pipe = DDPMMnistPipeline(unet=copy, scheduler=scheduler, **sampling_defaults)
    pipe.set_progress_bar_config(disable=True)
    return pipe
