"""Post-hoc EMA: choose the EMA length after training, from snapshots of the raw training weights.

Karras et al. (2024, "Analyzing and improving the training dynamics of diffusion models") average the weights with a
power-function profile, p(s) proportional to s^gamma over the steps s <= t, whose relative width sigma_rel is set
after training. They store two EMAs and solve for any other; with a 0.7 M-parameter UNet it is simpler to keep raw
snapshots every N steps (``--weight_snapshot_steps N``, 2.9 MB each) and integrate the profile over them directly:
the EMA at step t is sum_k w_k theta(s_k), w_k proportional to s_k^gamma.

    python -m ddpm_pipeline.posthoc_ema outputs/ddpm-mnist --sigma_rel 0.1 --out outputs/ddpm-mnist-ema010
"""

import argparse
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .flag_types import positive_float, saved_pipeline_folder, writable_folder
from .pipeline_loading import DDPMMnistPipeline

SNAPSHOT_DIR = "weight_snapshots"
SNAPSHOT_PATTERN = re.compile(r"^step-(\d+)\.safetensors$")


def save_snapshot(unet: torch.nn.Module, folder: Path, step: int) -> Path:
    """The module's weights at ``step``, written to a temporary name and renamed (a killed run leaves no half file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.safetensors"
    temporary = path.with_suffix(".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in unet.state_dict().items()}, str(temporary))
    os.replace(temporary, path)
    return path


def list_snapshots(folder: Path) -> list[tuple[int, Path]]:
    found = [
        (int(m.group(1)), p) for p in Path(folder).glob("step-*.safetensors") if (m := SNAPSHOT_PATTERN.match(p.name))
    ]
    return sorted(found)


def gamma_for_sigma_rel(sigma_rel: float) -> float:
    """The exponent gamma of the power profile with relative standard deviation sigma_rel (Karras et al. 2024, eq. 2:
    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))), by bisection: sigma_rel falls as gamma grows."""
    if not 0 < sigma_rel < 0.28:  # gamma = 0 (a plain average) gives 0.2887
        raise ValueError(f"sigma_rel must lie in (0, 0.28), got {sigma_rel}; 0.05-0.15 is typical.")

    def sigma(gamma):
        return (gamma + 1) ** 0.5 / ((gamma + 2) * (gamma + 3) ** 0.5)

    low, high = 0.0, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if sigma(middle) > sigma_rel else (low, middle)
    return (low + high) / 2


def profile_weights(steps: list[int], sigma_rel: float) -> torch.Tensor:
    """Normalised weights of the power-function EMA at the last step, one per snapshot step."""
    gamma = gamma_for_sigma_rel(sigma_rel)
    positions = torch.tensor(steps, dtype=torch.float64) / max(steps)
    weights = positions**gamma
    return weights / weights.sum()


def reconstruct(output_dir: Path, sigma_rel: float) -> dict[str, torch.Tensor]:
    """The power-function EMA of a run's snapshots, as a UNet state dict."""
    snapshots = list_snapshots(Path(output_dir) / SNAPSHOT_DIR)
    if not snapshots:
        raise FileNotFoundError(
            f"{output_dir} has no {SNAPSHOT_DIR}/: train with --weight_snapshot_steps N to keep them."
        )
    weights = profile_weights([step for step, _ in snapshots], sigma_rel)
    average = None
    for weight, (_, path) in zip(weights.tolist(), snapshots):
        state = load_file(str(path))
        if average is None:
            average = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
        for k, v in state.items():
            average[k] += weight * v.double()
    return {k: v.float() for k, v in average.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "output_dir",
        type=saved_pipeline_folder,
        help="a training output folder with weight_snapshots/ and a saved pipeline",
    )
    parser.add_argument("--sigma_rel", type=positive_float, required=True, help="relative EMA width, e.g. 0.05 to 0.15")
    parser.add_argument(
        "--out", type=writable_folder, required=True, help="where to save the pipeline with the reconstructed weights"
    )
    args = parser.parse_args(argv)
    if not (args.output_dir / SNAPSHOT_DIR).is_dir():
        parser.error(f"{args.output_dir} has no {SNAPSHOT_DIR}/: train with --weight_snapshot_steps N to keep them")
    pipe = DDPMMnistPipeline.from_pretrained(args.output_dir)
    pipe.unet.load_state_dict(reconstruct(Path(args.output_dir), args.sigma_rel))
    pipe.save_pretrained(args.out, safe_serialization=True)
    print(f"wrote {args.out} (power-function EMA, sigma_rel {args.sigma_rel})")


if __name__ == "__main__":
    main()
