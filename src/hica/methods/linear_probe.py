"""Linear probe (CLIP protocol, Radford et al. 2021): L2-regularised logistic regression on frozen features.

C is chosen from a log grid by validation accuracy, ties broken by validation log-loss, then by the
smaller C (stronger regularisation); the model is refit on the support set with the chosen C.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from hica.methods._select import select, val_score
from hica.methods.base import FewShotData, Method, register_method

C_GRID = tuple(float(c) for c in np.logspace(-2, 3, 11))


@register_method("linear_probe")
class LinearProbe(Method):
    """Logistic regression; hparams: ``c_grid``, ``max_iter``."""

    def __init__(self, c_grid: tuple[float, ...] = C_GRID, max_iter: int = 1000) -> None:
        super().__init__(c_grid=list(c_grid), max_iter=max_iter)

    def _fit(self, c: float, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=self.hparams["max_iter"], random_state=0).fit(x, y)

    def _proba(self, clf: LogisticRegression, x: np.ndarray, k: int) -> torch.Tensor:
        p = np.zeros((len(x), k))
        p[:, clf.classes_] = clf.predict_proba(x)
        return torch.from_numpy(p).float()

    def fit(self, data: FewShotData) -> LinearProbe:
        x, y = data.support.numpy(), data.support_labels.numpy()
        xv, yv = data.val.numpy(), data.val_labels
        k = data.num_classes
        c, s = select(self.hparams["c_grid"], lambda c: val_score(self._proba(self._fit(c, x, y), xv, k), yv))
        self.clf, self.k = self._fit(c, x, y), k
        self.selected = {"C": c, "val_accuracy": s[0]}
        return self

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(self.clf, features.numpy(), self.k)
