"""Training: one Lightning Fabric loop for CPU, one GPU and ``torchrun`` multi-GPU/multi-node."""

from hica.train.checkpoint import find_latest, load_checkpoint, save_checkpoint
from hica.train.engine import TrainConfig, train

__all__ = ["TrainConfig", "find_latest", "load_checkpoint", "save_checkpoint", "train"]
