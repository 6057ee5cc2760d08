"""Batched inference over image files: the one code path eval and predict share.

Images are decoded to uint8 by :func:`imgcls.models.preprocess.load_uint8` (the
model's own size and channels) in a small thread pool that works ahead of the model,
so decoding overlaps inference; Pillow releases the GIL while it decodes and resizes,
and threads start in microseconds where DataLoader worker processes would cost a
fork and a pickled dataset per run. Normalisation runs on the model's device on the
compact uint8 batch. An image that cannot be decoded becomes an error entry for its
index; the rest of its batch is still predicted.

``predict_batches(..., cache_dir=...)`` reads and fills the decoded-image cache
(:mod:`imgcls.cache`) with the key train and eval use, while keeping that streaming
and per-file error behaviour.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import UsageProblem
from imgcls.evaluation.config import default_workers



@dataclass
class ImageError:
    index: int
    path: str
    reason: str
    message: str


@dataclass
class Batch:
    """Probabilities for the images of one batch that decoded; errors for those that did not."""

    indices: list[int]
    probs: np.ndarray  # (len(indices), n_classes) float64, rows sum to 1
    errors: list[ImageError] = field(default_factory=list)
    plain: np.ndarray | None = None  # with TTA: the probabilities of the plain image alone


def _load_one(path: str | os.PathLike, image_size: int, channels: int):
    """(uint8 HxWxC, None) or (None, (reason, message)); never raises for a bad image."""
    from imgcls.images import ImageRejected
    from imgcls.models.preprocess import load_uint8

    try:
        return load_uint8(path, image_size, channels), None
    except ImageRejected as exc:
        return None, (exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a whole run
        return None, ("unreadable", f"{type(exc).__name__}: {exc}")


def iter_decoded(
    paths: Sequence[str | os.PathLike],
    image_size: int,
    channels: int,
    batch_size: int,
    workers: int,
    prefetch: int = 2,
) -> Iterator[tuple[list[int], np.ndarray | None, list[ImageError]]]:
    """Yield (indices, uint8 N x H x W x C array or None, errors) per batch, in input order.

    With ``workers`` > 0 and more than one image, decoding runs in a thread pool that
    keeps up to ``prefetch`` batches ahead of the consumer (bounded memory).
    """
    n = len(paths)
    starts = list(range(0, n, batch_size))

    def assemble(start: int, results: list) -> tuple[list[int], np.ndarray | None, list[ImageError]]:
        indices: list[int] = []
        arrays: list[np.ndarray] = []
        errors: list[ImageError] = []
        for offset, (array, problem) in enumerate(results):
            index = start + offset
            if problem is None:
                indices.append(index)
                arrays.append(array)
            else:
                errors.append(ImageError(index, str(paths[index]), problem[0], problem[1]))
        return indices, (np.stack(arrays) if arrays else None), errors

    if workers <= 0 or n <= 1:
        for start in starts:
            yield assemble(start, [_load_one(p, image_size, channels) for p in paths[start:start + batch_size]])
        return

    def load_chunk(chunk: Sequence[str | os.PathLike]) -> list:
        return [_load_one(p, image_size, channels) for p in chunk]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgcls-decode") as pool:
        pending: deque = deque()
        upcoming = iter(starts)

        def submit_next() -> None:
            # one task per worker and batch, not per image: fewer futures, less GIL traffic
            start = next(upcoming, None)
            if start is not None:
                batch = paths[start:start + batch_size]
                step = -(-len(batch) // workers)
                futures = [pool.submit(load_chunk, batch[i:i + step]) for i in range(0, len(batch), step)]
                pending.append((start, futures))

        for _ in range(max(1, prefetch)):
            submit_next()
        try:
            while pending:
                start, futures = pending.popleft()
                submit_next()
                yield assemble(start, [result for f in futures for result in f.result()])
        finally:
            for _, futures in pending:  # consumer stopped early: do not decode the rest
                for f in futures:
                    f.cancel()


def _simplex(p) -> np.ndarray:
    probs = p.double().cpu().numpy()
    probs /= probs.sum(axis=1, keepdims=True)  # an exact simplex for log loss
    return probs


def tta_policy(info, tta: Any):
    """``tta``: False/None (off), True (the model's own views, :mod:`imgcls.evaluation.tta`) or a TTAPolicy."""
    if not tta:
        return None
    if tta is True:
        from imgcls.evaluation.tta import policy_for

        return policy_for(info)
    return tta


def _probabilities(model, info, array: np.ndarray, device: str, tta: Any = False) -> np.ndarray:
    """Softmax probabilities (float64, rows summing to 1) for a uint8 N x H x W x C batch (``tta``: as
    :func:`tta_policy` takes it)."""
    return _probabilities_and_plain(model, info, array, device, tta_policy(info, tta))[0]


def _probabilities_and_plain(model, info, array: np.ndarray, device: str,
                             policy) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_probabilities`, and with a TTA ``policy`` (the mean over its views) the plain image's beside it."""
    runner = getattr(model, "imgcls_probabilities", None)
    if runner is not None:  # an exported model (imgcls.evaluation.onnx_backend): numpy in, numpy out, no torch
        return runner(array, policy is not None), None  # (TTA is refused for those up front)
    import torch

    from imgcls.models.preprocess import normalize

    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array)  # a read-only memmap slice of the cache: copy into RAM
    x = torch.from_numpy(array)
    if str(device).startswith("cuda"):
        x = x.pin_memory().to(device, non_blocking=True)  # uint8 over the bus: 4x less than float
    x = normalize(x, info.mean, info.std)
    p = torch.softmax(model(x).float(), dim=1)
    if policy is None:
        return _simplex(p), None
    from imgcls.evaluation.tta import apply_view

    total = torch.zeros_like(p)
    for view in policy.views:
        plain_view = not (view.dx or view.dy or view.mirror)
        total += p if plain_view else torch.softmax(model(apply_view(x, view)).float(), dim=1)
    return _simplex(total / len(policy.views)), _simplex(p)


def _inference_mode(model):
    """torch.inference_mode() for a torch model; nothing for an exported one (no torch import)."""
    if hasattr(model, "imgcls_probabilities"):
        import contextlib

        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


def predict_batches(
    model,
    info,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int | None = None,
    tta: Any = False,
    on_batch: Callable[[int], None] | None = None,
    cache_dir: Path | None = None,
) -> Iterator[Batch]:
    """Class probabilities for image files, batch by batch, in input order.

    ``model`` must already be on ``device`` and in eval mode (as ``load_model`` returns
    it); ``info`` is its :class:`~imgcls.models.io.ModelInfo` (size, channels,
    mean/std). ``tta``: True averages the softmax over the model's test-time views
    (:func:`imgcls.evaluation.tta.policy_for`: a mirror only if it trained with flips),
    or a given policy; each Batch then also carries the plain image's probabilities.
    ``on_batch(n)`` is called after each batch with the number of images handled.

    With ``cache_dir`` the decoded images come from the decoded-image cache shared with
    train and eval when the same files (unchanged) were decoded before at this size and
    channels; otherwise they are decoded as without a cache (streamed, unreadable files
    become errors) and, when EVERY file decoded, stored as a new entry. A set with an
    unreadable file is not stored: an entry always holds the whole set (train and eval
    rely on that), and a cached "unreadable" would outlive a cause that was not the
    file's content (permissions, I/O errors).
    """
    if batch_size < 1:
        raise UsageProblem("--batch-size must be at least 1")
    workers = default_workers() if workers is None else workers
    n_classes = len(info.classes)
    policy = tta_policy(info, tta)
    writer = None
    if cache_dir is not None and paths:
        from imgcls.cache import EntryWriter, decoded_key, load_entry
        from imgcls.console import detail

        key = decoded_key(paths, info.image_size, info.channels)
        folder = cache_dir / "decoded"
        hit = load_entry(folder, key)
        if hit is not None:
            detail(f"decoded cache hit: {folder / key}.npy ({len(paths)} images, nothing to decode)")
            yield from predict_array(model, info, hit, batch_size=batch_size, device=device, tta=policy,
                                     on_batch=on_batch)
            return
        try:
            writer = EntryWriter(cache_dir, "decoded", key, (len(paths), info.image_size, info.image_size,
                                                               info.channels))
        except OSError as exc:  # a read-only or full cache must not stop the work
            detail(f"cannot write cache entry in {folder}: {exc}")
    try:
        with _inference_mode(model):
            for indices, array, errors in iter_decoded(paths, info.image_size, info.channels, batch_size, workers):
                if writer is not None:
                    writer = _append_or_drop(writer, array if not errors else None)
                probs, plain = ((np.zeros((0, n_classes)), None) if array is None
                                else _probabilities_and_plain(model, info, array, device, policy))
                if plain is None and policy is not None:
                    plain = probs
                if on_batch is not None:
                    on_batch(len(indices) + len(errors))
                yield Batch(indices, probs, errors, plain)
        if writer is not None:
            _publish(writer)
    finally:
        if writer is not None:
            writer.discard()


def _append_or_drop(writer, array: np.ndarray | None):
    """Add a fully decoded batch to the entry being written; None (an unreadable file, a full disk): drop it."""
    from imgcls.console import detail

    if array is None:
        detail("decoded images not cached: some files could not be read")
        writer.discard()
        return None
    try:
        writer.append(array)
        return writer
    except OSError as exc:
        detail(f"cannot write cache entry in {writer.folder}: {exc}")
        writer.discard()
        return None


def _publish(writer) -> None:
    from imgcls.console import detail

    try:
        writer.commit()
        detail(f"decoded images cached: {writer.folder / writer.key}.npy")
    except OSError as exc:
        detail(f"cannot write cache entry in {writer.folder}: {exc}")


def predict_array(
    model,
    info,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    tta: Any = False,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[Batch]:
    """Like :func:`predict_batches` for images already decoded (a uint8 N x H x W x C array or memmap)."""
    if batch_size < 1:
        raise UsageProblem("--batch-size must be at least 1")
    policy = tta_policy(info, tta)
    with _inference_mode(model):
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            probs, plain = _probabilities_and_plain(model, info, chunk, device, policy)
            if on_batch is not None:
                on_batch(len(chunk))
            yield Batch(list(range(start, start + len(chunk))), probs, plain=plain)


def decode_all(
    paths: Sequence[str | os.PathLike],
    image_size: int,
    channels: int,
    *,
    workers: int | None = None,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Every image as one uint8 N x S x S x C array; the first unreadable one raises DataError."""
    from imgcls.errors import DataError

    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    workers = default_workers() if workers is None else workers
    for indices, array, errors in iter_decoded(paths, image_size, channels, batch_size, workers):
        if errors:
            bad = errors[0]
            raise DataError(f"{bad.path}: {bad.message}")
        assert array is not None  # None only when every image of the batch failed
        out[indices] = array
        if on_batch is not None:
            on_batch(len(indices))
    return out


def predict_all(model, info, paths: Sequence[str | os.PathLike], **kwargs) -> tuple[np.ndarray, list[ImageError]]:
    """All probabilities at once: rows of failed images are NaN; errors listed apart."""
    probs = np.full((len(paths), len(info.classes)), np.nan)
    errors: list[ImageError] = []
    for batch in predict_batches(model, info, paths, **kwargs):
        if batch.indices:
            probs[batch.indices] = batch.probs
        errors.extend(batch.errors)
    return probs, errors


def model_label(path: str | os.PathLike) -> str:
    """A short name for a model in tables: its run folder for model.safetensors, else the file stem."""
    path = Path(path).resolve()  # runs/latest -> the run folder it points at
    if path.name == "model.safetensors" and path.parent.name:
        return path.parent.name
    if path.suffix.lower() == ".onnx":  # told apart from the torch model it was exported from
        return f"{path.parent.name}.onnx" if path.name == "model.onnx" and path.parent.name else path.name
    return path.stem
