"""The frozen-backbone path of a session: which views the backbone runs on once, their features, a fitted head.

Beside :mod:`imgcls.training.features` (the feature cache, view feeders, batch sizes):
:class:`FrozenFeatures` decides what the backbone runs on once (the plain images, K
augmented views, or nothing: every step), reads what the feature cache holds, computes the
rest (under DDP each rank a share, then all-gathered; alone with decoding in worker threads
beside the backbone), and hands the trainer feature feeders; :func:`fit_head` fits a
closed-form head (logreg, ncm) on them in one step and scores it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, cast

import torch

from imgcls.errors import UsageProblem
from imgcls.training import distributed, features
from imgcls.training._console import detail, info
from imgcls.training.config import TrainConfig
from imgcls.training.data import Feeder, FeatureFeeder, ImageSet, Splits, extract_features, label_tensor
from imgcls.training.features import (FeatureStore, StreamFeeder, ViewFeatureFeeder, ViewFeeder, decoded_batches,
                                      extraction_batch_size, view_spec)

if TYPE_CHECKING:
    import numpy as np

    from imgcls.models.classifier import Classifier
    from imgcls.training.augment import AugmentSpec
    from imgcls.training.loop import Precision


def closed_form_head(cfg: TrainConfig) -> bool:
    from imgcls.models.heads import CLOSED_FORM_HEADS

    return cfg.frozen and cfg.head in CLOSED_FORM_HEADS


def closed_form_augment_message(cfg: TrainConfig) -> str:
    return (f"--head {cfg.head} is fitted once on features computed once: with --augment {cfg.augment} add "
            f"--feature-views K (K augmented views of each training image, cached), or use --head linear "
            f"(trained by SGD on freshly augmented batches)")


@torch.no_grad()
def head_scores(model: Classifier, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy of the model's head on features (eval mode: no dropout)."""
    was = model.training
    model.eval()
    try:
        logits = model.head(features.float().to(next(model.head.parameters()).device))
        labels = labels.to(logits.device)
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        acc = float((logits.argmax(1) == labels).float().mean())
    finally:
        model.train(was)
    return loss, acc


class _fit_progress:
    """What a closed-form fit is doing: a transient status line in a terminal, -v detail lines otherwise."""

    def __init__(self, head: str):
        self.head = head
        self.status: Any = None

    def __enter__(self) -> Callable[[str], None]:
        from imgcls.console import get_console, is_interactive, settings

        if is_interactive() and settings.verbosity >= 0:
            self.status = get_console().status(f"fitting the {self.head} head")
            self.status.start()

        def progress(message: str) -> None:
            detail(message)
            if self.status is not None:
                from rich.markup import escape

                self.status.update(escape(message))

        return progress

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.stop()


class _ShardFeeder:
    """A feeder's batches over some of its images only (one rank's share of feature extraction)."""

    def __init__(self, feeder: Feeder | ViewFeeder, order: torch.Tensor):
        self.feeder, self.order, self.device = feeder, order, feeder.device

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.feeder.batches(self.order):
            if y.shape[0]:
                yield x, y


def sharded_features(model: Classifier, feeder: Feeder | ViewFeeder, autocast: Any) -> torch.Tensor:
    """Frozen-backbone features of every image: under DDP each rank computes 1/world of them, then all-gather."""
    if not distributed.info().enabled:
        return extract_features(model, feeder, autocast)
    n = len(feeder)
    mine = distributed.shard(torch.arange(n), pad=False)
    return distributed.gather_rows(extract_features(model, _ShardFeeder(feeder, mine), autocast), n)


class FrozenFeatures:
    """The frozen backbone's features of a session's train and val images (``dist``: the process group joined)."""

    def __init__(self, model: Classifier, cfg: TrainConfig, splits: Splits, root: Path, device: torch.device,
                 dist: distributed.DistInfo):
        self.model, self.cfg, self.splits, self.root, self.device, self.dist = model, cfg, splits, root, device, dist
        self.is_main = dist.is_main

    def views(self, augment: AugmentSpec) -> list[int | None] | None:
        """What the backbone runs on once: [None] (the plain images), views 0..K-1, or None (every step)."""
        cfg = self.cfg
        closed = closed_form_head(cfg)
        if not (cfg.frozen and (cfg.feature_cache or closed)):  # a closed-form head always needs the features
            return None
        if closed and augment.active and not cfg.feature_views:
            raise UsageProblem(closed_form_augment_message(cfg))
        if cfg.mixup or cfg.cutmix:  # blended images have features of their own
            if closed:
                raise UsageProblem(f"--head {cfg.head} is fitted once on the images' own features: --mixup and "
                                   f"--cutmix do not apply (use --head linear to train on blended batches)")
            if self.is_main:
                info("frozen backbone with --mixup/--cutmix: the backbone runs on every (blended) batch")
            return None
        if not augment.active:
            if cfg.feature_views:
                detail(f"--feature-views {cfg.feature_views}: no augmentation, so the one plain view is used")
            return [None]
        if cfg.feature_views:
            return list(range(cfg.feature_views))
        if self.is_main:
            info(f"frozen backbone with --augment {cfg.augment}: the backbone runs on every augmented batch "
                 f"(exact on-the-fly augmentation); --feature-views K would compute K augmented views once "
                 f"(K backbone passes in all, cached) and train the head on them")
        return None

    def feeds(self, store: FeatureStore, views: list[int | None], augment: AugmentSpec, index: dict[str, int],
              cache_dir: Path | None, channels_last: bool) -> tuple[FeatureFeeder, FeatureFeeder]:
        """Feature feeders for the frozen backbone: from the feature cache, else one backbone pass per set and view."""
        from imgcls.manifest import resolve_path
        from imgcls.training.loop import Precision

        cfg, device, splits = self.cfg, self.device, self.splits
        t0 = time.perf_counter()
        records = {"train": splits.train, "val": splits.val}
        paths = {name: [resolve_path(r, self.root) for r in recs] for name, recs in records.items()}
        shas = {name: [r.get("sha256") for r in recs] for name, recs in records.items()}
        specs = [None if v is None else view_spec(cfg.augment, augment, cfg.seed, v) for v in views]
        wanted: list[tuple[str, int | None, str]] = [("val", None, store.key(paths["val"], shas["val"], None))]
        wanted += [("train", view, store.key(paths["train"], shas["train"], spec)) for view, spec in zip(views, specs)]
        found = {key: store.lookup(key) for _, _, key in wanted}
        lookup_s = time.perf_counter() - t0
        n_train, n_val = len(splits.train), len(splits.val)
        missing = [(name, view, key) for name, view, key in wanted if found[key] is None]
        info(f"{cfg.arch}: {n_train} training and {n_val} validation images, "
             f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}{'' if missing else ', not decoded (their features are cached)'}"
             f"; device {device.type}"
             + (f"; {self.dist.world_size} processes (DDP, {self.dist.backend})" if self.dist.enabled else ""))
        amp = Precision(device, cfg.amp)
        t0 = time.perf_counter()
        sets: dict[str, ImageSet] = {}
        streamed = 0
        for name, view, key in missing:
            batch = extraction_batch_size(device, cfg.image_size, cfg.batch_size if name == "train"
                                          else max(cfg.batch_size, 256))
            detail(f"{name} features{'' if view is None else f' (view {view + 1})'}: batches of {batch} images")
            feats = None
            if view is None and name not in sets:
                feats = self._stream(paths[name], batch, amp, cache_dir, channels_last)
                streamed += feats is not None
            if feats is None:
                if name not in sets:
                    t1 = time.perf_counter()
                    with distributed.local_main_first():  # under DDP: one rank per node fills the decoded cache
                        sets[name] = ImageSet.from_records(records[name], self.root, index, cfg.image_size,
                                                           cfg.channels, cache_dir=cache_dir)
                    detail(f"{name} images decoded in {time.perf_counter() - t1:.1f}s")
                plain = Feeder(sets[name], batch, device, cfg.mean, cfg.std, augment if view is not None else None, 0,
                               channels_last)
                feeder: Feeder | ViewFeeder = plain if view is None else ViewFeeder(plain, cfg.seed, view)
                feats = sharded_features(self.model, feeder, amp.autocast)
            found[key] = feats
            store.store(key, feats)
        passes = sum(n_train if name == "train" else n_val for name, _, _ in missing)
        if not missing:
            what = f"read from the feature cache in {lookup_s:.1f}s (no backbone pass)"
        else:
            what = f"computed once in {time.perf_counter() - t0:.1f}s"
            if streamed:
                what += " (images decoded alongside by worker threads)"
            if store.enabled:
                what += " (cached for later runs)"
            if len(missing) < len(wanted):
                what += "; the rest read from the feature cache"
        closed = closed_form_head(cfg)
        if views == [None]:
            info(f"frozen backbone: features of {n_train + n_val} images {what}; "
                 + (f"the {cfg.head} head is fitted on them" if closed else "the epochs train the head on them"))
        else:
            info(f"frozen backbone: {len(views)} augmented views (--augment {cfg.augment}) of the {n_train} training "
                 f"images and the plain {n_val} validation images {what}; "
                 + (f"the {cfg.head} head is fitted on all views" if closed else
                    f"epoch e trains the head on view (e - 1) mod {len(views)}"))
        detail(f"backbone passes: {passes} images")
        ready = {key: feats for key, feats in found.items() if feats is not None}  # every key by now
        val_feed = FeatureFeeder(ready[wanted[0][2]], label_tensor(splits.val, index), max(cfg.batch_size, 256))
        train_labels = label_tensor(splits.train, index)
        train_feats = [ready[key] for _, _, key in wanted[1:]]
        if views == [None]:
            return FeatureFeeder(train_feats[0], train_labels, cfg.batch_size), val_feed
        return ViewFeatureFeeder(train_feats, train_labels, cfg.batch_size), val_feed

    def _stream(self, paths: list[Path], batch: int, amp: Precision, cache_dir: Path | None,
                channels_last: bool) -> torch.Tensor | None:
        """Plain features with decoding in worker threads beside the backbone (one pass over the files).

        None when it does not apply: under DDP (the ranks split the images), with no CPU core
        to spare, with few images, or when the decoded-image cache already holds them. The
        decoded images go into that cache as they come (the entry is published complete, or not at all).
        """
        from imgcls.cache import EntryWriter, decoded_key

        cfg, device = self.cfg, self.device
        workers = features.overlap_workers(device)  # looked up at the call: tests replace it
        if self.dist.enabled or workers < 1 or len(paths) < features.STREAM_MIN_IMAGES:
            return None
        key = decoded_key(paths, cfg.image_size, cfg.channels)
        if cache_dir is not None and (cache_dir / "decoded" / f"{key}.npy").exists():
            return None
        writer = None
        if cache_dir is not None:
            try:
                writer = EntryWriter(cache_dir, "decoded", key, (len(paths), cfg.image_size, cfg.image_size,
                                                                 cfg.channels))
            except OSError as exc:
                detail(f"cannot write cache entry in {cache_dir / 'decoded'}: {exc}")

        def keep(array: np.ndarray) -> None:
            nonlocal writer
            if writer is not None:
                try:
                    writer.append(array)
                except OSError as exc:
                    detail(f"cannot write cache entry in {writer.folder}: {exc}")
                    writer.discard()
                    writer = None

        detail(f"decoding with {workers} thread{'s' if workers > 1 else ''} while the backbone runs")
        try:
            feeder = StreamFeeder(decoded_batches(paths, cfg.image_size, cfg.channels, batch, workers), len(paths),
                                  device, cfg.mean, cfg.std, channels_last, on_batch=keep)
            feats = extract_features(self.model, feeder, amp.autocast)
            if writer is not None:
                try:
                    writer.commit()
                except OSError as exc:
                    detail(f"cannot write cache entry in {writer.folder}: {exc}")
            return feats
        finally:
            if writer is not None:
                writer.discard()


@dataclass
class HeadFit:
    """A closed-form head fitted in one step: its history line (epoch 1) and the fitter's own record."""

    record: dict[str, Any]
    info: dict[str, Any]
    val_loss: float
    val_acc: float


def fit_head(model: Classifier, cfg: TrainConfig, train_feed: FeatureFeeder, val_feed: FeatureFeeder, num_classes: int,
             guard: Callable[[], ContextManager[None]] = contextlib.nullcontext) -> HeadFit:
    """Fit the logreg/ncm head on the cached features (all views), copy it into the model, score it.

    ``guard`` wraps the fit itself (the session's SIGTERM handling). The history line is epoch
    1 of the run (one fit, the best and only "epoch"), with the train and val loss/accuracy of
    the fitted head, so eval --report's learning curves, finetune's epoch numbering and the
    best-epoch metadata read it like any other run.
    """
    import numpy as np

    from imgcls.models.heads import FITTERS

    t0 = time.perf_counter()
    views = list(getattr(train_feed, "views", None) or [train_feed.features])
    labels = train_feed.labels
    n = len(labels)
    x = torch.cat([v.float().cpu() for v in views]).numpy()
    y = labels.cpu().repeat(len(views)).numpy()
    groups = np.tile(np.arange(n), len(views))
    val = (val_feed.features.float().cpu().numpy(), val_feed.labels.cpu().numpy())
    head = cfg.head
    assert head is not None  # a closed-form head (logreg, ncm)
    with _fit_progress(head) as progress, guard():
        fit = FITTERS[head](x, y, num_classes, val=val, groups=groups,
                            class_weight=cfg.class_weights, seed=cfg.seed, progress=progress)
    linear = cast(torch.nn.Linear, model.head[1])  # behind the head's norm (see Classifier.set_head_norm)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(fit.weight))
        linear.bias.copy_(torch.from_numpy(fit.bias))
    train_loss, train_acc = head_scores(model, torch.cat(views), labels.repeat(len(views)))
    val_loss, val_acc = head_scores(model, val_feed.features, val_feed.labels)
    record = {"epoch": 1, "phase": cfg.phase, "head": cfg.head,
              "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
              "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6), "lr": None,
              "seconds": round(time.perf_counter() - t0, 3), "best": True}
    record.update({k: v for k, v in fit.info.items() if k in ("C", "selection", "temperature")})
    how = (f"C={fit.info['C']:.3g} chosen by {fit.info['selection']} log-loss" if cfg.head == "logreg"
           else f"temperature {fit.info['temperature']:.3g} fitted on the val split")
    info(f"{cfg.head} head fitted on {len(x)} feature vectors in {record['seconds']:.1f}s ({how}): "
         f"train loss {train_loss:.4f} acc {train_acc:.3f}, val loss {val_loss:.4f} acc {val_acc:.3f}")
    return HeadFit(record, fit.info, val_loss, val_acc)

