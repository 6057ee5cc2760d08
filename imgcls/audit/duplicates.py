"""Near-duplicates: candidate pairs from cheap neighbours, each verified by registering one image onto the other.

A re-encoded, resized, slightly cropped copy is the same picture under a small change of
scale and position plus compression noise. Neither a perceptual hash nor an embedding
separates that from a distinct look-alike in dense data (Fashion-MNIST: thousands of plain
garments on black, docs/design/audit.md), so the check has two stages:

1. **Candidates** (high recall, cheap): each image's nearest neighbours by the correlation of
   its 16 x 16 grey thumbnail, and of the same thumbnail after moment normalisation (the
   intensity centroid moved to the centre and the spread per axis scaled to one value, which
   undoes most of a crop's shift and scale), plus its nearest neighbours in embedding space.
2. **Verification** (registration): for each candidate pair, one image is warped onto the
   other by a per-axis scale and shift (a crop of up to ``MAX_CROP`` of each side, then a
   resize): a coarse grid at 16 px in both directions, then Gauss-Newton refinement
   (Lucas-Kanade, forward additive) at 32 px on thumbnails blurred by ``BLUR_SIGMA``. The
   pair is a copy when the RMS grey-level difference left, on the interior (``MARGIN`` px of
   border left out), is at most ``max_residual`` (on a 0-1 scale). The blur removes most
   JPEG and resampling noise; the absolute difference (not a correlation) keeps a brighter
   or darker look-alike apart. Colour images pass a second test under the same warp: their
   opponent colour channels, compared coarser (JPEG halves colour resolution), must agree
   too, so pictures that differ only in hue are not copies.

Pairs form groups around a kept image (no chains: see find_duplicates); in each group one
copy is kept (the most held-out split: test, then val, then train; then the first path) and
every other copy is flagged ``duplicate`` with the kept one named, so
``select(.audit == null)`` keeps exactly one of each group. A group spanning splits is
leakage: a test image with a copy in train.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

THUMB_SIDE = 32  # grey thumbnails through the decoded-image cache; verification runs at this size
COARSE_SIDE = 16  # candidates and the coarse registration grid
MAX_CROP = 0.1  # registration allows a crop of up to 10 % of a side (the copies: up to 5 %)
COARSE_MIN_SCALE = 0.93  # the coarse grid's smallest scale; refinement goes on to 1 - MAX_CROP
BLUR_SIGMA = 1.0  # px at 32 px, before registration and comparison
MARGIN = 2  # px of border left out of the residual (resampling and padding effects)
REFINE_STEPS = 5  # Gauss-Newton iterations
COARSE_FACTOR = 4.0  # refine pairs whose coarse residual is within this x max_residual
CHROMA_SIGMA = 2.0  # px: JPEG keeps colour at half resolution, so colour is compared coarser ...
CHROMA_FACTOR = 2.5  # ... and a copy's colour channels may differ by up to this x max_residual
HELD_OUT_PRIORITY = {"test": 0, "val": 1, "train": 2, None: 3}


def neighbours(unit: np.ndarray, k: int, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine similarity (``unit``: L2-normalised): (indices, similarities)."""
    import torch

    n = len(unit)
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    block = block or max(64, min(1024, (1 << 26) // max(1, n)))  # at most ~256 MB of similarities at once
    idx, sim = [], []
    for start in range(0, n, block):
        s = x[start:start + block] @ x.T
        rows = torch.arange(len(s))
        s[rows, start + rows] = -torch.inf  # not its own neighbour
        v, i = s.topk(k, dim=1)
        idx.append(i)
        sim.append(v)
    return torch.cat(idx).numpy().astype(np.int64), torch.cat(sim).numpy()


def _centred_unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=1, keepdims=True)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)


def _moment_normalised(x, side: int = COARSE_SIDE, spread: float = 1.5):
    """Each thumbnail resampled at ``side`` px so that its intensity centroid is the centre and its spread per
    axis is fixed (the window covers +-``spread`` standard deviations): a crop's shift and scale mostly cancel."""
    import torch
    import torch.nn.functional as F

    n, full, _ = x.shape
    g = (torch.arange(full, dtype=torch.float32) + 0.5) / full * 2 - 1
    w = x - x.amin(dim=(1, 2), keepdim=True)
    mass = w.sum(dim=(1, 2)) + 1e-6
    wy, wx = w.sum(2), w.sum(1)
    cy, cx = (wy * g).sum(1) / mass, (wx * g).sum(1) / mass
    sy = ((wy * (g - cy[:, None]) ** 2).sum(1) / mass).sqrt()
    sx = ((wx * (g - cx[:, None]) ** 2).sum(1) / mass).sqrt()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = (sx * spread).clamp(0.05, 1.0), cx
    theta[:, 1, 1], theta[:, 1, 2] = (sy * spread).clamp(0.05, 1.0), cy
    grid = F.affine_grid(theta, [int(n), 1, side, side], align_corners=False)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def candidate_pairs(x, x16, k: int, extra: np.ndarray | None = None) -> np.ndarray:
    """(P, 2) int64 pairs i < j: the k nearest by moment-normalised thumbnail, k // 2 by plain 16 px
    thumbnail (``x``: 32 px, ``x16``: 16 px, 0-1), and ``extra`` neighbour lists (the embedding's kNN)."""
    n = len(x)
    lists = [neighbours(_centred_unit(_moment_normalised(x).reshape(n, -1).numpy()), k)[0],
             neighbours(_centred_unit(x16.reshape(n, -1).numpy()), max(1, k // 2))[0]]
    if extra is not None and extra.size:
        lists.append(extra)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    rows = np.concatenate([np.repeat(np.arange(n), li.shape[1]) for li in lists])
    cols = np.concatenate([li.reshape(-1) for li in lists])
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    keep = a != b
    return np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0).astype(np.int64)


def _blur(x, sigma: float):
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return x
    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    t = F.conv2d(F.pad(x[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return t[:, 0]


def _axis_warps(side: int, min_scale: float, step_px: float = 0.5) -> list[tuple[float, float]]:
    """(scale, shift) per axis in normalised coordinates: the source window [-s + t, s + t] inside [-1, 1],
    scales and shifts every ``step_px`` pixels at the edge."""
    out: list[tuple[float, float]] = []
    for s in np.arange(1.0, min_scale - 1e-9, -step_px / side):
        r = 1.0 - s
        count = int(np.floor(r * side / step_px + 1e-9)) + 1
        out.extend((float(s), float(t)) for t in (np.linspace(-r, r, count) if count > 1 else [0.0]))
    return out


def _interp_matrix(side: int, s: float, t: float) -> np.ndarray:
    """(side, side) linear interpolation: row u samples the input at normalised s*u + t (align_corners=False)."""
    u = (np.arange(side) + 0.5) / side * 2 - 1
    src = np.clip(((s * u + t) + 1) / 2 * side - 0.5, 0, side - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, side - 1)
    w = src - lo
    m = np.zeros((side, side), np.float32)
    np.add.at(m, (np.arange(side), lo), 1 - w)
    np.add.at(m, (np.arange(side), hi), w)
    return m


def _coarse(x16, pairs: np.ndarray, block: int = 64):
    """Best warp of a grid in either direction per pair: (rms, src, dst, params (sx, tx, sy, ty))."""
    import torch

    warps = _axis_warps(COARSE_SIDE, COARSE_MIN_SCALE)
    mats = torch.from_numpy(np.stack([_interp_matrix(COARSE_SIDE, s, t) for s, t in warps]))
    a = len(warps)
    n = len(x16)
    flat = x16.reshape(n, -1)
    sq = (flat ** 2).sum(1)
    # every pair in both directions, processed in order of the image that is warped
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.argsort(src, kind="stable")
    bounds = np.searchsorted(src[order], np.arange(0, n + block, block))
    best = np.full(len(src), np.inf, np.float32)
    arg = np.zeros(len(src), np.int64)
    flat_pad = torch.cat([flat, torch.zeros(1, flat.shape[1])])  # row n: padding
    sq_pad = torch.cat([sq, torch.zeros(1)])
    for b, start in enumerate(range(0, n, block)):
        rows = order[bounds[b]:bounds[b + 1]]  # directed pairs whose source is in this block, by source
        if not len(rows):
            continue
        x = x16[start:start + block]
        w = torch.einsum("iab,nbc,jdc->nijad", mats, x, mats).reshape(len(x), a * a, -1)  # y warp i, x warp j
        wsq = (w ** 2).sum(2)
        # each source's destinations as one padded (block, most, pixels) batch: a batched matrix product
        local = src[rows] - start
        rank = np.arange(len(rows)) - np.searchsorted(local, local)
        slots = np.full((len(x), int(rank.max()) + 1), n)
        slots[local, rank] = dst[rows]
        slots_t = torch.from_numpy(slots)
        dots = torch.bmm(w, flat_pad[slots_t].transpose(1, 2))  # (block, warps, most)
        msd = (wsq[:, :, None] + sq_pad[slots_t][:, None, :] - 2 * dots) / flat.shape[1]
        v, i = msd.min(1)
        best[rows], arg[rows] = v[local, rank].numpy(), i[local, rank].numpy()
    m = len(pairs)
    take = np.where(best[:m] <= best[m:], np.arange(m), np.arange(m) + m)  # the better direction
    grid = np.array(warps)
    iy, ix = arg[take] // a, arg[take] % a
    params = np.stack([grid[ix, 0], grid[ix, 1], grid[iy, 0], grid[iy, 1]], axis=1).astype(np.float32)
    return np.sqrt(np.maximum(best[take], 0)), src[take], dst[take], params


def _sample(stack, src, p, side: int):
    import torch
    import torch.nn.functional as F

    g = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    u, v = g.view(1, 1, side), g.view(1, side, 1)
    grid = torch.stack([(p[:, 0, None, None] * u + p[:, 1, None, None]).expand(-1, side, side),
                        (p[:, 2, None, None] * v + p[:, 3, None, None]).expand(-1, side, side)], -1)
    return F.grid_sample(stack[src], grid, mode="bilinear", padding_mode="border", align_corners=False), u, v


def _refine(xb, src: np.ndarray, dst: np.ndarray, p0: np.ndarray,
            chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton on (sx, tx, sy, ty) from the coarse warp: the interior RMS residual and the warp of the best step."""
    import torch

    n, side, _ = xb.shape
    gx, gy = torch.zeros_like(xb), torch.zeros_like(xb)
    gx[:, :, 1:-1] = (xb[:, :, 2:] - xb[:, :, :-2]) * (side / 4)  # d/du in normalised coordinates
    gy[:, 1:-1, :] = (xb[:, 2:, :] - xb[:, :-2, :]) * (side / 4)
    stack = torch.stack([xb, gx, gy], 1)
    inner = slice(MARGIN, side - MARGIN) if MARGIN else slice(None)
    out = np.zeros(len(src), np.float32)
    out_p = np.zeros((len(src), 4), np.float32)
    eye = 1e-6 * torch.eye(4)
    for c in range(0, len(src), chunk):
        s, d = torch.from_numpy(src[c:c + chunk]), torch.from_numpy(dst[c:c + chunk])
        p = torch.from_numpy(p0[c:c + chunk]).clone()
        target = xb[d]
        best = torch.full((len(p),), float("inf"))
        best_p = p.clone()
        for step in range(REFINE_STEPS + 1):
            w, u, v = _sample(stack, s, p, side)
            r = w[:, 0] - target
            rms = r[:, inner, inner].pow(2).mean((1, 2)).sqrt()
            better = rms < best
            best = torch.where(better, rms, best)
            best_p[better] = p[better]
            if step == REFINE_STEPS:
                break
            ix, iy = w[:, 1], w[:, 2]
            jac = torch.stack([ix * u, ix, iy * v, iy], -1).reshape(len(p), -1, 4)
            h = jac.transpose(1, 2) @ jac + eye
            delta = torch.linalg.solve(h, jac.transpose(1, 2) @ r.reshape(len(p), -1, 1))[..., 0]
            p = p - delta
            p[:, 0].clamp_(1.0 - MAX_CROP, 1.02)
            p[:, 2].clamp_(1.0 - MAX_CROP, 1.02)
            p[:, 1].clamp_(-1.5 * MAX_CROP, 1.5 * MAX_CROP)
            p[:, 3].clamp_(-1.5 * MAX_CROP, 1.5 * MAX_CROP)
        out[c:c + chunk], out_p[c:c + chunk] = best.numpy(), best_p.numpy()
    return out, out_p


def _chroma_residuals(colour: np.ndarray, src: np.ndarray, dst: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The larger RMS difference of two opponent colour channels (R - G, (R + G) / 2 - B; blurred by CHROMA_SIGMA)
    under the registration found on grey: 0 for grey images. ``colour``: (N, 32, 32, 3) uint8."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(colour, dtype=np.float32)) / 255
    side = x.shape[1]
    inner = slice(MARGIN, side - MARGIN) if MARGIN else slice(None)
    out = np.zeros(len(src), np.float32)
    s, d, p = torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(params)
    for chan in (x[..., 0] - x[..., 1], (x[..., 0] + x[..., 1]) / 2 - x[..., 2]):
        if not bool(chan.abs().amax() > 0):
            continue
        cb = _blur(chan, CHROMA_SIGMA)
        w, _, _ = _sample(cb[:, None], s, p, side)
        r = (w[:, 0] - cb[d])[:, inner, inner]
        out = np.maximum(out, r.pow(2).mean((1, 2)).sqrt().numpy())
    return out


def thumbnails(gray: np.ndarray):
    """The 32 px grey thumbnails as 0-1 float tensors, and their 16 px halves (2 x 2 means)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)) / 255
    return x, F.avg_pool2d(x[:, None], THUMB_SIDE // COARSE_SIDE)[:, 0]


def pair_residuals(x, x16, pairs: np.ndarray, max_residual: float,
                   colour: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Per pair, the RMS grey difference (0-1) after registration; inf where the coarse grid already rules it out,
    or where ``colour`` (image indices -> (n, 32, 32, 3) uint8) shows a colour difference the grey images hide."""
    out = np.full(len(pairs), np.inf, np.float32)
    if not len(pairs):
        return out
    coarse, src, dst, params = _coarse(_blur(x16, BLUR_SIGMA / 2), pairs)
    near = np.flatnonzero(coarse <= COARSE_FACTOR * max_residual)
    if len(near):
        out[near], params[near] = _refine(_blur(x, BLUR_SIGMA), src[near], dst[near], params[near])
    close = np.flatnonzero(out <= max_residual)
    if colour is not None and len(close):
        images = np.unique(np.concatenate([src[close], dst[close]]))
        local = np.full(len(x), -1)
        local[images] = np.arange(len(images))
        chroma = _chroma_residuals(colour(images), local[src[close]], local[dst[close]], params[close])
        out[close[chroma > CHROMA_FACTOR * max_residual]] = np.inf
    return out


@dataclass
class DuplicateResult:
    pairs: list[tuple[int, int, float, float]]  # (i, j, residual, cosine similarity), i < j
    group: np.ndarray  # (N,) group id (its own index for singletons)
    keeper: np.ndarray  # (N,) index of the kept copy of its group (itself when kept or alone)
    candidates: int = 0  # candidate pairs verified


def find_duplicates(gray: np.ndarray, unit: np.ndarray, nn_idx: np.ndarray | None, sha256s: Sequence[str | None],
                    splits: Sequence[str | None], paths: Sequence[str], *, max_residual: float,
                    candidates: int = 10, colour: Callable[[np.ndarray], np.ndarray] | None = None) -> DuplicateResult:
    """Candidate pairs (thumbnail and embedding neighbours) whose registration residual is at most ``max_residual``
    (``colour``: see pair_residuals)."""
    n = len(gray)
    found: dict[tuple[int, int], tuple[float, float]] = {}
    cand = np.zeros((0, 2), dtype=np.int64)
    if n > 1:
        x, x16 = thumbnails(gray)
        cand = candidate_pairs(x, x16, candidates, nn_idx)
        res = pair_residuals(x, x16, cand, max_residual, colour)
        for (i, j), r in zip(cand[res <= max_residual].tolist(), res[res <= max_residual].tolist()):
            found[(i, j)] = (float(r), float(unit[i] @ unit[j]))
    # identical files are duplicates whatever the pictures say (prepare keeps them by default)
    by_sha: dict[str, int] = {}
    for i, sha in enumerate(sha256s):
        if sha:
            first = by_sha.setdefault(sha, i)
            if first != i:
                found[(first, i)] = (0.0, float(unit[first] @ unit[i]))
    # Leader clustering, no chains: in keeper order (test, val, train, then path) an image not yet
    # taken keeps itself and takes its direct partners as its copies. Every flagged copy is then
    # a direct pair of its kept image (a chain a~b~c of look-alikes never makes a and c copies).
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
    pairs = sorted((a, b, r, s) for (a, b), (r, s) in found.items() if keeper[a] == b or keeper[b] == a)
    return DuplicateResult(pairs=pairs, group=group, keeper=keeper, candidates=len(cand))


def grey_thumbnails(paths: Sequence, cache_dir) -> np.ndarray:
    """(N, 32, 32) uint8 grey images, through the decoded-image cache shared with train, eval and predict."""
    from imgcls.cache import load_decoded

    return np.asarray(load_decoded(list(paths), THUMB_SIDE, 1, cache_dir=cache_dir))[..., 0]


def colour_loader(paths: Sequence) -> Callable[[np.ndarray], np.ndarray]:
    """Indices -> (n, 32, 32, 3) uint8 thumbnails, decoded on demand (only images in a close pair need them)."""
    from imgcls.cache import decode_images

    return lambda idx: decode_images([paths[int(i)] for i in idx], THUMB_SIDE, 3)
