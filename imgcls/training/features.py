"""Frozen-backbone features: computed once per image (and augmented view), kept in the on-disk cache.

With ``--freeze`` the backbone never changes, so neither does its output for an image:
``train`` runs it once over the data and the epochs train the head on the features.
The features also go into the on-disk cache (``<cache>/features``, see :mod:`imgcls.cache`),
so the next run on the same images with the same backbone and preprocessing skips the
backbone, and decoding, entirely.

An entry's key covers everything that decides its numbers, so a changed file, model or
setting is never served stale features:

* the backbone's tensors: SHA-256 over every parameter and buffer (name, dtype, shape,
  bytes) in state-dict order, plus the architecture and its options. About 5 ms for
  mobilenet_v2's 2.2 M values on the 2-core CPU (SHA-256 runs on the CPU's SHA
  instructions; BLAKE2b measured 8 ms);
* the preprocessing: image size, channels, mean, std, and the Pillow version (resizing);
* how the backbone ran: device type, precision (fp32, or bf16/fp16 autocast on CUDA),
  channels-last, and the torch version;
* the view: the plain images, or an augmented view (the augmentation's parameters, the
  seed and the view index);
* every image file as it is now (:func:`imgcls.cache.image_fingerprint`, the decoded-image
  cache's own file identity).

Entries hold float32: the head then trains on exactly the numbers it would get without
the cache (a cached run, an uncached run and a warm run give identical weights), and
features are small next to images (10,000 mobilenet_v2 features: 51 MB).

Augmented views (``--feature-views K``): view ``v`` of image ``i`` is drawn from
(seed, v, i) alone, with the same transforms the training Feeder applies on the fly, so
a view does not depend on the batch size, the number of processes or which views were
computed before; views are cached one entry each, so K=10 reuses the entries of K=5.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.training import distributed
from imgcls.training._console import detail
from imgcls.training.augment import PolicyAugment, apply_affine, affine_theta
from imgcls.training.data import Feeder, FeatureFeeder

FEATURES_VERSION = 1  # bump when what an entry holds changes for the same key parts


def backbone_digest(model: Any) -> str:
    """SHA-256 of the backbone's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.backbone.state_dict().items():
        t = tensor.detach()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        t = t.contiguous().cpu().reshape(-1)
        if t.numel():
            digest.update(memoryview(t.view(torch.uint8).numpy()))
    return digest.hexdigest()


# Input pixels in one CPU extraction batch. Measured (1 thread, 2-core AMD EPYC: 2 MiB L2 per
# core, 32 MiB L3; each batch size warmed up first), ms per image:
#   mobilenet_v2  32 px: 0.38 (16)  0.21 (64)  0.18 (128)  0.17 (256)
#   mobilenet_v2  96 px: 2.06 (8)  1.29 (16)  1.22 (32)  1.72 (64)  2.10 (128)
#   mobilenet_v2 224 px: 10.3 (4)  10.7 (8)  7.5 (16)  12.9 (32)  20.6 (64)
#   resnet18     224 px: 18.1 (8)  17.0 (16)  17.6 (32)  21.9 (64);  efficientnet_b0: 11.3 (16)  24.6 (64)
# Large batches of large images thrash the caches; below 16 the kernels lose their efficiency.
CPU_BATCH_PIXELS = 300_000


def extraction_batch_size(device: torch.device, image_size: int, default: int) -> int:
    """Images per backbone pass when extracting features (the features do not depend on it, but for rounding).

    On the CPU, about ``CPU_BATCH_PIXELS`` input pixels as a power of two in 16..256 (32 at
    96 px, 16 at 224 px, 256 at 32 px); on a GPU, ``default``.
    """
    if device.type != "cpu":
        return default
    import math

    target = CPU_BATCH_PIXELS / max(1, image_size) ** 2
    return int(min(256, max(16, 2 ** round(math.log2(max(target, 1.0))))))


STREAM_MIN_IMAGES = 256  # fewer: decoding first costs next to nothing


def overlap_workers(device: torch.device) -> int:
    """Decoding threads that can run beside the backbone without slowing it: the CPUs it leaves free.

    On the CPU, the cores beyond torch's threads (``--threads 1`` on 4 cores: 3); none when
    torch uses them all (decoding then comes first, on every core, as without a frozen
    backbone: a decoding thread would stall torch's threads). With a GPU, all CPUs but one.
    """
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if device.type == "cpu":
        return max(0, cpus - torch.get_num_threads())
    return max(1, cpus - 1)


def _decode_many(work: list[tuple[Path, int, int]]) -> np.ndarray:
    from imgcls.training.data import _decode

    return np.stack([_decode(item) for item in work])


def decoded_batches(paths: Sequence[Path], image_size: int, channels: int, batch: int,
                    workers: int) -> Iterator[np.ndarray]:
    """The images as uint8 (n, S, S, C) batches in order, decoded by ``workers`` threads ahead of the consumer.

    Threads, not processes: Pillow releases the GIL while it decodes and resizes, so a thread
    runs beside the backbone (which releases it too) without pickling every image through a
    pipe (measured: worker processes cost 0.18 ms of CPU per 28 px PNG plus as much again in
    the receiving process, against 0.12 ms for decoding it in place). With ``workers`` 0 the
    consumer decodes each batch itself. At most ``2 x workers`` batches are decoded ahead.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    work = [(Path(p), image_size, channels) for p in paths]
    starts = range(0, len(work), batch)
    if workers <= 0:
        for start in starts:
            yield _decode_many(work[start:start + batch])
        return
    upcoming = iter(starts)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgcls-decode")
    try:
        pending: deque = deque()

        def submit() -> None:
            start = next(upcoming, None)
            if start is not None:
                pending.append(pool.submit(_decode_many, work[start:start + batch]))

        for _ in range(2 * workers):
            submit()
        while pending:
            array = pending.popleft().result()
            submit()
            yield array
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class StreamFeeder:
    """Normalised batches straight from :func:`decoded_batches`, each also handed to ``on_batch`` (the decoded cache)."""

    def __init__(self, batches: Iterator[np.ndarray], n: int, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], channels_last: bool,
                 on_batch: Callable[[np.ndarray], None] | None = None):
        self.source, self.n, self.device = batches, n, device
        self.mean, self.std, self.channels_last, self.on_batch = list(mean), list(std), channels_last, on_batch

    def __len__(self) -> int:
        return self.n

    def batches(self, order: torch.Tensor | None = None, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from imgcls.models.preprocess import normalize

        if order is not None:
            raise ValueError("a stream is read once, in order")
        for array in self.source:
            if self.on_batch is not None:
                self.on_batch(array)
            x = normalize(torch.from_numpy(array).to(self.device), self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.zeros(len(array), dtype=torch.long, device=self.device)


def view_seed(seed: int, view: int) -> int:
    return (seed * 1_000_003 + view * 7_919 + 0x5EED) % 2**63


def image_seed(seed: int, view: int, index: int) -> int:
    return (view_seed(seed, view) * 10_000_019 + index) % 2**63


class ViewFeeder:
    """Batches of one fixed augmented view of a data set (for feature extraction).

    The transforms of :class:`~imgcls.training.data.Feeder`'s training batches (the uint8
    policy, normalisation, the random affine), with every image's draws taken from
    (seed, view, image index) instead of the running RNG. The global RNG is left as it was.
    """

    def __init__(self, feeder: Feeder, seed: int, view: int):
        if feeder.augment is None:
            raise ValueError("a view needs an active augmentation")
        self.feeder, self.device, self.batch_size = feeder, feeder.device, feeder.batch_size
        self.seed, self.view = seed, view
        spec = feeder.augment
        generator = torch.Generator().manual_seed(view_seed(seed, view))
        self.theta = affine_theta(len(feeder), spec, generator) if spec.geometric else None
        self.policy = PolicyAugment(spec.policy) if spec.policy else None

    def __len__(self) -> int:
        return len(self.feeder)

    def batches(self, order: torch.Tensor | None = None, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from imgcls.models.preprocess import normalize

        feeder, data = self.feeder, self.feeder.data
        if order is None:
            order = torch.arange(len(data))
        for idx in torch.split(order, self.batch_size):
            images = data.images[idx] if data.images is not None else torch.stack([data.item(int(i)) for i in idx])
            if self.policy is not None:
                with torch.random.fork_rng(devices=[]):
                    images = self.policy(images, seeds=[image_seed(self.seed, self.view, int(i)) for i in idx])
            x = normalize(images.to(self.device), feeder.mean, feeder.std)
            if self.theta is not None:
                x = apply_affine(x, self.theta[idx])
            if feeder.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, data.labels[idx].to(self.device)


class ViewFeatureFeeder(FeatureFeeder):
    """Training batches of cached features with K augmented views: epoch e trains on view (e - 1) mod K.

    Cycling (rather than drawing a view per image per epoch) shows every image each of its
    views once in K epochs, and the view of an epoch depends on its number alone, so a
    resumed run trains on the views the uninterrupted run would have.
    """

    def __init__(self, views: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int):
        super().__init__(views[0], labels, batch_size)
        self.views = list(views)
        self.epochs_done = lambda: 0  # set by the session: the trainer's completed epochs

    def batches(self, order: torch.Tensor | None = None, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        view = self.epochs_done() % len(self.views) if train else 0
        self.features = self.views[view]
        if train:
            detail(f"the head trains on augmented view {view + 1} of {len(self.views)}")
        return super().batches(order, train)


class FeatureStore:
    """Keys, look-ups and writes of frozen-feature cache entries for one backbone and preprocessing.

    Under torchrun every rank looks an entry up, and a miss on any rank is a miss on all
    (they then compute it together: the extraction is split between them); only each
    node's local rank 0 writes it.
    """

    def __init__(self, model: Any, cfg: Any, device: torch.device, precision: str, cache_dir: Path | None,
                 channels_last: bool):
        import PIL

        self.cache_dir = cache_dir
        self.device = device
        self.digest_seconds = 0.0
        self.parts: tuple = ()
        if cache_dir is None:
            return
        t0 = time.perf_counter()
        digest = backbone_digest(model)
        self.digest_seconds = time.perf_counter() - t0
        detail(f"backbone digest {digest[:16]} in {self.digest_seconds * 1000:.0f} ms")
        self.parts = (FEATURES_VERSION, cfg.arch, sorted(cfg.arch_options.items()), digest,
                      cfg.image_size, cfg.channels, [float(m) for m in cfg.mean], [float(s) for s in cfg.std],
                      f"Pillow {PIL.__version__}", device.type, precision, bool(channels_last),
                      f"torch {torch.__version__}")

    @property
    def enabled(self) -> bool:
        return self.cache_dir is not None

    def key(self, paths: Sequence[Path], sha256s: Sequence[str | None], view: dict[str, Any] | None) -> str:
        """The entry for these files (in this order) seen through ``view`` (None: the plain images)."""
        from imgcls.cache import entry_key, image_fingerprint

        fingerprints = [image_fingerprint(Path(p), s) for p, s in zip(paths, sha256s)]
        view_part = sorted(view.items()) if view is not None else "plain"
        return entry_key("features", fingerprints, *self.parts, view_part)

    def lookup(self, key: str) -> torch.Tensor | None:
        """The cached features on the device, or None (on every rank when any rank misses)."""
        from imgcls.cache import load_entry

        if self.cache_dir is None:
            return None
        hit = load_entry(self.cache_dir / "features", key)
        if distributed.any_flag(hit is None, self.device):
            return None
        assert hit is not None
        detail(f"features cache hit: {self.cache_dir / 'features' / key}.npy")
        return torch.from_numpy(np.array(hit)).to(self.device)

    def store(self, key: str, features: torch.Tensor) -> None:
        """Write an entry (each node's local rank 0 only); a cache that cannot be written only says so with -v."""
        from imgcls.cache import store_entry

        if self.cache_dir is None or distributed.info().local_rank != 0:
            return
        try:
            store_entry(self.cache_dir / "features", key, features.detach().float().cpu().numpy())
        except OSError as exc:
            detail(f"cannot write cache entry in {self.cache_dir / 'features'}: {exc}")


def view_spec(augment_name: str, augment: Any, seed: int, view: int) -> dict[str, Any]:
    """What an augmented view's key records: the preset's parameters, not only its name."""
    return {"augment": augment_name, **asdict(augment), "seed": seed, "view": view}
