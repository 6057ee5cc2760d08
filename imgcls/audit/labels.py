"""Suspected label errors: out-of-fold probabilities scored by confident learning (cleanlab).

The probe is scikit-learn's multinomial logistic regression on L2-normalised features,
fit K times: each train+val image is scored by the probe that did not see it. Test images
are scored by a probe fit on all of train+val (they are held out already). Folds come from
the manifest's ``"fold"`` (``prepare --folds``) when every train+val record has one, else
from a seeded StratifiedGroupKFold whose groups keep duplicates (exact and near) together,
so no image is scored by a probe that trained on a copy of it.

cleanlab's ``find_label_issues`` (prune by noise rate: as many issues per class pair as the
confident joint estimates; plus its ``predicted_neq_given`` filter, because on a few hundred
images the confident joint's per-class thresholds are too coarse) says which labels are suspect; cleanlab's label-quality score
(the out-of-fold probability of the given label, "self-confidence") ranks them, and only
issues scoring below ``max_label_score`` are flagged (the precision knob; see
docs/design/audit.md for how the default was measured).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgcls.errors import ImgclsError

AUDIT_HINT = "pip install 'imgcls[audit]' (cleanlab)"


class MissingCleanlab(ImgclsError):
    def __init__(self) -> None:
        super().__init__(f"the label-error check needs cleanlab: {AUDIT_HINT}; or leave it out with "
                         f"--checks duplicates,outliers")


def require_cleanlab() -> None:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        raise MissingCleanlab() from None


@dataclass
class LabelResult:
    probs: np.ndarray  # (N, C) out-of-fold (or held-out) probabilities; NaN rows: not scored
    scored: np.ndarray  # (N,) bool: labelled and scored
    issue: np.ndarray  # (N,) bool: flagged as a suspected label error
    score: np.ndarray  # (N,) label-quality score in [0, 1] (NaN: not scored)
    suggested: np.ndarray  # (N,) class index, -1 when not scored
    folds: int
    fold_source: str
    cleanlab_issues: int  # what find_label_issues flagged before the score threshold
    probe_accuracy: float  # out-of-fold accuracy against the given labels


def normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _probe(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=1000, random_state=seed)


def _fit_predict(x_train, y_train, x_test, n_classes: int, c: float, seed: int) -> np.ndarray:
    out = np.zeros((len(x_test), n_classes))
    present = np.unique(y_train)
    if len(present) == 1:  # a fold with one class: it can only say that class
        out[:, present[0]] = 1.0
        return out
    clf = _probe(c, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter on tiny folds
        clf.fit(x_train, y_train)
    out[:, clf.classes_] = clf.predict_proba(x_test)
    return out


def assign_folds(labels: np.ndarray, groups: np.ndarray, given: Sequence[int | None], k: int,
                 seed: int) -> tuple[np.ndarray, int, str]:
    """Fold of each pool record: the manifest's own when all have one, else stratified by class, grouped."""
    if len(given) and all(isinstance(f, int) for f in given) and len(set(given)) >= 2:
        folds = np.asarray(given, dtype=int)
        return folds, len(set(given)), "the manifest's \"fold\" (prepare --folds)"
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(labels)
    k = int(min(k, counts.max(), len(np.unique(groups))))
    if k < 2:
        return np.zeros(len(labels), dtype=int), 1, "none"
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.zeros(len(labels), dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the least populated class has only n members"
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[test] = f
    return folds, k, f"stratified by class, duplicates kept together, seed {seed}"


def find_label_errors(features: np.ndarray, labels: np.ndarray, pool: np.ndarray, held_out: np.ndarray,
                      groups: np.ndarray, given_folds: Sequence[int | None], n_classes: int, *, folds: int,
                      c: float, max_score: float, seed: int, probs: np.ndarray | None = None) -> LabelResult:
    """``labels``: class index per record (-1: unlabelled); ``pool``: train+val records; ``held_out``: test.

    With ``probs`` (a trained model's own probabilities, --model-probs) the probe is not fit.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n = len(labels)
    x = normalise(features.astype(np.float64))
    out = np.full((n, n_classes), np.nan)
    pool_idx = np.flatnonzero(pool & (labels >= 0))
    test_idx = np.flatnonzero(held_out & (labels >= 0))
    k, source = 0, "the model's own probabilities (--model-probs)"
    if probs is not None:
        scored_idx = np.concatenate([pool_idx, test_idx])
        out[scored_idx] = probs[scored_idx]
    else:
        fold_of, k, source = assign_folds(labels[pool_idx], groups[pool_idx],
                                          [given_folds[int(i)] for i in pool_idx], folds, seed)
        if k >= 2:
            for f in range(k):
                train, test = pool_idx[fold_of != f], pool_idx[fold_of == f]
                if len(test):
                    out[test] = _fit_predict(x[train], labels[train], x[test], n_classes, c, seed)
            if len(test_idx):
                out[test_idx] = _fit_predict(x[pool_idx], labels[pool_idx], x[test_idx], n_classes, c, seed)
            scored_idx = np.concatenate([pool_idx, test_idx])
        else:
            scored_idx = np.zeros(0, dtype=int)
    scored = np.zeros(n, dtype=bool)
    scored[scored_idx] = True
    issue = np.zeros(n, dtype=bool)
    score = np.full(n, np.nan)
    suggested = np.full(n, -1)
    found = 0
    accuracy = float("nan")
    y = labels[scored_idx]
    if len(scored_idx) and len(np.unique(y)) >= 2:
        # cleanlab wants every class it is told about to be present: work on the present ones
        present = np.unique(y)
        remap = {int(cl): i for i, cl in enumerate(present)}
        p = out[scored_idx][:, present]
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        yy = np.array([remap[int(v)] for v in y])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mask = find_label_issues(yy, p, filter_by="prune_by_noise_rate", n_jobs=1)
            # On small data the confident joint's per-class thresholds are coarse (soft probabilities
            # never clear them): also take what the probe predicts as another class, then threshold.
            mask |= find_label_issues(yy, p, filter_by="predicted_neq_given", n_jobs=1)
            quality = get_label_quality_scores(yy, p, method="self_confidence")
        found = int(mask.sum())
        issue[scored_idx] = mask & (quality < max_score)
        score[scored_idx] = quality
        full = out[scored_idx].copy()
        full[np.arange(len(y)), y] = -1.0  # the suggestion is never the given label
        suggested[scored_idx] = full.argmax(axis=1)
        accuracy = float((out[scored_idx].argmax(axis=1) == y).mean())
    return LabelResult(probs=out, scored=scored, issue=issue, score=score, suggested=suggested, folds=k,
                       fold_source=source, cleanlab_issues=found, probe_accuracy=accuracy)
