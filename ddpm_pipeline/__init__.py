"""ddpm-mnist: a cosine-schedule DDPM with learned variance for MNIST, built the diffusers way.

The public classes load on first use (as diffusers' own package does), so that the `ddpm-mnist push` command and
`--help` do not pay for importing torch and diffusers.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CosineDDPMScheduler": "scheduling_ddpm_cosine",
    "CosineDDPMSchedulerOutput": "scheduling_ddpm_cosine",
    "DDPMMnistPipeline": "pipeline_loading",
    "DDPMMnistPipelineOutput": "pipeline_ddpm_mnist",
    "MnistUNet": "unet_mnist",
    "MnistUNetOutput": "unet_mnist",
    "preferred_dtype": "hardware",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
