"""Linear probe (CLIP, Radford et al., ICML 2021; CoOp protocol, Zhou et al., IJCV 2022).

L2-regularised multinomial logistic regression (scikit-learn, lbfgs) on the frozen features. The inverse
regularisation strength C is chosen on the validation shots from ``C_GRID`` (10⁻² … 10³, 11 values, log
spaced): highest validation accuracy, then balanced accuracy, then lowest validation log-loss, then the
smaller C. The model is refit on the support set with the chosen C (the support is unchanged, so the refit
is the selected model itself).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from hica.methods.base import FewShotData, Method, register_method
from hica.methods.checks import need_shots
from hica.methods.selection import select, single_threaded, val_score
from hica.methods.settings import MethodSettings, PositiveGrid, PositiveInt

C_GRID = tuple(float(c) for c in np.logspace(-2, 3, 11))


@register_method("linear_probe")
class LinearProbe(Method):
    """Logistic regression on frozen features; hparams: ``c_grid`` (ascending), ``max_iter``."""

    class Settings(MethodSettings):
        c_grid: PositiveGrid = C_GRID
        max_iter: PositiveInt = 1000

    def _fit(self, c: float, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=self.hparams["max_iter"])
        return clf.fit(x, y)

    def _proba(self, clf: LogisticRegression, x: np.ndarray) -> torch.Tensor:
        p = np.zeros((len(x), self.k))
        p[:, clf.classes_] = clf.predict_proba(x)
        return torch.from_numpy(p).float()

    @single_threaded
    def fit(self, data: FewShotData) -> LinearProbe:
        need_shots(data, self.name)
        x, y = data.support.double().numpy(), data.support_labels.numpy()
        xv, yv = data.val.double().numpy(), data.val_labels
        self.k = data.num_classes
        fits = {c: self._fit(c, x, y) for c in self.hparams["c_grid"]}
        c, s = select(fits, lambda c: val_score(self._proba(fits[c], xv), yv))
        self.clf = fits[c]
        self.selected = {"C": c, "val_accuracy": s[0]}
        return self

    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(self.clf, features.double().numpy())
