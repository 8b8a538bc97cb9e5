"""Training a DDPMMnistPipeline: ``main`` (what train_ddpm.py runs) and ``train`` (the loop, in loop.py)."""

from .loop import train
from .main import main

__all__ = ["main", "train"]
