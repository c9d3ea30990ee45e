"""Dual encoders: a registry with one module per backend."""

from hica.encoders.base import DualEncoder, ImageFeatures
from hica.encoders.registry import create_encoder, list_encoders, register

__all__ = ["DualEncoder", "ImageFeatures", "create_encoder", "list_encoders", "register"]
