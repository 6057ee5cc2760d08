"""Near-duplicates: pairs close by a perceptual hash AND in embedding space.

The hash is the classic 64-bit DCT hash ("pHash"): the image in grey at 32 x 32 (through
the decoded-image cache), its 2-D DCT, the 8 x 8 lowest frequencies compared with their
median. Re-encoding and resizing barely move it; a crop of a few per cent moves a few
bits. Alone it also pairs distinct images with the same coarse layout (plain garments on a
black background), and the embedding alone pairs distinct images of one kind; requiring
both keeps the false pairs rare (docs/design/audit.md has the measurement).

Candidates are all pairs within the hash limit (one blocked matrix product over the hash
bits); the limit is ``hash_distance``, lowered in dense data to ``hash_ratio`` x the median
distance of an image to its nearest hash (Fashion-MNIST: many distinct garments are a few bits
apart); the features' similarity is a veto against pairs that only share a layout. Pairs form groups around a kept image (no chains: see find_duplicates); in each
group one copy is kept (the most held-out split: test, then val, then train; then the
first path) and every other copy is flagged ``duplicate`` with the kept one named, so
``select(.audit == null)`` keeps exactly one of each group. A group spanning splits is
leakage: a test image with a copy in train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HASH_SIDE = 32
HELD_OUT_PRIORITY = {"test": 0, "val": 1, "train": 2, None: 3}


def phash(gray: np.ndarray) -> np.ndarray:
    """64-bit DCT hashes of (N, 32, 32) uint8 grey images, as (N,) uint64."""
    from scipy.fft import dctn

    coeffs = dctn(gray.astype(np.float64), type=2, norm="ortho", axes=(1, 2))[:, :8, :8].reshape(len(gray), 64)
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def neighbours(unit: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine similarity (``unit``: L2-normalised): (indices, similarities)."""
    n = len(unit)
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    sim = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return idx, sim
    x = unit.astype(np.float32)
    for start in range(0, n, block):
        s = x[start:start + block] @ x.T
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-vals, axis=1)
        idx[start:start + block] = np.take_along_axis(part, order, axis=1)
        sim[start:start + block] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


@dataclass
class DuplicateResult:
    pairs: list[tuple[int, int, int, float]]  # (i, j, hash distance, cosine similarity), i < j
    group: np.ndarray  # (N,) group id (its own index for singletons)
    keeper: np.ndarray  # (N,) index of the kept copy of its group (itself when kept or alone)
    hashes: np.ndarray
    limit: int = 0  # the hash distance used (see hash_limit)


def _hash_blocks(hashes: np.ndarray, block: int = 2048):
    """(start, distances of rows start.. to every hash), itself at 99: Hamming distance as one matrix product."""
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(len(hashes), 8), axis=1).astype(np.float32)
    for start in range(0, len(hashes), block):
        b = bits[start:start + block]
        d = np.rint(64 - (b @ bits.T + (1 - b) @ (1 - bits).T)).astype(np.int16)
        d[np.arange(len(b)), start + np.arange(len(b))] = 99
        yield start, d


def nearest_hash_distance(hashes: np.ndarray) -> np.ndarray:
    """Each hash's distance to its nearest other hash (64 when alone)."""
    best = np.full(len(hashes), 64, dtype=np.int64)
    if len(hashes) > 1:
        for start, d in _hash_blocks(hashes):
            best[start:start + len(d)] = d.min(axis=1)
    return best


def hash_limit(nearest: np.ndarray, max_distance: int, ratio: float) -> int:
    """The hash distance a pair may have: ``max_distance``, less in dense data (many near-identical images),
    where it is ``ratio`` x the median distance of an image to its nearest hash."""
    if len(nearest) < 20:
        return max_distance
    return int(min(max_distance, np.floor(ratio * float(np.median(nearest)))))


def find_duplicates(hashes: np.ndarray, unit: np.ndarray, sha256s: Sequence[str | None],
                    splits: Sequence[str | None], paths: Sequence[str], *, max_distance: int,
                    min_similarity: float, ratio: float = 0.6) -> DuplicateResult:
    """Pairs within the hash limit whose features are at least ``min_similarity`` alike (a veto)."""
    n = len(hashes)
    found: dict[tuple[int, int], tuple[int, float]] = {}
    limit = hash_limit(nearest_hash_distance(hashes), max_distance, ratio)
    for start, d in _hash_blocks(hashes) if n > 1 else ():
        rows, cols = np.nonzero(d <= limit)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < j:
                sim = float(unit[i] @ unit[j])
                if sim >= min_similarity:
                    found[(i, j)] = (int(d[r, j]), sim)
    # identical files are duplicates whatever the embedding says (prepare keeps them by default)
    by_sha: dict[str, int] = {}
    for i, sha in enumerate(sha256s):
        if sha:
            first = by_sha.setdefault(sha, i)
            if first != i and (first, i) not in found:
                found[(first, i)] = (int(hamming(hashes[first], hashes[i])), 1.0)
    # Leader clustering, no chains: in keeper order (test, val, train, then path) an image not yet
    # taken keeps itself and takes its direct partners as its copies. Every flagged copy is then
    # a direct pair of its kept image (a chain a~b~c of "similar" images never makes a and c copies).
    partners: dict[int, list[int]] = {}
    for a, b in found:
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    group = np.arange(n)
    keeper = np.arange(n)
    taken = np.zeros(n, dtype=bool)
    for i in sorted(partners, key=lambda i: (HELD_OUT_PRIORITY.get(splits[i], 3), paths[i])):
        if taken[i]:
            continue
        taken[i] = True
        for j in partners[i]:
            if not taken[j]:
                taken[j] = True
                group[j] = keeper[j] = i
        group[i] = i
    pairs = sorted((a, b, d, s) for (a, b), (d, s) in found.items() if keeper[a] == b or keeper[b] == a)
    return DuplicateResult(pairs=pairs, group=group, keeper=keeper, hashes=hashes, limit=limit)


def grey_thumbnails(paths: Sequence, cache_dir) -> np.ndarray:
    """(N, 32, 32) uint8 grey images, through the decoded-image cache shared with train, eval and predict."""
    from imgcls.cache import load_decoded

    return np.asarray(load_decoded(list(paths), HASH_SIDE, 1, cache_dir=cache_dir))[..., 0]
