"""hica: few-shot and zero-shot medical image classification with vision-language models."""

from hica.errors import HicaError

__version__ = "0.1.0"
__all__ = ["HicaError", "__version__"]
