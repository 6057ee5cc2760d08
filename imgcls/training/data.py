"""Training data: manifest records -> decoded uint8 images in memory -> batches on the device.

Small data sets are decoded ONCE, in parallel, into one uint8 tensor (N, H, W, C):
every epoch after that indexes memory instead of decoding files again. The images go to
the device as uint8 (a quarter of the bytes of float) and are normalised there with
:func:`imgcls.models.preprocess.normalize`, the same definition eval and predict use.

Data sets too large for memory (see ``PRELOAD_LIMIT_BYTES``) are decoded per batch by
DataLoader workers instead, as are batches that need the (per-image, CPU) TrivialAugment
policy. Their settings come from the machine (:func:`choose_loader_settings`): worker
processes from the CPUs this process may use, pinned memory on CUDA, workers kept alive
from one epoch to the next. Which worker handles an image never changes the result: the
policy's random draws come from (a per-epoch seed, the image's index), not from the
worker, so 0, 1 or 8 workers train the same weights.

A decoded-image cache (memory-mapped uint8 file) can stand in for the in-memory tensor:
anything that indexes like a uint8 NHWC tensor works.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from imgcls.errors import DataError
from imgcls.manifest import Record, resolve_path
from imgcls.training._console import detail, warn
from imgcls.training.augment import AugmentSpec, PolicyAugment, random_affine

PRELOAD_LIMIT_BYTES = int(os.environ.get("IMGCLS_PRELOAD_LIMIT_MB", "4096")) * (1 << 20)


@dataclass
class Splits:
    train: list[Record]
    val: list[Record]
    carved_val: bool = False  # val was taken from train records (the manifest had none)


def split_records(records: Sequence[Record], classes: Sequence[str], seed: int, val_fraction: float = 0.15,
                  name: str = "manifest") -> Splits:
    """Train and val records with labels; test records and unlabelled ones are not used.

    Records without a ``split`` count as training data. Without any val record, a
    stratified ``val_fraction`` of the training records is held out (with a warning):
    early stopping and best-model selection need a validation set.
    """
    labelled = [r for r in records if r.get("label") is not None]
    train = [r for r in labelled if r.get("split") in (None, "train")]
    val = [r for r in labelled if r.get("split") == "val"]
    if not train:
        raise DataError(f"{name}: no labelled training records (split \"train\"); "
                        f"split the data with imgcls prepare --val/--test")
    present = sorted({r["label"] for r in train}, key=list(classes).index)
    if len(present) < 2:
        only = present[0] if present else "none"
        raise DataError(f"{name}: training needs at least 2 classes with training images (found only: {only})")
    missing = [c for c in classes if c not in set(present)]
    if missing:
        warn(f"classes without training images (the model keeps an output for them): {', '.join(missing[:5])}")
    if val:
        return Splits(train, val)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(train):
        by_class.setdefault(r["label"], []).append(i)
    held: set[int] = set()
    for label, idx in by_class.items():
        k = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.update(rng.choice(idx, size=k, replace=False).tolist() if k else [])
    if not held:
        raise DataError(f"{name}: no validation records (split \"val\") and too few training images to hold some out; "
                        f"add images or split with imgcls prepare --val")
    warn(f"{name}: no validation records (split \"val\"): holding out {len(held)} of {len(train)} training images "
         f"({val_fraction:.0%} per class, seeded) for validation; split with imgcls prepare --val to choose")
    return Splits([r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held],
                  carved_val=True)


def label_tensor(records: Sequence[Record], index: dict[str, int]) -> torch.Tensor:
    """The records' class indices (``index``: class name to index), in record order."""
    return torch.tensor([index[r["label"]] for r in records], dtype=torch.long)


def _peek(path: Path) -> tuple[int, int, str] | None:
    """Width, height and mode from the image header only (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.width, img.height, img.mode
    except Exception:  # noqa: BLE001 - reported properly when the image is decoded
        return None


def infer_geometry(records: Sequence[Record], root: Path) -> tuple[int | None, bool]:
    """(most common max side, all grayscale) of the records, peeking headers where prepare left no facts."""
    from imgcls.images import channels_of_mode

    sides: Counter[int] = Counter()
    gray = True
    for r in records:
        w, h, mode = r.get("width"), r.get("height"), r.get("mode")
        if w is None or h is None or mode is None:
            peek = _peek(resolve_path(r, root))
            if peek is None:
                continue
            w, h, mode = w or peek[0], h or peek[1], mode or peek[2]
        sides[max(int(w), int(h))] += 1
        if channels_of_mode(str(mode)) != 1:
            gray = False
    size = sides.most_common(1)[0][0] if sides else None
    return size, gray


def _decode(args: tuple[Path, int, int]) -> np.ndarray:
    from imgcls.images import ImageRejected
    from imgcls.models.preprocess import load_uint8

    path, size, channels = args
    try:
        return load_uint8(path, size, channels)
    except ImageRejected as exc:
        raise unreadable_since_prepare(exc) from None


def unreadable_since_prepare(exc) -> DataError:
    """An image prepare accepted that no longer decodes: say so, and what to do."""
    return DataError(f"{exc.path}: cannot read image ({exc.detail}); was it changed since imgcls prepare? "
                     f"rerun prepare to skip it")


class ImageSet:
    """Decoded images (uint8 N,H,W,C, in memory or decoded lazily) and their class indices."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, image_size: int, channels: int,
                 images: torch.Tensor | None = None):
        self.paths = paths
        self.labels = labels
        self.image_size = image_size
        self.channels = channels
        self.images = images  # None: decode on demand (too large to preload)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def preloaded(self) -> bool:
        return self.images is not None

    def item(self, i: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        return torch.from_numpy(np.array(_decode((self.paths[i], self.image_size, self.channels))))  # writable copy

    @classmethod
    def from_records(cls, records: Sequence[Record], root: Path, class_index: dict[str, int], image_size: int,
                     channels: int, workers: int | None = None, preload: bool | None = None,
                     cache_dir: Path | None = None) -> ImageSet:
        paths = [resolve_path(r, root) for r in records]
        labels = torch.tensor([class_index[r["label"]] for r in records], dtype=torch.long)
        nbytes = len(paths) * image_size * image_size * channels
        if preload is None:
            preload = nbytes <= PRELOAD_LIMIT_BYTES
        dataset = cls(paths, labels, image_size, channels)
        if preload:
            dataset.images = preload_images(paths, image_size, channels, workers, cache_dir=cache_dir,
                                            sha256s=[r.get("sha256") for r in records])
        else:
            missing = [p for p in paths if not p.exists()]
            if missing:
                raise DataError(f"{missing[0]}: no such file (was it moved since imgcls prepare?)")
            detail(f"{len(paths)} images ({nbytes / 2**30:.1f} GiB decoded) are decoded per batch, not preloaded")
        return dataset


def preload_images(paths: Sequence[Path], image_size: int, channels: int, workers: int | None = None,
                   cache_dir: Path | None = None, sha256s: Sequence[str | None] | None = None) -> torch.Tensor:
    """Decode every image once (worker processes for many files), through the decoded-image cache.

    With ``cache_dir`` a later run on the same unchanged files skips decoding entirely.
    """
    from imgcls.cache import load_decoded
    from imgcls.images import ImageRejected

    try:
        array = load_decoded(paths, image_size, channels, sha256s=sha256s, cache_dir=cache_dir, jobs=workers or None)
    except ImageRejected as exc:
        raise unreadable_since_prepare(exc) from None
    return torch.from_numpy(np.array(array))  # a writable copy in memory, also of a memory-mapped cache entry


WORKERS_AUTO = "auto"
CPU_WORKER_CAP = 4  # the model computes on the same cores: leave it at least half of them
ACCELERATOR_WORKER_CAP = 8  # the GPU computes: the CPUs decode; more than 8 rarely helps one GPU
PREFETCH_BATCHES = 2  # per worker: whole batches, so 2 keep the device fed without hoarding memory


@dataclass(frozen=True)
class LoaderSettings:
    """DataLoader settings for a pass that decodes (or augments) images on the CPU."""

    workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None  # None when workers == 0 (the DataLoader refuses one then)
    chosen: str  # how ``workers`` was decided, for -v

    def describe(self) -> str:
        if self.workers == 0:
            head = f"batches made in the main process ({self.chosen})"
        else:
            head = (f"{self.workers} worker process{'es' if self.workers > 1 else ''} ({self.chosen}), "
                    f"{'kept between epochs' if self.persistent_workers else 'started per pass'}, "
                    f"{self.prefetch_factor} batches prefetched per worker")
        return f"{head}, pinned memory {'on' if self.pin_memory else 'off'}"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def local_processes() -> int:
    """Training processes sharing this machine's CPUs (torchrun's LOCAL_WORLD_SIZE, else 1)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_loader_settings(requested: int | str | None, cpus: int, device_type: str, *, processes: int = 1,
                           passes: int | None = None, batches: int | None = None) -> LoaderSettings:
    """DataLoader settings from the machine: a pure function of its arguments.

    ``requested``: a number of workers (kept as given: 0 = decode in the main process),
    or "auto"/None: with ``cpus`` shared by ``processes`` (DDP ranks on this machine),
    CUDA/MPS get ``min(8, cpus - 1)`` workers (the GPU computes, one core stays with the
    training process), the CPU gets ``min(4, cpus // 2)`` (the model computes on the same
    cores). Never more workers than ``batches`` per pass. Pinned memory on CUDA (faster,
    asynchronous copies); workers kept alive between passes unless there is only one
    (``passes`` == 1), so they are not forked again every epoch.
    """
    if requested is None or requested == WORKERS_AUTO:
        share = max(1, cpus // max(1, processes))
        if device_type in ("cuda", "mps"):
            workers = min(ACCELERATOR_WORKER_CAP, share - 1)
        else:
            workers = min(CPU_WORKER_CAP, share // 2)
        per = f" for {processes} processes" if processes > 1 else ""
        chosen = f"auto: {cpus} CPUs{per}, {device_type} device"
    else:
        workers = int(requested)
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, or {WORKERS_AUTO!r}")
        chosen = "as requested"
    if batches is not None and workers > batches:
        workers = max(0, batches)
        chosen += f", at most one per batch ({batches})"
    return LoaderSettings(workers=workers, pin_memory=device_type == "cuda",
                          persistent_workers=workers > 0 and passes != 1,
                          prefetch_factor=PREFETCH_BATCHES if workers > 0 else None, chosen=chosen)


class _ItemDataset(torch.utils.data.Dataset):
    """One uint8 HWC image and its label per index (for DataLoader workers).

    An index may come with a seed, ``(i, seed)``: the policy then draws from that seed,
    whatever process runs it (the global RNG of the main process is left as it was).
    """

    def __init__(self, data: ImageSet, policy: str | None):
        self.data = data
        self.policy = PolicyAugment(policy) if policy else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.data.item(i)
        if self.policy is not None:
            if seed is None:
                img = self.policy(img[None])[0]
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    img = self.policy(img[None])[0]
        return img, self.data.labels[i]


class _PassBatches:
    """The batch sampler of a reused DataLoader: the batches of the current pass, set before each."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _image_seed(epoch_seed: int, index: int) -> int:
    return (epoch_seed * 1_000_003 + index) % (2**63 - 1)


class Feeder:
    """Batches for one pass: (normalised float NCHW on the device, labels on the device).

    ``order`` comes from the caller's seeded generator, so the data order is the same
    whichever path produces the batches (memory slicing or DataLoader workers).
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], augment: AugmentSpec | None = None, workers: int | str | None = 0,
                 channels_last: bool = False, passes: int | None = None):
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.mean = list(mean)
        self.std = list(std)
        self.augment = augment if augment is not None and augment.active else None
        self.channels_last = channels_last
        self.loader_settings: LoaderSettings | None = None
        self._loaders: dict[str | None, Any] = {}
        self._pass_batches = _PassBatches()
        if self.uses_loader:
            # ``workers``: a number, or "auto"; ``passes``: how often batches() will be called, when known
            self.loader_settings = choose_loader_settings(
                workers, available_cpus(), torch.device(device).type, processes=local_processes(), passes=passes,
                batches=self.num_batches())
            detail(f"DataLoader for {len(data)} images: {self.loader_settings.describe()}")
        self.workers = self.loader_settings.workers if self.loader_settings is not None else 0

    @property
    def uses_loader(self) -> bool:
        """Decoded lazily, or augmented by the per-image policy: batches come from a DataLoader."""
        return not self.data.preloaded or (self.augment is not None and self.augment.policy is not None)

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self, drop_single: bool = False) -> int:
        n = len(self.data)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not (drop_single and rest == 1) else 0)

    def _index_batches(self, order: torch.Tensor, drop_single: bool) -> list[torch.Tensor]:
        chunks = list(torch.split(order, self.batch_size))
        # A batch of one image breaks BatchNorm in training mode: drop it (it is reshuffled next epoch).
        if drop_single and chunks and len(chunks[-1]) == 1 and len(chunks) > 1:
            chunks.pop()
        return chunks

    def _uint8_batches(self, order: torch.Tensor, drop_single: bool,
                       augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        chunks = self._index_batches(order, drop_single)
        policy = self.augment.policy if self.augment is not None and augment else None
        images = self.data.images  # None: not preloaded
        if images is not None and policy is None:
            for idx in chunks:
                yield images[idx], self.data.labels[idx]
            return
        if policy is not None:
            # one draw per pass from the global RNG (restored by --resume, distinct per DDP rank),
            # then each image's policy draws from (that seed, its index): the same in any worker
            epoch_seed = int(torch.randint(0, 2**62, (1,)).item())
            self._pass_batches.batches = [[(i, _image_seed(epoch_seed, i)) for i in c.tolist()] for c in chunks]
        else:
            self._pass_batches.batches = [c.tolist() for c in chunks]
        try:
            yield from self._dataloader(policy)
        except DataError as exc:
            # A worker's error arrives with its traceback in the message: keep the one line that matters.
            last = str(exc).strip().splitlines()[-1]
            raise DataError(last.split(": ", 1)[1] if last.startswith("imgcls.errors.") else last) from None

    def _dataloader(self, policy: str | None) -> Any:
        """One DataLoader (per policy: on or off) for the Feeder's life, so persistent workers survive from pass to pass."""
        if policy not in self._loaders:
            settings = self.loader_settings or choose_loader_settings(0, 1, self.device.type)
            extra: dict[str, Any] = {}
            if settings.workers > 0:
                extra = {"persistent_workers": settings.persistent_workers, "prefetch_factor": settings.prefetch_factor}
            self._loaders[policy] = torch.utils.data.DataLoader(
                _ItemDataset(self.data, policy), batch_sampler=self._pass_batches, num_workers=settings.workers,
                pin_memory=settings.pin_memory,
                # its own generator: the workers' base seed is not drawn from the global RNG, so a
                # lazily decoded data set trains exactly as a preloaded one
                generator=torch.Generator().manual_seed(0), **extra,
            )
        return self._loaders[policy]

    def batches(self, order: torch.Tensor | None = None, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (and, when ``train``, augmented) batches in ``order`` (default: file order)."""
        from imgcls.models.preprocess import normalize

        if order is None:
            order = torch.arange(len(self.data))
        non_blocking = self.device.type == "cuda"
        for images, labels in self._uint8_batches(order, drop_single=train, augment=train):
            x = normalize(images.to(self.device, non_blocking=non_blocking), self.mean, self.std)
            if train and self.augment is not None:
                x = random_affine(x, self.augment)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.to(self.device, non_blocking=non_blocking)


class FeatureFeeder:
    """Batches of precomputed backbone features (frozen-backbone shortcut)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int):
        self.features = features
        self.labels = labels.to(features.device)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, drop_single: bool = False) -> int:
        n = len(self.labels)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not (drop_single and rest == 1 and full) else 0)

    def batches(self, order: torch.Tensor | None = None, train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if order is None:
            order = torch.arange(len(self.labels))
        order = order.to(self.features.device)
        chunks = list(torch.split(order, self.batch_size))
        if train and len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks.pop()
        for idx in chunks:
            yield self.features[idx], self.labels[idx]


class Feed(Protocol):
    """What the trainer reads: (inputs, labels) batches on the device, in the order it gives.

    Image feeders (:class:`Feeder`) and feature feeders (:class:`FeatureFeeder` and its
    views) alike. ``train=True`` batches may be augmented and leave out a last batch of one
    (BatchNorm), which ``num_batches(drop_single=True)`` counts the same way.
    """

    @property
    def batch_size(self) -> int: ...

    def __len__(self) -> int: ...

    def num_batches(self, drop_single: bool = False) -> int: ...

    def batches(self, order: torch.Tensor | None = None,
                train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class ImageBatches(Protocol):
    """What :func:`extract_features` reads: normalised (images, labels) batches in file order, on ``device``."""

    device: torch.device

    def batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


@torch.no_grad()
def extract_features(model: Any, feeder: ImageBatches, amp: Any = None) -> torch.Tensor:
    """Run the (frozen, eval-mode) backbone once over every image, in file order."""
    was_training = model.training
    model.eval()
    parts = []
    try:
        for x, _ in feeder.batches():
            if amp is not None:
                with amp():
                    f = model.features(x)
            else:
                f = model.features(x)
            parts.append(f.float())
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, model.feature_dim, device=feeder.device)
