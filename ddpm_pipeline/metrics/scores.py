"""Scores on classifier outputs and pixels: Frechet distance, clear rate, digit accuracy, coverage, memorization."""

import math

import numpy as np
import torch

from .classifier import NOT_A_DIGIT

CLEAR_CONFIDENCE = 0.9


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64.

    Tr((S_a S_b)^(1/2)) is taken as the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is
    symmetric positive semi-definite, so no general matrix square root (and no scipy) is needed.
    """
    a = features_a.double().cpu().numpy()
    b = features_b.double().cpu().numpy()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("The Frechet distance needs at least 2 images on each side.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def clear_mask(probabilities: torch.Tensor, threshold: float = CLEAR_CONFIDENCE) -> torch.Tensor:
    """A sample is clear when the classifier names a digit (not the reject class) with confidence >= threshold."""
    confidence, predicted = probabilities.max(dim=1)
    return (predicted != NOT_A_DIGIT) & (confidence >= threshold)


def share(mask: torch.Tensor) -> float:
    """The share of True in ``mask`` as count / total in double precision: 950 of 1,000 is exactly 0.95 (a float32
    mean gives 0.94999999, below a 0.95 bar that the count meets)."""
    return int(mask.sum()) / mask.numel()


def clear_rate(probabilities: torch.Tensor, threshold: float = CLEAR_CONFIDENCE) -> float:
    return share(clear_mask(probabilities, threshold))


def digit_accuracy(probabilities: torch.Tensor, requested: torch.Tensor) -> float:
    """Share of samples whose predicted class (reject class included) is the digit that was asked for."""
    return share(probabilities.argmax(dim=1).cpu() == requested.cpu())


def coverage(probabilities: torch.Tensor) -> tuple[float, list[int]]:
    """Entropy of the histogram of predicted digits (reject class left out), divided by log 10: 1 = uniform."""
    predicted = probabilities[:, :NOT_A_DIGIT].argmax(dim=1)
    histogram = torch.bincount(predicted.cpu(), minlength=NOT_A_DIGIT).double()
    share = histogram / histogram.sum()
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
    return entropy / math.log(NOT_A_DIGIT), histogram.long().tolist()


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Euclidean pixel distance from each query image to its nearest reference image."""
    return nearest(queries, references, chunk)[0]


def nearest(queries: torch.Tensor, references: torch.Tensor, chunk: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query image's nearest reference image, in Euclidean pixel distance."""
    q = queries.reshape(len(queries), -1).float()
    r = references.reshape(len(references), -1).float()
    distances, indices = [], []
    for start in range(0, len(q), chunk):
        best = torch.cdist(q[start : start + chunk], r).min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def memorization(samples: torch.Tensor, train_images: torch.Tensor, held_out_images: torch.Tensor) -> dict:
    """Distance to the nearest training image over distance to the nearest held-out image, per sample.

    A copy of a training image scores 0. A model that generalises scores near or above the ratio real held-out-like
    images get (somewhat below 1 when the training set is the larger one: more candidates lie closer).
    """
    ratio = nearest_distances(samples, train_images) / nearest_distances(samples, held_out_images).clamp(min=1e-8)
    return {
        "median_ratio": ratio.median().item(),
        "share_below_0.5": share(ratio < 0.5),
        "train_images": len(train_images),
        "held_out_images": len(held_out_images),
    }
