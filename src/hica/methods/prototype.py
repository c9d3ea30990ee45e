"""Metric baselines on frozen features: nearest class prototype and k-nearest neighbours.

``prototype``: cosine similarity to the renormalised class means (Prototypical Networks, Snell et al.,
NeurIPS 2017, with cosine distance as in SimpleShot, Wang et al., 2019); probabilities are
``softmax(cos / T)``. The temperature T does not change the predicted class, so it is chosen on the
validation shots by log-loss alone from ``TEMPERATURES`` (ties → the larger T, i.e. the softer model).

``knn``: scikit-learn ``KNeighborsClassifier`` with cosine distance and distance-weighted votes
(weight 1 / (1 − cos)); the probability of a class is its share of the weighted votes of the k nearest
support shots. k is chosen on validation from the odd values ``KS`` that do not exceed the smallest
number of support shots of a class (so K = 1 gives k = 1): accuracy, balanced accuracy, log-loss, then the
smaller k.

**Without validation shots** (the realistic protocol) the declared ``fixed_temperature`` (default 0.05, the
geometric middle of ``TEMPERATURES``; neither paper has a temperature: SimpleShot predicts the nearest
centroid) and ``fixed_k`` (default 1: the search above allows only k = 1 whenever a class has a single shot,
which imbalanced episodes often have) are used; ``selected`` adds ``fixed: [...]``. A null value refuses
such episodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from hica.methods.base import FewShotData, Method, register_method
from hica.methods.checks import need_shots
from hica.methods.selection import select, single_threaded, val_score
from hica.methods.settings import MethodSettings, PositiveFloat, PositiveGrid, PositiveInt, PositiveIntGrid

TEMPERATURES = (0.2, 0.1, 0.05, 0.02, 0.01)  # softest first: ties go to the softer model
KS = (1, 3, 5, 7, 9, 11, 13, 15)


@register_method("prototype")
class Prototype(Method):
    """Nearest class mean under cosine similarity; hparams: ``temperatures`` (given ascending, tried softest
    first), ``fixed_temperature`` (used without validation shots)."""

    class Settings(MethodSettings):
        temperatures: PositiveGrid = tuple(sorted(TEMPERATURES))
        fixed_temperature: PositiveFloat | None = 0.05

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.hparams["temperatures"] = sorted(self.hparams["temperatures"], reverse=True)

    @single_threaded
    def fit(self, data: FewShotData) -> Prototype:
        need_shots(data, self.name)
        means = torch.stack([data.support[data.support_labels == c].mean(0) for c in range(data.num_classes)])
        self.protos = F.normalize(means, dim=-1)
        fixed = self.fixed_value(len(data.val_labels), "fixed_temperature", "the temperature")
        if fixed is not None:
            self.t = fixed
            self.selected = {"temperature": fixed, "fixed": ["fixed_temperature"]}
            return self
        self.t, s = select(
            self.hparams["temperatures"],
            lambda t: val_score(self._proba(data.val, t), data.val_labels),
        )
        self.selected = {"temperature": self.t, "val_accuracy": s[0]}
        return self

    def _proba(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return (x @ self.protos.T / t).softmax(-1)

    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(features, self.t)


@register_method("knn")
class KNN(Method):
    """Cosine k-NN with distance-weighted votes; hparams: ``ks`` (candidate k, odd), ``fixed_k`` (used
    without validation shots, at most the number of support shots)."""

    class Settings(MethodSettings):
        ks: PositiveIntGrid = KS
        fixed_k: PositiveInt | None = 1

    def _fit(self, k: int, x: np.ndarray, y: np.ndarray) -> KNeighborsClassifier:
        knn = KNeighborsClassifier(n_neighbors=k, weights="distance", metric="cosine", algorithm="brute")
        return knn.fit(x, y)

    def _proba(self, knn: KNeighborsClassifier, x: torch.Tensor) -> torch.Tensor:
        p = np.zeros((len(x), self.c))
        p[:, knn.classes_] = knn.predict_proba(x.double().numpy())
        return torch.from_numpy(p).float()

    @single_threaded
    def fit(self, data: FewShotData) -> KNN:
        need_shots(data, self.name)
        self.c = data.num_classes
        per_class = int(torch.bincount(data.support_labels, minlength=self.c).min())
        ks = [k for k in self.hparams["ks"] if 1 <= k <= per_class] or [1]
        x, y = data.support.double().numpy(), data.support_labels.numpy()
        fixed = self.fixed_value(len(data.val_labels), "fixed_k", "k")
        if fixed is not None:
            k = min(fixed, len(y))
            self.knn = self._fit(k, x, y)
            self.selected = {"k": k, "fixed": ["fixed_k"]}
            return self
        fits = {k: self._fit(k, x, y) for k in ks}
        k, s = select(ks, lambda k: val_score(self._proba(fits[k], data.val), data.val_labels))
        self.knn = fits[k]
        self.selected = {"k": k, "val_accuracy": s[0]}
        return self

    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(self.knn, features)
