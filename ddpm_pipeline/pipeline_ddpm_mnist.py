"""DDPMMnistPipeline: sample digits from a trained MnistUNet by running a scheduler's reverse process.

This file imports nothing from its own package, so that the Hub copy of it loads through diffusers' remote code
(`DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`) on a machine without ddpm_pipeline.
"""

import importlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
SAMPLING_DEFAULT_KEYS = ("default_num_inference_steps", "default_guidance_scale", "default_guidance_interval")
# The default call: steps, the best FID per UNet call of the sampler study that keeps the clear rate at 0.95; scale and
# interval, the quickstart's guidance sweep over the README command's model trained on both CPU classes (bf16 and
# float32 training give other weights): readable and the asked-for digit >= 99 % of the time on both. Guidance up to
# T (the noisiest steps, where a sample picks its digit) is what made the float32 run readable (benchmarks/RESULTS.md).
# The training config's sampling defaults are these.
DEFAULT_NUM_INFERENCE_STEPS = 10
DEFAULT_GUIDANCE_SCALE = 3.0
DEFAULT_GUIDANCE_INTERVAL = (0.4, 1.0)


FULL_CHAIN = "full"  # num_inference_steps="full": every step of the training chain


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
        check_sampling_arguments(
            default_num_inference_steps, default_guidance_scale, default_guidance_interval, prefix="default_"
        )
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=float(default_guidance_scale),
            default_guidance_interval=[float(bound) for bound in default_guidance_interval],
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a local folder or a Hub id through diffusers' own loader.

        Everything ``DiffusionPipeline.from_pretrained`` takes works as it does there: ``torch_dtype`` (also
        per component, ``{"unet": torch.bfloat16, "default": torch.float32}``), ``variant``, ``device_map``,
        ``low_cpu_mem_usage``, ``use_safetensors``, ``revision``, ``cache_dir``, ``local_files_only`` and components
        or ``default_*`` sampling settings passed in. Two things are added around it: a missing or broken part is
        named (``model_index.json``, the unet, the scheduler, a saved default), and a repository pushed with
        remote code (``ddpm-mnist push``) loads the installed package's classes instead of running its code.
        """
        path = str(pretrained_model_name_or_path)
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        index, index_path = _read_model_index(path, hub_kwargs)
        local = os.path.isdir(path)
        folder = path if local else os.path.dirname(index_path)  # a Hub repository's snapshot in the cache
        package = cls.__module__.rsplit(".", 1)[0]
        for name in ("unet", "scheduler"):
            if name not in kwargs:
                _check_component_entry(index, name, index_path, folder if local else None, package)
        try:
            return super().from_pretrained(path, **kwargs)
        except Exception as error:  # diffusers' loader fails in many types: find the part at fault and name it
            raise _explain_load_error(error, index, index_path, folder, kwargs, package) from error

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """The repository's files for this pipeline, safetensors weights only (no pickle comes from the network).

        diffusers' own ``download`` would import a pushed repository's pipeline code to find its class; this class
        is known, so the files are fetched with ``huggingface_hub.snapshot_download`` and loaded from the cache.
        """
        from huggingface_hub import snapshot_download

        hub = {key: kwargs[key] for key in (*HUB_KWARGS, "proxies") if kwargs.get(key) is not None}
        return snapshot_download(
            pretrained_model_name,
            allow_patterns=["model_index.json", "*/*.json", "*/*.safetensors"],  # configs, weights (and shard indexes)
            **hub,
        )

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' ``load_config``, with the remote-code class names of a pushed ``model_index.json``
        (``["unet_mnist", "MnistUNet"]``) mapped to the installed package's modules, so that no remote code runs."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        _use_installed_classes(loaded[0] if isinstance(loaded, tuple) else loaded, cls.__module__.rsplit(".", 1)[0])
        return loaded

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

    def _predict(self, sample, timestep, class_labels, guidance_scale: float) -> torch.Tensor:
        """One network call, with classifier-free guidance on the noise channels when labels are given.

        The UNet runs in its own dtype (e.g. bfloat16 with ``torch_dtype=torch.bfloat16``); the sample and the
        scheduler's arithmetic stay in float32.
        """
        model_input = self.scheduler.scale_model_input(sample, timestep).to(self.unet.dtype)
        timesteps = torch.full((sample.shape[0],), int(timestep), device=sample.device, dtype=torch.long)
        if class_labels is None or guidance_scale == 1.0:
            output = self.unet(model_input, timesteps, class_labels).sample
        else:
            null = torch.full_like(class_labels, self.unet.config.num_class_embeds)
            both = self.unet(
                torch.cat([model_input, model_input]),
                torch.cat([timesteps, timesteps]),
                torch.cat([class_labels, null]),
            ).sample
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
    ) -> DDPMMnistPipelineOutput | tuple:
        """Generate ``batch_size`` digits by the reverse diffusion process.

        Args:
            batch_size: number of images (36 makes a 6x6 grid).
            class_labels: one digit for all images or one per image; None: 0, 1, ..., 9, 0, ... in turn.
            guidance_scale: classifier-free guidance weight w, eps = eps_null + w (eps_digit - eps_null); 1 = none.
            guidance_interval: ``(low, high)``: guide only at timesteps t with low T <= t < high T (Kynkaenniemi et
                al. 2024); elsewhere the UNet runs once, conditioned. ``(0, 1)`` guides every step.
            num_inference_steps: steps of a respaced chain; ``"full"`` runs the whole training chain.
            generator: a torch generator (or one per image) for reproducible samples.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            return_trajectory: also return every frame from x_T to x_0 with its step.

        Sampling arguments left out or None take the pipeline's saved defaults (``default_guidance_scale``, ...).
        """
        # 0. the call's settings: those passed, else those the pipeline was saved with; all checked
        T = self.scheduler.config.num_train_timesteps
        num_inference_steps, guidance_scale, (guidance_low, guidance_high) = self._checked_sampling(
            num_inference_steps, guidance_scale, guidance_interval
        )
        _check_call_arguments(batch_size, generator, output_type)
        device = self._execution_device
        labels = self._prepare_class_labels(class_labels, batch_size)
        labels = labels.to(device) if labels is not None else None

        # 1. x_T ~ N(0, I), and the (respaced) chain of timesteps T-1 > ... > 0
        sample = self._initial_noise(batch_size, generator, device)
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        # read back once, as Python numbers (every scheduler's step takes them): no step then waits for the device
        timesteps = self.scheduler.timesteps.tolist()

        # Frames are numbered as in the DDPM paper, where x_t for t = T..1 is noisy and x_0 the sample: the input to
        # the scheduler's (0-based) timestep t is the paper's x_{t+1}, so a frame's step is the timestep + 1.
        frames, frame_steps = [], []
        if return_trajectory:
            frames.append(sample.cpu())
            frame_steps.append(int(timesteps[0]) + 1)
        for i, timestep in enumerate(self.progress_bar(timesteps)):
            # 2. predict the noise (and the variance), with guidance inside the interval
            guided = guidance_low * T <= timestep < guidance_high * T
            model_output = self._predict(sample, timestep, labels, guidance_scale if guided else 1.0)
            # 3. x_t -> x_{t-1}: one draw from p_theta(x_{t-1} | x_t) (or the swapped-in scheduler's update)
            sample = self.scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
            # 4. record the frame: the sample now sits at the next timestep of the chain, or is x_0
            if return_trajectory:
                frames.append(sample.cpu())
                frame_steps.append(int(timesteps[i + 1]) + 1 if i + 1 < len(timesteps) else 0)

        # 5. [-1, 1] -> [0, 1] images (and frames) in the output type asked for
        self.maybe_free_model_hooks()
        return self._output(sample, labels, frames, frame_steps, output_type, return_dict)

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


def _read_model_index(path_or_repo_id: str, hub_kwargs: dict) -> tuple[dict, str]:
    """model_index.json of a local folder or a Hub repository, and where it was read, with a clear error when it is
    missing, unreadable or not a pipeline's."""
    if os.path.isdir(path_or_repo_id):
        index_path = os.path.join(path_or_repo_id, "model_index.json")
        if not os.path.isfile(index_path):
            raise OSError(f"{path_or_repo_id} has no model_index.json: it is not a saved pipeline.")
    else:
        index_path = _download_model_index(path_or_repo_id, hub_kwargs)
    try:
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OSError(f"{index_path} is not a readable model_index.json ({type(error).__name__}: {error}).") from None
    if not isinstance(index, dict):
        raise OSError(f"{index_path} must hold a JSON object naming the pipeline's components.")
    return index, index_path


def _download_model_index(path_or_repo_id: str, hub_kwargs: dict) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return hf_hub_download(path_or_repo_id, "model_index.json", **hub_kwargs)
    except HFValidationError:
        raise OSError(
            f"{path_or_repo_id!r} is not a local folder (there is none at that path) and not a Hub repository id "
            "(namespace/name) either. Give the folder of a saved pipeline, or a Hub id."
        ) from None
    except RepositoryNotFoundError:
        raise OSError(
            f"{path_or_repo_id!r} is neither a local folder nor a Hub repository you can access. Check the id "
            "(namespace/name), log in for a private repository, or give the path of a saved pipeline."
        ) from None
    except RevisionNotFoundError:
        raise OSError(f"{path_or_repo_id!r} has no revision {hub_kwargs.get('revision')!r}.") from None
    except EntryNotFoundError:
        raise OSError(f"{path_or_repo_id!r} holds no model_index.json: it is not a saved pipeline.") from None
    except LocalEntryNotFoundError:
        raise OSError(
            f"There is no local folder {path_or_repo_id!r}, and the Hub repository of that name could not be "
            "reached (offline, or not in the cache). Check the path, or connect and try again."
        ) from None


def _use_installed_classes(index: dict, package: str) -> dict:
    """Map a pushed repository's remote-code names to the installed package, in place: ``_class_name``
    ``["pipeline_ddpm_mnist", "DDPMMnistPipeline"]`` becomes ``"DDPMMnistPipeline"`` and a component's
    ``["unet_mnist", "MnistUNet"]`` becomes ``["<package>.unet_mnist", "MnistUNet"]`` (diffusers would otherwise
    import the copies in the repository)."""
    if isinstance(index.get("_class_name"), list) and len(index["_class_name"]) == 2:
        index["_class_name"] = index["_class_name"][1]
    for name, entry in index.items():
        if name.startswith("_") or not _is_library_class_pair(entry) or "." in entry[0]:
            continue
        module = f"{package}.{entry[0]}"
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            index[name] = [module, entry[1]]
    return index


def _is_library_class_pair(entry) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def _component_class(index: dict, name: str, index_path: str, package: str):
    """The class model_index.json names for a component (after the remote-code mapping), or an OSError naming it."""
    entry = _use_installed_classes(dict(index), package).get(name)
    if not _is_library_class_pair(entry):
        raise OSError(f"{index_path} does not name the {name!r} component as [library, class]; got {entry!r}.")
    for library in (entry[0], package, "diffusers"):
        try:
            component_class = getattr(importlib.import_module(library), entry[1], None)
        except ImportError:
            component_class = None
        if component_class is not None:
            return component_class
    raise OSError(
        f"{index_path} names {name} class {entry[1]!r} in {entry[0]!r}, which neither that library, "
        f"{package} nor diffusers has."
    )


def _check_component_entry(index: dict, name: str, index_path: str, folder: str | None, package: str):
    """Before diffusers loads anything: the component is named as a class that exists, and its folder is there."""
    _component_class(index, name, index_path, package)
    if folder is not None and not os.path.isdir(os.path.join(folder, name)):
        raise OSError(f"{os.path.join(folder, name)} is missing: a saved pipeline has a {name}/ folder.")


def _explain_load_error(error: Exception, index: dict, index_path: str, folder: str, kwargs: dict, package: str):
    """The error of a failed load, naming the part at fault: each component is loaded alone until one fails; if
    none does, the fault is in model_index.json (e.g. a saved default)."""
    for name in ("unet", "scheduler"):
        if name in kwargs or not os.path.isdir(os.path.join(folder, name)):
            continue
        component_class = _component_class(index, name, index_path, package)
        try:
            component_class.from_pretrained(folder, subfolder=name)
        except Exception as part_error:  # noqa: BLE001 - any failure of this part is reported with its type
            return OSError(
                f"The {name} in {os.path.join(folder, name)} could not be loaded "
                f"({type(part_error).__name__}: {part_error})."
            )
    if isinstance(error, ValueError):
        return ValueError(f"{index_path}: {error}")
    return error
