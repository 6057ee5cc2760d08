"""``imgcls predict``: which model, which images, and what one output line holds.

Kept free of torch, scikit-learn and rich at import time: ``imgcls predict one.jpg``
should cost little more than importing torch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from imgcls.errors import ModelError

MODEL_ENV = "IMGCLS_MODEL"
# predict reads and fills the decoded-image cache from this many images on. Below it,
# decoding is about as fast as the cache lookup plus writing a new entry (measured:
# docs/benchmarks.md; decision: docs/design/decoded-image-cache.md), and one-off sets of
# a few files would only fill the cache with entries nobody reads again.
CACHE_MIN_IMAGES = 64
LATEST = Path("runs") / "latest"
MANIFEST_SUFFIXES = (".jsonl", ".json", ".ndjson")


def resolve_model(option: str | None, environ: Mapping[str, str] | None = None,
                  cwd: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The model file to use and where the choice came from: --model, then $IMGCLS_MODEL, then runs/latest."""
    from imgcls.models.io import resolve_model_path

    environ = os.environ if environ is None else environ
    if option:
        given, source = Path(option), "--model"
    elif environ.get(MODEL_ENV):
        given, source = Path(environ[MODEL_ENV]), f"${MODEL_ENV}"
    else:
        base = Path(cwd) if cwd is not None else Path.cwd()
        given, source = base / LATEST, "runs/latest"
        if not given.exists():
            raise ModelError(f"no model: pass --model FILE|RUN_DIR, set {MODEL_ENV}, or run from a folder whose "
                               f"runs/latest points at a run (imgcls train makes it); {given} does not exist")
    path = resolve_model_path(given)
    if not path.exists():
        what = "a folder without model.safetensors" if given.is_dir() else "no such model file"
        raise ModelError(f"{given} (from {source}): {what}")
    return path, source


def cache_for(n_images: int, cache_dir: str | os.PathLike | None, enabled: bool = True) -> Path | None:
    """The decoded-image cache folder predict uses for ``n_images``, or None (too few, or --no-cache)."""
    if not enabled or n_images < CACHE_MIN_IMAGES:
        return None
    from imgcls.cache import resolve_cache_dir

    return resolve_cache_dir(cache_dir)


def _looks_like_manifest(path: Path) -> bool:
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return True
    from imgcls.images import is_image_name

    if is_image_name(path):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(256).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")


def _manifest_paths(source: str | os.PathLike | IO[Any], name: str | None = None) -> list[str]:
    from imgcls.manifest import ManifestReader

    reader = ManifestReader(source, name=name)
    return [str(reader.resolve(record)) for record in reader]


def _folder_images(folder: Path) -> list[str]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    from imgcls.images import is_image_name

    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and is_image_name(name):
                found.append(str(Path(parent) / name))
    return found


def _stdin_paths(data: str | bytes) -> list[str]:
    """Paths one per line, or NUL-separated (``find -print0``), or a whole manifest piped in (starts with '{').

    Bytes are decoded as file names are (``os.fsdecode``), so a name that is not valid
    UTF-8 still names its file.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if data.lstrip().startswith(b"{"):
        return _manifest_paths(io.BytesIO(data), name="<stdin>")
    if b"\0" in data:
        return [os.fsdecode(item) for item in data.split(b"\0") if item]
    return [os.fsdecode(line.rstrip(b"\r")) for line in data.split(b"\n") if line.strip()]


def gather_inputs(inputs: Sequence[str], stdin: TextIO | None = None) -> tuple[list[str], list[str]]:
    """Expand files, folders, manifests and '-' into image paths, in the order given.

    Returns (paths, notes). A path that does not exist stays in the list: it becomes an
    error line of its own, so the other images are still predicted.
    """
    import sys

    paths: list[str] = []
    notes: list[str] = []
    for item in inputs:
        if item == "-":
            stream = stdin if stdin is not None else sys.stdin
            stream = getattr(stream, "buffer", None) or stream
            paths.extend(_stdin_paths(stream.read()))
            continue
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                notes.append(f"{item}: no image files in this folder")
            paths.extend(found)
        elif path.is_file() and _looks_like_manifest(path):
            paths.extend(_manifest_paths(path))
        else:
            paths.append(item)
    return paths, notes


SORT_KEYS = ("input", "margin", "entropy")  # predict --sort


def uncertainty(probs: Sequence[float]) -> dict[str, float]:
    """margin: top probability minus the second (small = torn between two labels); entropy in nats of all
    classes (large = unsure among many). What active labelling ranks by."""
    import math

    ranked = sorted((float(p) for p in probs), reverse=True)
    margin = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
    entropy = -sum(p * math.log(p) for p in ranked if p > 0)
    return {"margin": margin, "entropy": max(0.0, entropy)}


def result_row(path: str, probs: Sequence[float], classes: Sequence[str], top_k: int,
               scores: bool = False) -> dict[str, Any]:
    """{"path", "label", "prob", "top_k": [{"label", "prob"}, ...]} for one image (``scores``: plus margin, entropy)."""
    order = sorted(range(len(classes)), key=lambda i: -probs[i])[: max(1, top_k)]
    best = order[0]
    row = {"path": path, "label": classes[best], "prob": float(probs[best]),
           "top_k": [{"label": classes[i], "prob": float(probs[i])} for i in order]}
    if scores:
        row.update(uncertainty(probs))
    return row


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Most worth labelling first: smallest margin or largest entropy; ties in input order; errors last."""
    if key == "input":
        return rows
    sign = 1.0 if key == "margin" else -1.0
    good = [r for r in rows if "error" not in r]
    return sorted(good, key=lambda r: sign * r[key]) + [r for r in rows if "error" in r]


def error_row(path: str, reason: str, message: str) -> dict[str, Any]:
    """{"path", "error", "reason"} for an image that could not be read."""
    return {"path": path, "error": message, "reason": reason}


def rows_in_order(batches: Iterable, paths: Sequence[str], classes: Sequence[str], top_k: int,
                  scores: bool = False) -> Iterable[dict]:
    """Result and error rows of ``predict_batches`` output, merged back into input order."""
    for batch in batches:
        rows = [(i, result_row(paths[i], p, classes, top_k, scores)) for i, p in zip(batch.indices, batch.probs)]
        rows += [(e.index, error_row(paths[e.index], e.reason, e.message)) for e in batch.errors]
        for _, row in sorted(rows, key=lambda pair: pair[0]):
            yield row
