"""Heads fit in closed form on frozen-backbone features: ``logreg`` and ``ncm``.

Both end as the Classifier's ordinary head, ``L2Normalize + Linear`` (``head_norm = "l2"``),
so the model file is one plain safetensors file and eval, predict and finetune
treat it like any other; a fine-tune starts from these weights.

* ``logreg``: multinomial logistic regression (scikit-learn, L-BFGS) on the L2-normalised
  features, scaled by sqrt(D) and centred (both folded into the Linear layer), with the
  L2 penalty C chosen by cross-validated log-loss on the training images: k-fold (k = 5,
  or the smallest class count if lower) up to CV_MAX_IMAGES training images, above that a
  single stratified 80/20 hold-out, each C warm-started from its neighbour's solution. With
  a single image in some class no fold can hold it out, so C is chosen on the val split.
* ``ncm``: nearest class mean of the L2-normalised features (cosine to each class mean,
  minus half its squared norm: the exact nearest-mean rule), with one temperature fitted
  on the val split so its probabilities mean something. No hyperparameter is fitted to
  the training images.

Importing this module costs no torch: the command layer reads the names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEADS = ("linear", "logreg", "ncm")
CLOSED_FORM_HEADS = ("logreg", "ncm")
# Chosen from benchmarks/heads_study.py (docs/benchmarks.md): logreg matched or beat the
# scikit-learn probe at every size and beat the SGD-trained head at 10 images per class or fewer.
DEFAULT_FROZEN_HEAD = "logreg"

CV_MAX_IMAGES = 2000  # k-fold CV up to this many training images; one 80/20 hold-out above
C_GRID = tuple(10 ** (k / 2) for k in range(-8, 5))  # 1e-4 .. 1e2 in half decades
C_START = 1e-2  # where the walk over C_GRID starts (the optimum was 3e-3..1e-1 on every data set tried)
PATH_TOL, FINAL_TOL = 1e-4, 1e-4
PATH_MAX_ITER, FINAL_MAX_ITER = 200, 500
ABSENT_LOGIT = 30.0  # a class without training images sits this far below the lowest bias


@dataclass
class HeadFit:
    """A fitted closed-form head: Linear weight (K x D) and bias (K) for L2-normalised features."""

    weight: Any
    bias: Any
    info: dict[str, Any] = field(default_factory=dict)


def _unit(x: Any) -> Any:
    import numpy as np

    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _full_rows(classes: Any, coef: Any, intercept: Any, num_classes: int, dim: int) -> tuple[Any, Any]:
    """scikit-learn's rows (present classes only; one row when binary) as K x D weights and K biases."""
    import numpy as np

    if coef.shape[0] == 1 and len(classes) == 2:  # binary: sigmoid(w.x + b) == softmax of [-w/2, w/2]
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_classes, dim), dtype=np.float64)
    bias = np.full(num_classes, float(np.min(intercept)) - ABSENT_LOGIT)
    weight[classes] = coef
    bias[classes] = intercept
    return weight, bias


def _log_loss(model: Any, x: Any, y: Any) -> tuple[float, int]:
    import numpy as np

    proba = model.predict_proba(x)
    col = np.searchsorted(model.classes_, y)
    known = (col < len(model.classes_)) & (model.classes_[np.minimum(col, len(model.classes_) - 1)] == y)
    p = np.where(known, proba[np.arange(len(y)), np.minimum(col, len(model.classes_) - 1)], 0.0)
    return float(-np.log(np.maximum(p, 1e-15)).sum()), len(y)


def _splits(y: Any, groups: Any, seed: int) -> tuple[list[tuple[Any, Any]], str]:
    """Cross-validation splits over images (an image's augmented views stay together)."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    n_images = len(np.unique(groups))
    per_class = np.bincount(y[np.unique(groups, return_index=True)[1]])
    smallest = int(per_class[per_class > 0].min())
    if smallest < 2:
        return [], "val split"
    if n_images > CV_MAX_IMAGES:
        folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(y, y, groups)
        return [next(iter(folds))], "20% hold-out"
    k = min(5, smallest)
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y, groups)), f"{k}-fold CV"


def fit_logreg(features: Any, labels: Any, num_classes: int, *, val: tuple[Any, Any] | None = None,
               groups: Any = None, class_weight: str | None = None, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> HeadFit:
    """Multinomial logistic regression on L2-normalised features, C by cross-validated log-loss.

    ``features``: (n, D) float array; ``groups``: the image each row comes from (augmented
    views), default one per row; ``val``: the val split's (features, labels), used to choose
    C only when cross-validation is impossible (a class with one training image).
    """
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    dim = x.shape[1]
    scale = math.sqrt(dim)
    z = _unit(x) * scale
    mean = z.mean(axis=0)
    z = z - mean
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    splits, how = _splits(y, groups, seed)
    if not splits:
        if val is None or len(val[1]) == 0:
            raise ValueError("logreg: a class has one training image and there is no val split to choose C on")
        zv = _unit(np.asarray(val[0], dtype=np.float32)) * scale - mean
        splits_data = [(z, y, zv, np.asarray(val[1], dtype=np.int64))]
    else:
        splits_data = [(z[tr], y[tr], z[va], y[va]) for tr, va in splits]
    weight = "balanced" if class_weight == "auto" else None

    def new_model(c: float, tol: float, max_iter: int) -> Any:
        return LogisticRegression(C=c, tol=tol, max_iter=max_iter, warm_start=True, class_weight=weight)

    scores: dict[float, float] = {}
    states: dict[float, list[tuple[Any, Any]]] = {}
    fold_models = [new_model(C_START, PATH_TOL, PATH_MAX_ITER) for _ in splits_data]

    def score(c: float) -> float:
        total, count = 0.0, 0
        t1 = time.perf_counter()
        for model, (xa, ya, xb, yb) in zip(fold_models, splits_data):
            model.set_params(C=c)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(xa, ya)
            loss, n = _log_loss(model, xb, yb)
            total, count = total + loss, count + n
        scores[c] = total / max(count, 1)
        states[c] = [(m.coef_.copy(), m.intercept_.copy()) for m in fold_models]
        if progress is not None:
            progress(f"logreg C={c:.2g}: {how} log-loss {scores[c]:.4f} ({time.perf_counter() - t1:.1f}s)")
        return scores[c]

    def restore(c: float) -> None:
        for model, (coef, intercept) in zip(fold_models, states[c]):
            model.coef_, model.intercept_ = coef.copy(), intercept.copy()

    grid = list(C_GRID)
    start = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / C_START)))
    best = start
    score(grid[start])
    for direction in (1, -1):  # walk up while it improves, then down from the start if up did not help
        if direction == -1 and best != start:
            break
        restore(grid[start])
        worse, i = 0, start + direction
        while 0 <= i < len(grid) and worse < 2:
            if score(grid[i]) < scores[grid[best]]:
                best, worse = i, 0
            else:
                worse += 1
            i += direction
    c_best = grid[best]
    final = new_model(c_best, FINAL_TOL, FINAL_MAX_ITER)
    if splits:  # warm start from the folds' mean solution at that C
        final.coef_ = np.mean([coef for coef, _ in states[c_best]], axis=0)
        final.intercept_ = np.mean([b for _, b in states[c_best]], axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        final.fit(z, y)
    coef, intercept = _full_rows(final.classes_, final.coef_, final.intercept_, num_classes, dim)
    # Fold the scale and the centring into the Linear layer acting on unit-length features.
    lin_weight = coef * scale
    lin_bias = intercept - coef @ mean
    info = {"C": c_best, "selection": how, "selection_log_loss": round(scores[c_best], 6),
            "C_tried": sorted(scores), "iterations": int(np.max(final.n_iter_)),
            "seconds": round(time.perf_counter() - t0, 3)}
    return HeadFit(lin_weight.astype(np.float32), lin_bias.astype(np.float32), info)


def fit_ncm(features: Any, labels: Any, num_classes: int, *, val: tuple[Any, Any] | None = None,
            **_: Any) -> HeadFit:
    """Nearest class mean on unit-length features; one temperature fitted on ``val`` (log-loss)."""
    import numpy as np

    t0 = time.perf_counter()
    u = _unit(np.asarray(features, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    means = np.zeros((num_classes, u.shape[1]))
    for c in present:
        means[c] = u[y == c].mean(axis=0)
    weight = means
    bias = -0.5 * (means ** 2).sum(axis=1)
    absent = np.setdiff1d(np.arange(num_classes), present)
    if len(absent):
        bias[absent] = bias[present].min() - ABSENT_LOGIT
    temperature = 1.0
    if val is not None and len(val[1]):
        temperature = _fit_temperature(_unit(np.asarray(val[0], dtype=np.float64)) @ weight.T + bias,
                                       np.asarray(val[1], dtype=np.int64))
    info = {"temperature": round(temperature, 6), "seconds": round(time.perf_counter() - t0, 3)}
    return HeadFit((weight * temperature).astype(np.float32), (bias * temperature).astype(np.float32), info)


def _fit_temperature(logits: Any, y: Any) -> float:
    """The scale s > 0 minimising the log-loss of softmax(s * logits) (a 1-D convex problem)."""
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    def loss(log_s: float) -> float:
        z = logits * math.exp(log_s)
        return float((logsumexp(z, axis=1) - z[np.arange(len(y)), y]).mean())

    result = minimize_scalar(loss, bounds=(-3.0, 9.0), method="bounded")
    return float(math.exp(result.x))


FITTERS = {"logreg": fit_logreg, "ncm": fit_ncm}
