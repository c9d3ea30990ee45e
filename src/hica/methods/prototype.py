"""Metric baselines: nearest class prototype (Snell et al., NeurIPS 2017, cosine) and k-nearest neighbours."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hica.methods._select import select, val_score
from hica.methods.base import FewShotData, Method, register_method

TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2)


@register_method("prototype")
class Prototype(Method):
    """Cosine to the normalised class means; softmax temperature chosen on validation (log-loss tie-break)."""

    def __init__(self, temperatures: tuple[float, ...] = TEMPERATURES) -> None:
        super().__init__(temperatures=list(temperatures))

    def fit(self, data: FewShotData) -> Prototype:
        protos = torch.stack(
            [data.support[data.support_labels == c].mean(0) for c in range(data.num_classes)]
        )
        self.protos = F.normalize(protos, dim=-1)
        # Accuracy does not depend on the temperature; validation log-loss chooses it.
        t, _ = select(
            self.hparams["temperatures"], lambda t: val_score(self._proba(data.val, t), data.val_labels)
        )
        self.t = t
        self.selected = {"temperature": t}
        return self

    def _proba(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return (x @ self.protos.T / t).softmax(-1)

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(features, self.t)


@register_method("knn")
class KNN(Method):
    """Cosine k-NN with similarity-weighted votes (softmax of similarities / 0.05 over the k neighbours).

    k is chosen on validation from {1, 3, 5, 7, 9, 15} ∩ [1, support size]; ties → smaller k.
    """

    def __init__(self, ks: tuple[int, ...] = (1, 3, 5, 7, 9, 15), temperature: float = 0.05) -> None:
        super().__init__(ks=list(ks), temperature=temperature)

    def fit(self, data: FewShotData) -> KNN:
        self.x, self.y, self.c = data.support, data.support_labels, data.num_classes
        ks = [k for k in self.hparams["ks"] if k <= len(self.x)] or [1]
        self.k, s = select(ks, lambda k: val_score(self._proba(data.val, k), data.val_labels))
        self.selected = {"k": self.k, "val_accuracy": s[0]}
        return self

    def _proba(self, q: torch.Tensor, k: int) -> torch.Tensor:
        sim = q @ self.x.T
        top, idx = sim.topk(k, dim=1)
        w = (top / self.hparams["temperature"]).softmax(-1)
        p = torch.zeros(len(q), self.c)
        p.scatter_add_(1, self.y[idx], w)
        # a little mass on every class keeps log-loss finite and AUC defined
        return (p + 1e-4) / (1 + 1e-4 * self.c)

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(features, self.k)
