"""Metrics from true labels and predicted probabilities, computed with scikit-learn.

Everything here works on class *indices* of one model (``y_true`` in 0..C-1, ``probs``
of shape N x C) and returns plain JSON-ready Python values: no NumPy scalars, no NaN
(undefined values are ``None``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

# Perturbation values that mean "not perturbed" (a clean copy kept beside perturbed ones).
CLEAN_PERTURBATIONS = (None, "", "none", "clean", "identity")


def default_top_k(n_classes: int) -> int:
    """5, or fewer when there are few classes (top-k with k >= C is always 1.0)."""
    return max(1, min(5, n_classes - 1))


def _f(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE over ``n_bins`` equal-width confidence bins (lower, upper], with the bins themselves.

    ECE = sum over bins of |accuracy - mean confidence| weighted by the bin's share of
    images; the bins feed the reliability diagram.
    """
    n = len(confidence)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        conf: float | None = None
        acc: float | None = None
        if count:
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += abs(acc - conf) * count / n
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": conf, "accuracy": acc})
    return (float(ece) if n else 0.0), bins


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    top_k: int | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Summary metrics, per-class scores, confusion matrix and calibration.

    Macro and weighted averages (and balanced accuracy) run over the classes present in
    the true or predicted labels, as scikit-learn does by default; per-class rows cover
    every class of the model (support 0 rows included).
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    n_classes = len(classes)
    all_labels = list(range(n_classes))
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    k = default_top_k(n_classes) if top_k is None else max(1, min(int(top_k), n_classes))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        accuracy = accuracy_score(y_true, y_pred)
        balanced = balanced_accuracy_score(y_true, y_pred)
        if k >= n_classes:
            top_k_acc = 1.0
        elif n_classes == 2:
            top_k_acc = top_k_accuracy_score(y_true, probs[:, 1], k=k, labels=all_labels)
        else:
            top_k_acc = top_k_accuracy_score(y_true, probs, k=k, labels=all_labels)
        loss = log_loss(y_true, probs, labels=all_labels) if n_classes > 1 else 0.0
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=all_labels, zero_division=0)
        averages = {}
        for average in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=average,
                                                         zero_division=0)
            averages[average] = (p, r, f)
        counts = confusion_matrix(y_true, y_pred, labels=all_labels)
        normalized = confusion_matrix(y_true, y_pred, labels=all_labels, normalize="true")

    confidence = probs[np.arange(len(y_pred)), y_pred]
    ece, bins = expected_calibration_error(confidence, y_pred == y_true, n_bins)
    predicted = counts.sum(axis=0)
    per_class = [
        {"class": name, "index": i, "precision": _f(precision[i]), "recall": _f(recall[i]), "f1": _f(f1[i]),
         "support": int(support[i]), "predicted": int(predicted[i])}
        for i, name in enumerate(classes)
    ]
    metrics = {
        "accuracy": _f(accuracy),
        "balanced_accuracy": _f(balanced),
        "top_k": k,
        "top_k_accuracy": _f(top_k_acc),
        "log_loss": _f(loss),
        "ece": _f(ece),
        "macro_precision": _f(averages["macro"][0]),
        "macro_recall": _f(averages["macro"][1]),
        "macro_f1": _f(averages["macro"][2]),
        "weighted_precision": _f(averages["weighted"][0]),
        "weighted_recall": _f(averages["weighted"][1]),
        "weighted_f1": _f(averages["weighted"][2]),
        "mean_confidence": _f(confidence.mean()) if len(confidence) else None,
    }
    return {
        "metrics": metrics,
        "per_class": per_class,
        "confusion_matrix": {
            "classes": list(classes),
            "counts": counts.astype(int).tolist(),
            "normalized": [[_f(v) or 0.0 for v in row] for row in normalized],
        },
        "calibration": {"ece": _f(ece), "n_bins": n_bins, "bins": bins},
    }


def error_analysis(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[str],
    counts: list[list[int]],
    n_errors: int = 10,
) -> dict[str, Any]:
    """The most confident mistakes, the most confused class pairs, classes never predicted."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probs[wrong, y_pred[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:n_errors]
    mistakes = [
        {"path": str(paths[i]), "true": classes[y_true[i]], "pred": classes[y_pred[i]],
         "prob": float(probs[i, y_pred[i]]), "prob_true": float(probs[i, y_true[i]])}
        for i in order
    ]
    pairs: list[dict[str, Any]] = []
    for t, row in enumerate(counts):
        support = sum(row)
        for p, count in enumerate(row):
            if t != p and count:
                pairs.append({"true": classes[t], "pred": classes[p], "count": int(count),
                              "rate": count / support if support else 0.0})
    pairs.sort(key=lambda e: (-e["count"], -e["rate"], e["true"], e["pred"]))
    predicted = np.asarray(counts).sum(axis=0) if len(counts) else np.zeros(0)
    never = [classes[i] for i in range(len(classes)) if predicted[i] == 0]
    return {"n_errors": int(len(wrong)), "most_confident": mistakes, "confused_pairs": pairs[:n_errors],
            "never_predicted": never}


def _severity_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else 0, str(value))


def robustness(records: Sequence[dict], correct: np.ndarray) -> dict[str, Any] | None:
    """Accuracy per perturbation and severity next to clean accuracy; None if nothing is perturbed.

    Clean images are records without a ``perturbation`` (or with none/clean/identity).
    A perturbation's accuracy is the mean of its severities' accuracies (each severity
    weighs the same, as in ImageNet-C); ``relative_drop`` is (clean - acc) / clean;
    ``mean_error`` is the mean over perturbations of (1 - accuracy), an unnormalised
    mean corruption error (mCE-like).
    """
    groups: dict[str, dict[Any, list[bool]]] = {}
    clean: list[bool] = []
    for record, ok in zip(records, correct):
        name = record.get("perturbation")
        if isinstance(name, str):
            name = name.strip()
        if name in CLEAN_PERTURBATIONS:
            clean.append(bool(ok))
            continue
        groups.setdefault(str(name), {}).setdefault(record.get("severity"), []).append(bool(ok))
    if not groups:
        return None
    clean_acc = float(np.mean(clean)) if clean else None

    def drop(acc: float) -> float | None:
        return (clean_acc - acc) / clean_acc if clean_acc else None

    rows = []
    for name in sorted(groups):
        severities = []
        for severity in sorted(groups[name], key=_severity_key):
            hits = groups[name][severity]
            acc = float(np.mean(hits))
            severities.append({"severity": severity, "n": len(hits), "accuracy": acc, "relative_drop": drop(acc)})
        acc = float(np.mean([s["accuracy"] for s in severities]))
        rows.append({"perturbation": name, "n": sum(s["n"] for s in severities), "accuracy": acc,
                     "relative_drop": drop(acc), "severities": severities})
    mean_acc = float(np.mean([r["accuracy"] for r in rows]))
    drops = [r["relative_drop"] for r in rows if r["relative_drop"] is not None]
    return {
        "clean": {"n": len(clean), "accuracy": clean_acc},
        "perturbations": rows,
        "mean_accuracy": mean_acc,
        "mean_error": 1.0 - mean_acc,
        "mean_relative_drop": float(np.mean(drops)) if drops else None,
    }
