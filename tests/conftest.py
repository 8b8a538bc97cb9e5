"""Shared fixtures: tiny models that make every test run in seconds."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test talks to the real Hub; the Hub tests set their own endpoint

import pytest
import torch

from ddpm_pipeline import CosineDDPMScheduler, DDPMMnistPipeline, MnistUNet

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = str(ROOT / "configs" / "tiny.yaml")  # a seconds-long run: a very small UNet on a 50-step chain


def tiny_args(output_dir, *extra):
    """train_ddpm.py flags for a tiny run on the digits 0 and 1 (900 training images), writing to ``output_dir``."""
    return ["--config", TINY_CONFIG, "--output_dir", str(output_dir), "--digits", "0,1", *extra]


# attention at the coarsest level too (the default has it only in the middle block), so that its path is tested
TINY_UNET = dict(
    block_out_channels=(16, 32, 32), attention_levels=(False, False, True), attention_head_dim=16, norm_num_groups=4
)


def tiny_pipeline(num_class_embeds=10, learned_variance=True, num_train_timesteps=50, seed=0):
    torch.manual_seed(seed)
    unet = MnistUNet(num_class_embeds=num_class_embeds, learned_variance=learned_variance, **TINY_UNET)
    # the output layer starts at zero; give it weights so that outputs depend on every input
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    variance_type = "learned_range" if learned_variance else "fixed_small"
    scheduler = CosineDDPMScheduler(
        num_train_timesteps=num_train_timesteps, variance_type=variance_type, timestep_spacing="linspace"
    )
    pipe = DDPMMnistPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe():
    return tiny_pipeline()


@pytest.fixture
def reload_ema_elsewhere(monkeypatch):
    """Accelerate reloads custom states onto the CPU, so on a GPU a resumed EMA would mix devices with its model.
    Calling the returned function makes every later reload put the EMA's tensors on the meta device instead, and
    records each ``EMAModel.to`` (meta tensors hold no data: the move makes zeros); it returns the list of devices the
    EMA is then moved to."""
    from diffusers.training_utils import EMAModel

    def patch() -> list:
        original = EMAModel.load_state_dict

        def load_elsewhere(self, state_dict):
            original(self, state_dict)
            self.shadow_params = [p.to("meta") for p in self.shadow_params]

        moves = []

        def to(self, device=None, dtype=None, non_blocking=False):
            moves.append(torch.device(device))
            self.shadow_params = [torch.zeros(p.shape, dtype=p.dtype, device=device) for p in self.shadow_params]

        monkeypatch.setattr(EMAModel, "load_state_dict", load_elsewhere)
        monkeypatch.setattr(EMAModel, "to", to)
        return moves

    return patch
