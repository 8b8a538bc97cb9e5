"""Images that are not digits, for the classifier's reject class and for testing the metrics.

All functions take and return (N, 1, 28, 28) tensors in [-1, 1] and draw from the given generator.
"""

import math

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def pure_noise(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(count, 1, 28, 28, generator=generator).clamp(-1, 1)


def uniform_noise(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=generator) * 2 - 1


def blurred(digits: torch.Tensor, generator: torch.Generator, low=2.0, high=4.0) -> torch.Tensor:
    sigma = float(torch.empty(1).uniform_(low, high, generator=generator))
    return gaussian_blur(digits, sigma)


def half_denoised(digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Digits under forward-diffusion noise at signal fractions where the digit is not yet legible."""
    signal = torch.empty(len(digits), 1, 1, 1).uniform_(0.05, 0.45, generator=generator)
    noise = torch.randn(digits.shape, generator=generator)
    return (signal.sqrt() * digits + (1 - signal).sqrt() * noise).clamp(-1, 1)


def blobs(count: int, generator: torch.Generator) -> torch.Tensor:
    """A few soft bright blobs on black: ink, but no stroke structure."""
    canvas = torch.zeros(count, 1, 28, 28)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    for _ in range(3):
        cy = torch.empty(count, 1, 1, 1).uniform_(6, 22, generator=generator)
        cx = torch.empty(count, 1, 1, 1).uniform_(6, 22, generator=generator)
        r = torch.empty(count, 1, 1, 1).uniform_(2, 6, generator=generator)
        canvas = canvas + torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return canvas.clamp(0, 1) * 2 - 1


def scribbles(count: int, generator: torch.Generator) -> torch.Tensor:
    """Random straight strokes: pen marks that form no digit."""
    canvas = torch.zeros(count, 1, 28, 28)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    for _ in range(int(torch.randint(3, 6, (1,), generator=generator))):
        p = torch.empty(count, 4, 1, 1).uniform_(3, 25, generator=generator)
        y0, x0, y1, x1 = p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4]
        dy, dx = y1 - y0, x1 - x0
        length2 = (dy**2 + dx**2).clamp(min=1.0)
        s = (((yy - y0) * dy + (xx - x0) * dx) / length2).clamp(0, 1)
        distance = (yy - (y0 + s * dy)) ** 2 + (xx - (x0 + s * dx)) ** 2
        canvas = torch.maximum(canvas, torch.exp(-distance / 1.5))
    return canvas * 2 - 1


def overlaid(digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Two different digits drawn on top of each other, shifted: strokes of a digit, but not one digit."""
    other = digits[torch.randperm(len(digits), generator=generator)]
    shift = int(torch.randint(-4, 5, (1,), generator=generator))
    return torch.maximum(digits, torch.roll(other, shifts=(shift, -shift), dims=(2, 3)))


def constant(count: int, generator: torch.Generator) -> torch.Tensor:
    level = torch.empty(count, 1, 1, 1).uniform_(-1, 1, generator=generator)
    return level.expand(count, 1, 28, 28).clone()


def make_negatives(digits: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """A mixed batch of ``count`` non-digits, some made from the given real ``digits``."""
    makers = [
        lambda n: pure_noise(n, generator),
        lambda n: uniform_noise(n, generator),
        lambda n: blurred(digits[:n], generator),
        lambda n: half_denoised(digits[:n], generator),
        lambda n: blobs(n, generator),
        lambda n: scribbles(n, generator),
        lambda n: overlaid(digits[:n], generator),
        lambda n: constant(n, generator),
    ]
    share = max(1, count // len(makers))
    parts = [make(min(share, len(digits))) for make in makers]
    return torch.cat(parts)[:count]
