"""DDPMMnistPipeline: sample digits from a trained MnistUNet by running a scheduler's reverse process.

This file imports nothing from its own package, so that the Hub copy of it loads through diffusers' remote code
(`DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`) on a machine without ddpm_pipeline.
"""

import importlib
import json
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")


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

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a local folder or a Hub id.

        A repository pushed by ``ddpm-mnist push`` names its remote-code copies of the components in
        ``model_index.json`` (for ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``). With this
        package installed, those names are resolved to the package's own classes, so no remote code runs.
        """
        hub_kwargs = {
            key: kwargs[key]
            for key in ("revision", "token", "cache_dir", "local_files_only", "force_download")
            if key in kwargs
        }
        index = _read_model_index(str(pretrained_model_name_or_path), hub_kwargs)
        if not isinstance(index.get("_class_name"), list) or ("unet" in kwargs and "scheduler" in kwargs):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        package = importlib.import_module(cls.__module__.rsplit(".", 1)[0])
        components = {}
        for name in ("unet", "scheduler"):
            if name in kwargs:
                components[name] = kwargs[name]
                continue
            library, class_name = index[name]
            component_class = getattr(package, class_name, None) or getattr(
                importlib.import_module("diffusers"), class_name
            )
            extra = {key: kwargs[key] for key in ("dtype", "torch_dtype") if name == "unet" and key in kwargs}
            components[name] = component_class.from_pretrained(
                pretrained_model_name_or_path, subfolder=name, **hub_kwargs, **extra
            )
        return cls(**components)

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
        if isinstance(class_labels, (int, np.integer)):
            labels = torch.full((batch_size,), int(class_labels), dtype=torch.long)
        else:
            labels = torch.as_tensor(list(class_labels) if not torch.is_tensor(class_labels) else class_labels)
            labels = labels.long().reshape(-1)
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
        guidance_scale: float = 2.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_trajectory: bool = False,
        return_dict: bool = True,
    ) -> DDPMMnistPipelineOutput | tuple:
        """Generate ``batch_size`` digits by the reverse diffusion process.

        Args:
            batch_size: number of images (36 makes a 6x6 grid).
            class_labels: for a class-conditional UNet, one digit for all images or one per image; None gives
                0, 1, ..., 9, 0, ... in turn.
            guidance_scale: classifier-free guidance weight w (eps = eps_null + w (eps_digit - eps_null)); 1 turns
                guidance off. Ignored by an unconditional UNet.
            guidance_interval: ``(low, high)``, fractions of the training chain: guidance acts only at steps whose
                timestep t has ``low * T <= t < high * T`` (Kynkaenniemi et al. 2024, "Applying guidance in a
                limited interval"); elsewhere the UNet runs once, conditioned, without the null-label pass. The
                default ``(0, 1)`` guides every step.
            num_inference_steps: None runs the full training chain; fewer runs a respaced chain.
            generator: torch generator(s) for reproducible samples.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            return_trajectory: also return every frame from x_T to x_0 with its step.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if num_inference_steps is None:
            num_inference_steps = num_train_timesteps
        if (
            not isinstance(num_inference_steps, (int, np.integer))
            or not 1 <= num_inference_steps <= num_train_timesteps
        ):
            raise ValueError(
                f"num_inference_steps must be between 1 and the training chain's {num_train_timesteps} steps, "
                f"got {num_inference_steps!r}."
            )
        guidance_low, guidance_high = _check_guidance_interval(guidance_interval)
        labels = self._prepare_class_labels(class_labels, batch_size)
        device = self._execution_device
        if labels is not None:
            labels = labels.to(device)

        config = self.unet.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        sample = sample * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        timesteps = self.scheduler.timesteps
        frames, frame_steps = [], []
        if return_trajectory:
            frames.append(sample.cpu())
            frame_steps.append(int(timesteps[0]) + 1)
        for i, timestep in enumerate(self.progress_bar(timesteps)):
            guided = guidance_low * num_train_timesteps <= int(timestep) < guidance_high * num_train_timesteps
            model_output = self._predict(sample, timestep, labels, guidance_scale if guided else 1.0)
            sample = self.scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
            if return_trajectory:
                frames.append(sample.cpu())
                # the sample just produced sits at the next chain timestep (paper numbering: +1), or is x_0
                frame_steps.append(int(timesteps[i + 1]) + 1 if i + 1 < len(timesteps) else 0)

        images = self._to_output(sample, output_type)
        trajectory = None
        if return_trajectory:
            stacked = torch.stack(frames)
            if output_type == "pil":
                trajectory = [self._to_output(frame, "pil") for frame in stacked]
            elif output_type == "np":
                trajectory = np.stack([self._to_output(frame, "np") for frame in stacked])
            else:
                trajectory = (stacked / 2 + 0.5).clamp(0, 1)
        label_list = labels.tolist() if labels is not None else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, label_list, trajectory, frame_steps or None)
        return DDPMMnistPipelineOutput(
            images=images,
            class_labels=label_list,
            trajectory=trajectory,
            trajectory_timesteps=frame_steps or None,
        )


def _check_guidance_interval(interval) -> tuple[float, float]:
    """(low, high) as floats with 0 <= low < high <= 1, or a ValueError that says what a valid interval is."""
    try:
        low, high = (float(bound) for bound in interval)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0.0 <= low < high <= 1.0:  # also false for NaN
        raise ValueError(
            "guidance_interval must be two fractions of the training chain (low, high) with 0 <= low < high <= 1, "
            f"e.g. (0.6, 1.0) to guide only the noisiest 40% of timesteps; got {interval!r}."
        )
    return low, high


def _read_model_index(path_or_repo_id: str, hub_kwargs: dict) -> dict:
    """model_index.json of a local folder or a Hub repository, with a clear error when there is none."""
    if os.path.isdir(path_or_repo_id):
        index_path = os.path.join(path_or_repo_id, "model_index.json")
        if not os.path.isfile(index_path):
            raise OSError(f"{path_or_repo_id} has no model_index.json: it is not a saved pipeline.")
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            index_path = hf_hub_download(path_or_repo_id, "model_index.json", **hub_kwargs)
        except RepositoryNotFoundError:
            raise OSError(
                f"{path_or_repo_id!r} is neither a local folder nor a Hub repository you can access. Check the id "
                "(namespace/name), log in for a private repository, or give the path of a saved pipeline."
            ) from None
        except RevisionNotFoundError:
            raise OSError(f"{path_or_repo_id!r} has no revision {hub_kwargs.get('revision')!r}.") from None
        except EntryNotFoundError:
            raise OSError(f"{path_or_repo_id!r} holds no model_index.json: it is not a saved pipeline.") from None
    with open(index_path) as handle:
        return json.load(handle)
