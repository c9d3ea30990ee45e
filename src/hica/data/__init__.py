"""Datasets: formats, splits, episodes and class text (descriptors)."""

from hica.data.sample import Dataset, Sample, load_image, load_mask

__all__ = ["Dataset", "Sample", "load_image", "load_mask"]
