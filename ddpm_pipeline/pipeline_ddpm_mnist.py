"""DDPMMnistPipeline: sample digits from a trained MnistUNet by running a scheduler's reverse process.

This file imports nothing from its own package, so that the Hub copy of it loads through diffusers' remote code
(`DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`) on a machine without ddpm_pipeline.
"""

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")
SAMPLING_DEFAULT_KEYS = ("default_num_inference_steps", "default_guidance_scale", "default_guidance_interval")
# The default call: steps, the best FID per UNet call of the sampler study that keeps the clear rate at 0.95; scale and
# interval, the quickstart's guidance sweep over the README command's model trained on both CPU classes (bf16 and
# float32 training give other weights): the lowest FID among the settings that are readable (clear rate within 0.02 of
# real digits') and right (the asked-for digit >= 98.5 % of the time) on both. Guidance up to T (the noisiest steps,
# where a sample picks its digit) is what made the float32 run right (benchmarks/RESULTS.md).
# The training config's sampling defaults are these.
DEFAULT_NUM_INFERENCE_STEPS = 10
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_GUIDANCE_INTERVAL = (0.5, 1.0)


FULL_CHAIN = "full"  # num_inference_steps="full": every step of the training chain
UNET_SLICE = 8  # images per UNet call when each image has its own generator (see DDPMMnistPipeline._unet)


class SamplingArgumentError(ValueError):
    """A sampling setting that cannot be used; ``argument`` names it (e.g. ``"guidance_scale"``)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@dataclass
class DDPMMnistPipelineOutput(BaseOutput):
    """Output of [`DDPMMnistPipeline`].

    Args:
        images: the samples, as a list of PIL images, a numpy array (B, H, W, C) or a tensor (B, C, H, W) in [0, 1].
        class_labels: the digit each image was conditioned on (None for an unconditional model).
        trajectory: with ``return_trajectory=True``, every frame from x_T (pure noise) to x_0, in the same
            ``output_type``: a list of frames (each a list of PIL images), an array (F, B, H, W, C) or a tensor
            (F, B, C, H, W).
        trajectory_timesteps: the step of each frame in the DDPM paper's numbering: T for pure noise, ..., 0 for the
            final sample. Frame f shows the input to the scheduler step at timestep ``trajectory_timesteps[f] - 1``.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    class_labels: list[int] | None = None
    trajectory: list | np.ndarray | torch.Tensor | None = None
    trajectory_timesteps: list[int] | None = None


class TrajectoryRecorder:
    """A step-end callback that keeps every frame from x_T to x_0 (on the CPU), for ``return_trajectory=True``."""

    def __init__(self, noise: torch.Tensor):
        self.frames = [noise.cpu()]

    def __call__(self, pipe, step: int, timestep: int, callback_kwargs: dict) -> dict:
        self.frames.append(callback_kwargs["latents"].cpu())
        return {}


def _scheduler_takes_variance(scheduler) -> bool:
    """Whether ``scheduler.step`` consumes the learned-variance channels rather than only the noise prediction."""
    # by class name, so that the remote-code copy of this file needs no import of our scheduler
    name = type(scheduler).__name__
    if name == "CosineDDPMScheduler":
        return scheduler.config.variance_type == "learned_range"
    if name == "DDPMScheduler":
        return scheduler.config.variance_type in ("learned", "learned_range")
    return False


class DDPMMnistPipeline(DiffusionPipeline):
    """Generate MNIST digits with a [`MnistUNet`] and a DDPM-family scheduler.

    Works with [`CosineDDPMScheduler`] (learned or fixed variance, full or respaced chain) and with diffusers'
    schedulers built from its config, e.g. ``DDIMScheduler.from_config(pipe.scheduler.config)``; a scheduler that
    takes no variance is given the noise channels only.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "model_output"]

    def __init__(
        self,
        unet,
        scheduler,
        default_num_inference_steps: int | str = DEFAULT_NUM_INFERENCE_STEPS,
        default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        default_guidance_interval: tuple[float, float] | list[float] = DEFAULT_GUIDANCE_INTERVAL,
    ):
        """``default_*``: what a call without those arguments uses, saved in ``model_index.json`` with the pipeline
        (steps ``"full"`` = the full training chain). A model trained with other settings carries its own."""
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        if default_num_inference_steps is None:  # saved by versions where None meant the full chain
            default_num_inference_steps = FULL_CHAIN
        # the saved call must run on this scheduler's chain (a loader names model_index.json beside the key)
        check_sampling_arguments(
            default_num_inference_steps,
            default_guidance_scale,
            default_guidance_interval,
            num_train_timesteps=getattr(getattr(scheduler, "config", None), "num_train_timesteps", None),
            prefix="default_",
        )
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=float(default_guidance_scale),
            default_guidance_interval=[float(bound) for bound in default_guidance_interval],
        )

    def _prepare_class_labels(self, class_labels, batch_size: int) -> torch.Tensor | None:
        num_classes = self.unet.config.num_class_embeds
        if num_classes is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given, but this pipeline's UNet is unconditional (num_class_embeds=None). "
                    "Call the pipeline without class_labels, or load a class-conditional model."
                )
            return None
        if class_labels is None:  # a balanced spread: 0, 1, ..., 9, 0, 1, ...
            return torch.arange(batch_size) % num_classes
        if isinstance(class_labels, (int, np.integer)) and not isinstance(class_labels, bool):
            labels = torch.full((batch_size,), int(class_labels), dtype=torch.long)
        else:
            labels = _digit_tensor(class_labels)
            if len(labels) != batch_size:
                raise ValueError(
                    f"class_labels has {len(labels)} entries but batch_size is {batch_size}: give one label per "
                    "image, or a single digit for all of them."
                )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"class_labels must be digits in [0, {num_classes - 1}], got {labels.tolist()}.")
        return labels

    def _to_output(self, images: torch.Tensor, output_type: str):
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images.cpu()
        array = images.cpu().permute(0, 2, 3, 1).float().numpy()
        return array if output_type == "np" else self.numpy_to_pil(array)

    def _predict(self, sample, timestep, class_labels, guidance_scale: float, chunk: int | None) -> torch.Tensor:
        """One network call, with classifier-free guidance on the noise channels when labels are given.

        The UNet runs in its own dtype (e.g. bfloat16 with ``torch_dtype=torch.bfloat16``); the sample and the
        scheduler's arithmetic stay in float32.
        """
        model_input = self.scheduler.scale_model_input(sample, timestep).to(self.unet.dtype)
        timesteps = torch.full((sample.shape[0],), int(timestep), device=sample.device, dtype=torch.long)
        if class_labels is None or guidance_scale == 1.0:
            output = self._unet(model_input, timesteps, class_labels, chunk)
        else:
            null = torch.full_like(class_labels, self.unet.config.num_class_embeds)
            both = self._unet(
                torch.cat([model_input, model_input]),
                torch.cat([timesteps, timesteps]),
                torch.cat([class_labels, null]),
                chunk,
            )
            conditional, unconditional = both.chunk(2)
            channels = sample.shape[1]
            guided = unconditional[:, :channels] + guidance_scale * (
                conditional[:, :channels] - unconditional[:, :channels]
            )
            output = torch.cat([guided, conditional[:, channels:]], dim=1)  # keep the conditional variance
        output = output.float()
        if not _scheduler_takes_variance(self.scheduler):
            output = output[:, : sample.shape[1]]
        return output

    def _unet(self, sample, timesteps, class_labels, chunk: int | None) -> torch.Tensor:
        """The UNet on the whole batch, or (``chunk``) on slices of exactly ``chunk`` images, the last one padded:
        kernels pick their arithmetic by batch size, so a fixed size makes each image's numbers its own."""
        if chunk is None:
            return self.unet(sample, timesteps, class_labels).sample
        count, outputs = sample.shape[0], []
        for start in range(0, count, chunk):
            index = torch.arange(start, start + chunk, device=sample.device).clamp(max=count - 1)
            labels = class_labels[index] if class_labels is not None else None
            outputs.append(self.unet(sample[index], timesteps[index], labels).sample[: count - start])
        return torch.cat(outputs)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 36,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        num_inference_steps: int | str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_trajectory: bool = False,
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> DDPMMnistPipelineOutput | tuple:
        """Generate ``batch_size`` digits by the reverse diffusion process.

        Args:
            batch_size: number of images (36 makes a 6x6 grid).
            class_labels: one digit for all images or one per image; None: 0, 1, ..., 9, 0, ... in turn.
            guidance_scale: classifier-free guidance weight w, eps = eps_null + w (eps_digit - eps_null); 1 = none.
            guidance_interval: ``(low, high)``: guide only at timesteps t with low T <= t < high T (Kynkaenniemi et
                al. 2024); elsewhere the UNet runs once, conditioned. ``(0, 1)`` guides every step.
            num_inference_steps: steps of a respaced chain; ``"full"`` runs the whole training chain.
            generator: a torch generator, or one per image: then each image is the same whatever the batch around
                it (its noise is its own, and the UNet runs on slices of a fixed size).
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            return_trajectory: also return every frame from x_T to x_0 with its step.
            callback_on_step_end: diffusers' per-step hook, ``callback(pipe, i, t, callback_kwargs) -> dict``, called
                after each step with the tensors named in ``callback_on_step_end_tensor_inputs`` (``"latents"``: the
                sample x_{t-1}, in [-1, 1]; ``"model_output"``); a ``"latents"`` it returns replaces the sample.
                diffusers' ``PipelineCallback`` and ``MultiPipelineCallbacks`` work too.

        Sampling arguments left out or None take the pipeline's saved defaults (``default_guidance_scale``, ...).
        """
        # 0. the call's settings: those passed, else those the pipeline was saved with; all checked
        T = self.scheduler.config.num_train_timesteps
        num_inference_steps, guidance_scale, (guidance_low, guidance_high) = self._checked_sampling(
            num_inference_steps, guidance_scale, guidance_interval
        )
        _check_call_arguments(batch_size, generator, output_type)
        callbacks = self._checked_callbacks(callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = self._prepare_class_labels(class_labels, batch_size)
        labels = labels.to(device) if labels is not None else None
        chunk = UNET_SLICE if isinstance(generator, list) else None

        # 1. x_T ~ N(0, I), and the (respaced) chain of timesteps T-1 > ... > 0
        sample = self._initial_noise(batch_size, generator, device)
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        # read back once, as Python numbers (every scheduler's step takes them): no step then waits for the device
        timesteps = self.scheduler.timesteps.tolist()
        # diffusers' step-end callbacks may change the guidance (pipe._guidance_scale) or stop early (pipe._interrupt)
        self._num_timesteps, self._guidance_scale, self._interrupt = len(timesteps), guidance_scale, False
        recorder = TrajectoryRecorder(sample) if return_trajectory else None
        if recorder is not None:
            callbacks.append((recorder, ["latents"]))

        for i, timestep in enumerate(self.progress_bar(timesteps)):
            if self._interrupt:
                continue
            # 2. predict the noise (and the variance), with guidance inside the interval
            guided = guidance_low * T <= timestep < guidance_high * T
            model_output = self._predict(sample, timestep, labels, self._guidance_scale if guided else 1.0, chunk)
            # 3. x_t -> x_{t-1}: one draw from p_theta(x_{t-1} | x_t) (or the swapped-in scheduler's update)
            sample = self.scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
            # 4. the step's callbacks in diffusers' convention: the user's, then the trajectory's
            for callback, names in callbacks:
                tensors = {"latents": sample, "model_output": model_output}
                outputs = callback(self, i, timestep, {name: tensors[name] for name in names}) or {}
                sample = outputs.pop("latents", sample)

        # 5. [-1, 1] -> [0, 1] images (and frames) in the output type asked for. Frames are numbered as in the DDPM
        # paper, where x_t for t = T..1 is noisy and x_0 the sample: the input to the scheduler's (0-based) timestep t
        # is the paper's x_{t+1}, so a frame's step is the timestep + 1.
        self.maybe_free_model_hooks()
        frames = recorder.frames if recorder is not None else []
        frame_steps = [int(t) + 1 for t in timesteps] + [0] if recorder is not None else []
        return self._output(sample, labels, frames, frame_steps, output_type, return_dict)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _checked_callbacks(self, callback, tensor_inputs) -> list[tuple]:
        """[(the user's callback, the tensors it asked for)], or []; a PipelineCallback names its own tensors."""
        if callback is None:
            return []
        if hasattr(callback, "tensor_inputs"):  # diffusers' PipelineCallback / MultiPipelineCallbacks
            tensor_inputs = callback.tensor_inputs
        tensor_inputs = list(tensor_inputs or ["latents"])
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown or not callable(callback):
            raise ValueError(
                f"callback_on_step_end must be callable as callback(pipe, i, t, callback_kwargs) and ask for tensors "
                f"among {self._callback_tensor_inputs}; got {callback!r} asking for {tensor_inputs}."
            )
        return [(callback, tensor_inputs)]

    def _initial_noise(self, batch_size: int, generator, device) -> torch.Tensor:
        """x_T ~ N(0, I) in float32 (the scheduler's arithmetic stays float32 whatever the UNet's dtype)."""
        config = self.unet.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return sample * self.scheduler.init_noise_sigma

    def _checked_sampling(self, num_inference_steps, guidance_scale, guidance_interval):
        """(steps, scale, (low, high)) of a call, resolved against the saved defaults and checked."""
        steps, scale, interval = self.resolve_sampling(num_inference_steps, guidance_scale, guidance_interval)
        T = self.scheduler.config.num_train_timesteps
        interval = check_sampling_arguments(steps, scale, interval, num_train_timesteps=T)
        if self.scheduler.config.get("distilled_timesteps") is not None and scale != 1.0:
            raise SamplingArgumentError(
                "guidance_scale",
                f"guidance_scale={scale}: this is a distilled student, whose weights already hold its teacher's "
                "guidance; it was not distilled for guidance on top. Call it with guidance_scale=1 (its default).",
            )
        return T if steps == FULL_CHAIN else steps, scale, interval

    def _output(self, sample, labels, frames, frame_steps, output_type, return_dict):
        images = self._to_output(sample, output_type)
        trajectory = self._trajectory_output(frames, output_type) if frames else None
        label_list = labels.tolist() if labels is not None else None
        if not return_dict:
            return (images, label_list, trajectory, frame_steps or None)
        return DDPMMnistPipelineOutput(
            images=images, class_labels=label_list, trajectory=trajectory, trajectory_timesteps=frame_steps or None
        )

    def resolve_sampling(self, num_inference_steps=None, guidance_scale=None, guidance_interval=None):
        """(steps, guidance scale, guidance interval) of a call: the arguments given, and for each None the
        pipeline's saved default. Steps may be ``"full"``, the whole training chain."""
        if num_inference_steps is None:
            num_inference_steps = self.config.get("default_num_inference_steps", DEFAULT_NUM_INFERENCE_STEPS)
            num_inference_steps = FULL_CHAIN if num_inference_steps is None else num_inference_steps
        if guidance_scale is None:
            guidance_scale = self.config.get("default_guidance_scale", DEFAULT_GUIDANCE_SCALE)
        if guidance_interval is None:
            guidance_interval = self.config.get("default_guidance_interval", DEFAULT_GUIDANCE_INTERVAL)
        return num_inference_steps, guidance_scale, guidance_interval

    def _trajectory_output(self, frames: list[torch.Tensor], output_type: str):
        stacked = torch.stack(frames)
        if output_type == "pil":
            return [self._to_output(frame, "pil") for frame in stacked]
        if output_type == "np":
            return np.stack([self._to_output(frame, "np") for frame in stacked])
        return (stacked / 2 + 0.5).clamp(0, 1)


def check_sampling_arguments(
    num_inference_steps, guidance_scale, guidance_interval, num_train_timesteps: int | None = None, prefix: str = ""
) -> tuple[float, float]:
    """The rules on a call's sampling settings (also on the defaults saved with a pipeline, and on the training
    config that sets them); returns the guidance interval as floats. Errors are ``SamplingArgumentError`` naming
    the argument, in the message and as ``.argument``."""
    steps_ok = num_inference_steps == FULL_CHAIN or (
        isinstance(num_inference_steps, (int, np.integer))
        and not isinstance(num_inference_steps, bool)
        and num_inference_steps >= 1
        and (num_train_timesteps is None or num_inference_steps <= num_train_timesteps)
    )
    if not steps_ok:
        limit = f" and the training chain's {num_train_timesteps} steps" if num_train_timesteps else ""
        raise SamplingArgumentError(
            f"{prefix}num_inference_steps",
            f"{prefix}num_inference_steps must be an integer between 1{limit}, or {FULL_CHAIN!r} for the full "
            f"chain, got {num_inference_steps!r}.",
        )
    name = f"{prefix}guidance_scale"
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating, np.integer)):
        raise SamplingArgumentError(
            name, f"{name} must be a number, e.g. 2.0 (1 = no guidance), got {guidance_scale!r}."
        )
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise SamplingArgumentError(
            name, f"{name} must be a finite number >= 0 (1 = no guidance), got {guidance_scale!r}."
        )
    return _check_guidance_interval(guidance_interval, f"{prefix}guidance_interval")


def _digit_tensor(class_labels) -> torch.Tensor:
    """class_labels given as a list, array or tensor of whole numbers, flattened; else a ValueError naming it."""
    problem = ValueError(
        f"class_labels must be a digit or one digit per image (e.g. class_labels=7 or [0, 1, 2]), got {class_labels!r}."
    )
    if isinstance(class_labels, (str, bytes, bool, float)):
        raise problem
    try:
        labels = torch.as_tensor(list(class_labels) if not torch.is_tensor(class_labels) else class_labels)
    except (TypeError, ValueError, RuntimeError):
        raise problem from None
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise problem
    return labels.long().reshape(-1)


def _check_call_arguments(batch_size, generator, output_type):
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    generators = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or a list of them, got "
            f"{type(generator).__name__}."
        )
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"generator is a list of {len(generator)} generators; give one per image ({batch_size}).")


def _check_guidance_interval(interval, name: str = "guidance_interval") -> tuple[float, float]:
    """(low, high) as floats with 0 <= low < high <= 1, or a ValueError that says what a valid interval is."""
    try:
        low, high = (float(bound) for bound in interval)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0.0 <= low < high <= 1.0:  # also false for NaN
        raise SamplingArgumentError(
            name,
            f"{name} must be two fractions of the training chain (low, high) with 0 <= low < high <= 1, "
            f"e.g. (0.6, 1.0) to guide only the noisiest 40% of timesteps; got {interval!r}.",
        )
    return low, high
