"""Linear probe (CLIP, Radford et al., ICML 2021, App. A.3) with CoOp's search of C (Zhou et al., IJCV 2022;
official code github.com/KaiyangZhou/CoOp, ``lpclip/linear_probe.py`` and ``lpclip/linear_probe.sh``).

L2-regularised multinomial logistic regression (scikit-learn, lbfgs, ``max_iter`` 1000 as lpclip) on the
frozen features. The inverse regularisation strength C is searched on the validation shots as lpclip does:

1. **coarse**: every C of ``c_grid`` — lpclip's ``search_list`` 1e-6, 1e-4, …, 1e6 (every second power of
   ten), extended here by 1e-8 and 1e8 (``C_GRID_WIDE``); the best is c*;
2. **refinement** (``refine_steps``, lpclip's ``--num_step 8``): the interval [c*/10, 10·c*]; each step fits
   both ends, keeps the better one (the left unless the right is strictly better, as lpclip) and moves the
   other end to the interval's log10 midpoint. C is the better end of the last step (lpclip's ``c_final``),
   not the best C seen. With ``refine_steps: 0``, C = c*.

A candidate's score is hica's (``selection.val_score``: accuracy, then balanced accuracy, then −log-loss)
where lpclip compares accuracy only; a tie in the coarse search goes to the centre of the tied values
(``selection.select_central``; lpclip's argmax over its descending list keeps the larger C, and the log-loss
tie-break used before went to the most confident end: C = 1e6 on separable shots). ``selected``: ``C`` (the
final pick), ``C_coarse`` (c*), ``C_searched`` (every C fitted, in order), ``val_accuracy`` and ``edge``
(``["C"]`` when c* is an end of ``c_grid``: the optimum may lie beyond the coarse range). Every fit starts
from zero, as lpclip's: warm starts are not used because for large C on separable shots lbfgs stops on its
gradient tolerance within a few iterations, so where it stops — and the validation score — depends on the
starting point (measured: a different coarse pick). Each distinct C is fitted once (about 15 fits, well
under a second for hundreds of shots); the selected fit is the model.

**Without validation shots** (the realistic protocol) C is the declared ``fixed_c`` (default 100, a point of
lpclip's coarse grid; CLIP and lpclip always search C, so there is no published fixed value). On unit-norm
features and a few dozen shots scikit-learn's default C = 1 is a strong penalty: on an imbalanced support set
it mostly predicts the majority class (``tests/test_realistic_protocol.py``); C = 100 is weak, nearer the
realistic-protocol paper's unregularised linear probe. ``selected``: ``C`` and ``fixed: ["fixed_c"]``;
``fixed_c: null`` refuses such episodes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from hica.methods.base import FewShotData, Method, register_method
from hica.methods.checks import need_shots
from hica.methods.selection import Score, edge_picks, select, select_central, single_threaded, val_score
from hica.methods.settings import MethodSettings, NonNegativeInt, PositiveFloat, PositiveGrid, PositiveInt

C_GRID = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)  # lpclip's search_list (ascending here)
# The default coarse grid: lpclip's, one step (two decades) wider at each end. With lpclip's ends a strict
# validation best sat on an end in 3 of 30 runs (results/baselines_faithful/comparison.md, issue 15 §2).
C_GRID_WIDE = (1e-8, *C_GRID, 1e8)
REFINE_STEPS = 8  # lpclip's --num_step


def lpclip_search(
    score: Callable[[float], Score], grid: Sequence[float], steps: int
) -> tuple[float, Score, float, list[float]]:
    """lpclip's search of C: (final C, its score, coarse best c*, every C scored in order).

    ``score`` is called once per distinct C. Coarse: ``select_central`` over ``grid`` (the best accuracy and
    balanced accuracy; ties → the tied value nearest their centre in grid positions, then the log-loss). Then
    ``steps`` rounds on [c*/10, 10·c*]: score both ends; the right end wins only if strictly better; the
    loser is replaced by the log10 midpoint of the interval.
    """
    scores: dict[float, Score] = {}

    def memo(c: float) -> Score:
        if c not in scores:
            scores[c] = score(c)
        return scores[c]

    coarse = [memo(c) for c in grid]
    i, _ = select_central([(j,) for j in range(len(grid))], coarse)
    peak, best = grid[i], coarse[i]
    c = peak
    lo, hi = 1e-1 * peak, 1e1 * peak
    for _ in range(steps):
        c, best = select((lo, hi), memo)
        mid = 10.0 ** (0.5 * (math.log10(lo) + math.log10(hi)))
        lo, hi = (mid, hi) if c == hi else (lo, mid)
    return c, best, peak, list(scores)


@register_method("linear_probe")
class LinearProbe(Method):
    """Logistic regression on frozen features, C searched as CoOp's lpclip; hparams: ``c_grid`` (the
    coarse grid, ascending), ``refine_steps``, ``max_iter``, ``fixed_c`` (C without validation shots)."""

    class Settings(MethodSettings):
        c_grid: PositiveGrid = C_GRID_WIDE
        refine_steps: NonNegativeInt = REFINE_STEPS
        max_iter: PositiveInt = 1000
        fixed_c: PositiveFloat | None = 100.0

    def _fit(self, c: float, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        """A fit at C = ``c`` from zero, as lpclip (see the module docstring on warm starts)."""
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=self.hparams["max_iter"])
        with warnings.catch_warnings():  # large C on separable shots stops at max_iter, as in lpclip
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        self.fits[c] = clf
        return clf

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
        self.fits: dict[float, LogisticRegression] = {}
        fixed = self.fixed_value(len(yv), "fixed_c", "C")
        if fixed is not None:
            self.clf, self.fits = self._fit(fixed, x, y), {}
            self.selected = {"C": fixed, "fixed": ["fixed_c"]}
            return self
        grid = list(self.hparams["c_grid"])
        c, s, peak, searched = lpclip_search(
            lambda c: val_score(self._proba(self._fit(c, x, y), xv), yv), grid, self.hparams["refine_steps"]
        )
        self.clf = self.fits[c]
        self.fits = {}  # only the selected model is kept
        self.selected = {
            "C": c,
            "val_accuracy": s[0],
            "C_coarse": peak,
            "C_searched": searched,
            "edge": edge_picks({"C": peak}, {"C": grid}),
        }
        return self

    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._proba(self.clf, features.double().numpy())
