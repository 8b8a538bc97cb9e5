"""The pretrained pipeline that ships in pretrained/ddpm-mnist: it loads, and its samples are clear digits."""

import json
from pathlib import Path

import pytest
import torch

from ddpm_pipeline import DDPMMnistPipeline
from ddpm_pipeline.metrics import scores
from ddpm_pipeline.metrics.classifier import load_classifier

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained" / "ddpm-mnist"


def test_shipped_files():
    for name in [
        "model_index.json",
        "README.md",
        "samples.png",
        "trajectory.png",
        "evaluation.json",
        "train_config.yaml",
        "unet/diffusion_pytorch_model.safetensors",
    ]:
        assert (PRETRAINED / name).is_file(), name
    assert not list(PRETRAINED.rglob("*.bin")) and not list(PRETRAINED.glob("checkpoint-*"))
    card = (PRETRAINED / "README.md").read_text()
    assert "accelerate launch train_ddpm.py" in card and "minutes" in card
    evaluation = json.loads((PRETRAINED / "evaluation.json").read_text())
    assert evaluation["num_samples"] == 1000


# 25 steps guided everywhere, and the fast setting of the README (10 steps, guidance only on 0.3 T <= t < 0.8 T)
@pytest.mark.parametrize("steps, guidance_interval", [(25, (0.0, 1.0)), (10, (0.3, 0.8))])
def test_36_samples_pass_the_clear_rate_bar(steps, guidance_interval):
    pipe = DDPMMnistPipeline.from_pretrained(PRETRAINED, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(36) % 10
    out = pipe(
        batch_size=36,
        class_labels=labels,
        num_inference_steps=steps,
        guidance_interval=guidance_interval,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    _, probabilities = load_classifier().embed_and_classify(out.images * 2 - 1)
    assert scores.clear_rate(probabilities) >= 0.95
    assert scores.digit_accuracy(probabilities, labels) >= 0.95
