"""A small MNIST classifier with an 11th class, "not a digit", that ships with the package.

An ordinary MNIST CNN calls almost any input a digit with high confidence (pure noise becomes a confident "8"), which
makes "clear sample" rates meaningless. This one is trained with negatives (noise, blurs, blobs, broken strokes and
half-denoised digits) in an explicit reject class, so the confidence of a digit class means the input looks like one.
Its penultimate layer (128 features) is the feature space of our Frechet distance.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

NOT_A_DIGIT = 10
NUM_CLASSES = 11
FEATURE_DIM = 128
WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "weights" / "mnist_classifier.safetensors"


class MnistClassifier(nn.Module):
    """conv-conv-pool x2, then a 128-unit feature layer and an 11-way head. Inputs: (B, 1, 28, 28) in [-1, 1].

    GroupNorm, not BatchNorm: training batches mix digits with very different non-digits, and per-sample
    normalisation keeps eval-mode outputs identical to train-mode ones.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GroupNorm(8, 64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.GroupNorm(8, 64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))

    @torch.no_grad()
    def embed_and_classify(self, images: torch.Tensor, batch_size: int = 500):
        """(features (N, 128), probabilities (N, 11)) for images in [-1, 1], in eval mode."""
        self.eval()
        features, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].float()
            if batch.shape[-2:] != (28, 28):
                raise ValueError(f"The classifier takes 28x28 images, got {tuple(batch.shape[-2:])}.")
            feature = self.features(batch)
            features.append(feature)
            probabilities.append(F.softmax(self.head(feature), dim=-1))
        return torch.cat(features), torch.cat(probabilities)


def load_classifier(path: str | Path | None = None) -> MnistClassifier:
    """The shipped classifier (or one at ``path``), in eval mode."""
    path = Path(path) if path else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"Classifier weights not found at {path}. "
            "Train them with `python -m ddpm_pipeline.metrics.train_classifier`."
        )
    model = MnistClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()
