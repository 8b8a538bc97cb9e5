"""ddpm-mnist: a cosine-schedule DDPM with learned variance for MNIST, built the diffusers way."""

from .hardware import preferred_dtype
from .pipeline_ddpm_mnist import DDPMMnistPipeline, DDPMMnistPipelineOutput
from .scheduling_ddpm_cosine import CosineDDPMScheduler, CosineDDPMSchedulerOutput
from .unet_mnist import MnistUNet, MnistUNetOutput

__version__ = "0.1.0"

__all__ = [
    "CosineDDPMScheduler",
    "CosineDDPMSchedulerOutput",
    "DDPMMnistPipeline",
    "DDPMMnistPipelineOutput",
    "MnistUNet",
    "MnistUNetOutput",
    "preferred_dtype",
]
