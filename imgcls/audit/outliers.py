"""Outliers (far from every neighbour in embedding space) and ambiguous images (between two labels).

Outlier: the mean cosine distance to the k nearest other images is above the upper fence
Q3 + ``outlier_iqr`` x IQR of that distance over the data set (cleanlab Datalab's rule for
feature-based outliers, whose default fence is 1.7 IQR). A picture of something else (a
scan, a screenshot, a photo in a set of drawings) sits far from everything.

Ambiguous: the out-of-fold probabilities put nearly all their mass on two classes and split
it almost evenly (top two closer than ``ambiguous_margin``, together at least
``ambiguous_mass``): the image could carry either label. Suspected label errors are not
also reported as ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OutlierResult:
    distance: np.ndarray  # (N,) mean cosine distance to the k nearest
    fence: float
    outlier: np.ndarray  # (N,) bool
    nearest_class: np.ndarray  # (N,) class index of the nearest labelled neighbour, -1 if none


def find_outliers(nn_idx: np.ndarray, nn_sim: np.ndarray, labels: np.ndarray, iqr_scale: float) -> OutlierResult:
    n = len(labels)
    if n == 0 or nn_sim.shape[1] == 0:
        return OutlierResult(np.zeros(n), float("inf"), np.zeros(n, bool), np.full(n, -1))
    distance = (1.0 - nn_sim.astype(np.float64)).mean(axis=1)
    q1, q3 = np.percentile(distance, [25, 75])
    fence = float(q3 + iqr_scale * (q3 - q1))
    outlier = distance > fence if n >= 8 else np.zeros(n, bool)  # quartiles of a handful mean nothing
    nearest = np.full(n, -1)
    for i in range(n):
        for j in nn_idx[i]:
            if labels[j] >= 0:
                nearest[i] = labels[j]
                break
    return OutlierResult(distance, fence, outlier, nearest)


@dataclass
class AmbiguousResult:
    ambiguous: np.ndarray  # (N,) bool
    pair: np.ndarray  # (N, 2) the two classes
    pair_probs: np.ndarray  # (N, 2)


def find_ambiguous(probs: np.ndarray, scored: np.ndarray, margin: float, mass: float) -> AmbiguousResult:
    n = len(scored)
    pair = np.full((n, 2), -1)
    pp = np.zeros((n, 2))
    amb = np.zeros(n, bool)
    if n and probs.shape[1] >= 2:
        idx = np.flatnonzero(scored)
        p = probs[idx]
        top = np.argsort(-p, axis=1)[:, :2]
        tp = np.take_along_axis(p, top, axis=1)
        pair[idx], pp[idx] = top, tp
        amb[idx] = ((tp[:, 0] - tp[:, 1]) < margin) & (tp.sum(axis=1) >= mass)
    return AmbiguousResult(amb, pair, pp)
