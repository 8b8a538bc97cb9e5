"""Train the evaluation classifier: `python -m ddpm_pipeline.metrics.train_classifier [--epochs 20] [--out PATH]`.

Trains on the embedded MNIST train split (4,500 digits, with small random affine jitter) plus generated non-digits in
the reject class, and reports accuracy on the held-out split (500 digits) and how often non-digits are rejected.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data import load_embedded_mnist, scale_to_model_range, to_training_tensors
from . import negatives
from .classifier import NOT_A_DIGIT, WEIGHTS_PATH, MnistClassifier


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate up to 12 degrees, scale 0.9-1.1, shift up to 2.5 pixels: handwriting varies this much."""
    n = len(images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2.5 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    return F.grid_sample(images + 1, grid, align_corners=False, padding_mode="zeros") - 1


@torch.no_grad()
def held_out_report(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    _, probabilities = model.embed_and_classify(images)
    confidence, predicted = probabilities.max(dim=1)
    report = {
        "held_out_images": len(images),
        "held_out_accuracy": (predicted == labels).float().mean().item(),
        "held_out_clear_rate": ((predicted != NOT_A_DIGIT) & (confidence >= 0.9)).float().mean().item(),
    }
    for name, batch in {
        "noise": negatives.pure_noise(len(images), generator),
        "blurred": negatives.blurred(images, generator, 2.5, 3.5),
        "half_denoised": negatives.half_denoised(images, generator),
        "scribbles": negatives.scribbles(len(images), generator),
    }.items():
        _, p = model.embed_and_classify(batch)
        report[f"rejected_{name}"] = (p.argmax(dim=1) == NOT_A_DIGIT).float().mean().item()
    return report


def train_classifier(epochs: int = 20, batch_size: int = 128, seed: int = 0, negative_share: float = 0.15):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    splits = load_embedded_mnist()
    train_images, train_labels = to_training_tensors(splits["train"])
    test_images, test_labels = to_training_tensors(splits["test"])
    train_images, test_images = scale_to_model_range(train_images), scale_to_model_range(test_images)

    model = MnistClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = len(train_images) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    negatives_per_batch = int(batch_size * negative_share)
    progress = tqdm(total=epochs * steps_per_epoch, desc="classifier")
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            # jitter half of the digits: bilinear resampling softens strokes, and the other half keeps the crisp
            # originals in view (an all-jittered diet teaches the model that crisp strokes are not digits)
            digits = train_images[index].clone()
            half = len(digits) // 2
            digits[:half] = random_affine(digits[:half], generator)
            rejects = negatives.make_negatives(train_images[index], negatives_per_batch, generator)
            inputs = torch.cat([digits, rejects])
            targets = torch.cat([train_labels[index], torch.full((len(rejects),), NOT_A_DIGIT)])
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    model.eval()
    return model, held_out_report(model, test_images, test_labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(WEIGHTS_PATH), help="where to write the safetensors weights")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, report = train_classifier(epochs=args.epochs, seed=args.seed)
    report["train_seconds"] = round(time.perf_counter() - started, 1)
    report["command"] = f"python -m ddpm_pipeline.metrics.train_classifier --epochs {args.epochs} --seed {args.seed}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
