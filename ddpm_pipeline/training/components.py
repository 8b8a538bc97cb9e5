"""What a training config builds: the data, the UNet and noise scheduler, AdamW, the learning-rate schedule and EMA.

``build_components`` makes them all, in the order that fixes the weights' initialisation for a seed; the loop and the
benchmarks use the same objects, so that a benchmark measures the training loop's own.
"""

import functools
import warnings
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.optim.lr_scheduler import ConstantLR, LinearLR, SequentialLR

from ..batch_plan import BatchPlan, lognormal_timestep_probabilities
from ..data import DatasetError, load_mnist_dataset, select_digits, to_training_tensors
from ..hardware import PrecisionChoice
from ..pipeline_loading import DDPMMnistPipeline
from ..scheduling_ddpm_cosine import CosineDDPMScheduler
from ..training_config import WSD, ConfigError, TrainingConfig
from ..unet_mnist import MnistUNet


@dataclass(kw_only=True)
class Components:
    """What the loop trains with. Built once; the loop's own mutable state is in ``loop.RunState``."""

    accelerator: Accelerator
    precision: PrecisionChoice
    unet: torch.nn.Module  # as prepared by Accelerate (wrapped for several processes)
    noise_scheduler: CosineDDPMScheduler
    optimizer: torch.optim.Optimizer
    ema: EMAModel | None
    plan: BatchPlan
    images: torch.Tensor  # uint8, (N, 1, H, W), on the training device
    labels: torch.Tensor | None  # on the training device
    num_classes: int | None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def ema_pipeline(self, config: TrainingConfig):
        """A pipeline with the EMA weights and the config's sampling defaults, for pictures and the saved model, on
        the training device (a GPU samples the pictures and the evaluation far faster than one CPU thread)."""
        unet = self.accelerator.unwrap_model(self.unet)
        pipe = ema_pipeline(unet, self.ema, self.noise_scheduler.config, config.sampling_defaults())
        return pipe.to(self.device)


class EarlierScheduleSlot:
    """Holds the place where checkpoints of earlier versions kept the learning-rate scheduler's state (Accelerate
    numbers custom states in registration order), so that they still resume; nothing is read from it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass


def build_components(config: TrainingConfig, accelerator: Accelerator, precision: PrecisionChoice) -> Components:
    """Data, models, plan, optimizer and EMA, prepared by Accelerate; errors in the data surface here, before any
    step. The seed fixes the weights' initialisation; all later randomness comes from the BatchPlan."""
    set_seed(config.seed)
    images, labels = load_training_data(config)
    # on the device once (uint8: 47 MB for all of MNIST), so that a step's batch is gathered there, not copied over
    images = images.to(accelerator.device)
    labels = labels.to(accelerator.device) if labels is not None else None
    num_classes = 10 if config.class_conditional else None
    unet, noise_scheduler = build_models(config, num_classes)
    if config.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    plan = build_batch_plan(config, accelerator, len(images), noise_scheduler)
    optimizer = build_optimizer(config, unet.parameters(), accelerator.device)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(EarlierScheduleSlot())
    ema = build_ema(config, accelerator.unwrap_model(unet))
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return Components(
        accelerator=accelerator,
        precision=precision,
        unet=unet,
        noise_scheduler=noise_scheduler,
        optimizer=optimizer,
        ema=ema,
        plan=plan,
        images=images,
        labels=labels,
        num_classes=num_classes,
    )


def build_batch_plan(config: TrainingConfig, accelerator: Accelerator, num_images: int, noise_scheduler) -> BatchPlan:
    """Data order and randomness as functions of (seed, step), this process's slice of each global batch."""
    probabilities = None
    if config.timestep_sampling == "lognormal":
        probabilities = lognormal_timestep_probabilities(noise_scheduler.alphas_cumprod)
    try:
        return BatchPlan(
            config.seed,
            config.train_batch_size,
            num_images,
            accelerator.num_processes,
            accelerator.process_index,
            timestep_probabilities=probabilities,
        )
    except ValueError as error:
        raise ConfigError(f"Invalid config value for 'train_batch_size': {error}; lower train_batch_size.") from None


def load_training_data(config: TrainingConfig):
    """uint8 images (N, 1, resolution, resolution) and digit labels (N,) or None, of the config's dataset."""
    if config.train_data_dir:  # a folder can change between runs: read it every time
        folder = (config.train_data_dir, config.dataset_split, config.skip_unreadable_images, config.digits)
        images, labels = _decoded(None, *folder, config.image_column, config.label_column, config.resolution)
    else:  # a named data set is the same for every run of a process: decoded once (a copy each time)
        digits = tuple(config.digits) if config.digits else None
        columns = (config.image_column, config.label_column, config.resolution)
        images, labels = _decoded_named(config.dataset_name, config.dataset_split, digits, *columns)
        images, labels = images.clone(), labels.clone() if labels is not None else None
    if config.class_conditional and labels is None:
        raise DatasetError(
            f"class_conditional training needs labels, but there is no {config.label_column!r} column. "
            "Set label_column, or class_conditional: false."
        )
    return images, labels


def _decoded(dataset_name, train_data_dir, split, skip_unreadable, digits, image_column, label_column, resolution):
    dataset = load_mnist_dataset(dataset_name, train_data_dir, split, skip_unreadable)
    dataset = select_digits(dataset, digits and list(digits), label_column)
    return to_training_tensors(dataset, image_column, label_column, resolution)


@functools.lru_cache(maxsize=4)
def _decoded_named(dataset_name, split, digits, image_column, label_column, resolution):
    return _decoded(dataset_name, None, split, False, digits, image_column, label_column, resolution)


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
        cooldown = cooldown_length(config, max_train_steps)
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


def cooldown_length(config: TrainingConfig, total_steps: int) -> int:
    """The steps at the end of a run of ``total_steps`` whose learning rates depend on its length: wsd's cooldown;
    every step of any other schedule (cosine, linear, ... decay from the first step on)."""
    if config.lr_scheduler != WSD:
        return total_steps
    return config.lr_cooldown_steps or round(config.lr_cooldown_fraction * total_steps)


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
