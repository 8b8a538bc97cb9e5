"""The student: the teacher's UNet with one output per pixel (v, no variance), and the pipeline that samples it."""

import math

import torch

from ..pipeline_loading import DDPMMnistPipeline
from ..scheduling_distilled import DistilledLCMScheduler
from ..unet_mnist import MnistUNet


def student_from_teacher(teacher_unet: MnistUNet) -> MnistUNet:
    """A copy of the teacher's weights whose output layer keeps the noise channels only: the student predicts v,
    which starts near the teacher's noise prediction at low t, and needs no variance (its sampler adds fresh noise by
    the schedule, q(x_t | x_0), not by a learned Sigma)."""
    student = MnistUNet.from_config({**teacher_unet.config, "learned_variance": False})
    weights = {key: value.float() for key, value in teacher_unet.state_dict().items()}
    channels = student.config.in_channels
    weights["conv_out.weight"] = weights["conv_out.weight"][:channels]
    weights["conv_out.bias"] = weights["conv_out.bias"][:channels]
    student.load_state_dict(weights)
    return student


def predicted_x0(student_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v: the v-parameterisation (well-posed at t = T)."""
    alpha_bar = alpha_bar.view(-1, 1, 1, 1)
    return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * student_output


def student_pipeline(unet: MnistUNet, num_train_timesteps: int, chains: dict, default_steps: int) -> DDPMMnistPipeline:
    """The student as a DDPMMnistPipeline: its distilled chains, and a default call of ``default_steps`` steps
    without guidance (the teacher's guidance is in its weights)."""
    # LCMScheduler's grid of timesteps (every T / original_inference_steps) holds every chain's timesteps
    grid = math.gcd(num_train_timesteps, *(t + 1 for chain in chains.values() for t in chain))
    scheduler = DistilledLCMScheduler(
        num_train_timesteps=num_train_timesteps,
        distilled_timesteps=chains,
        original_inference_steps=num_train_timesteps // grid,
    )
    pipe = DDPMMnistPipeline(
        unet=unet,
        scheduler=scheduler,
        default_num_inference_steps=default_steps,
        default_guidance_scale=1.0,
        default_guidance_interval=(0.0, 1.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
