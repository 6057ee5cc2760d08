"""Train, resume and fine-tune runs: from a manifest to a run folder.

The three entry points resolve their configuration and model differently, then hand
over to one :class:`Session` that decodes the data, runs the shared
:class:`~imgcls.training.loop.Trainer` and writes the run folder.

Launched by torchrun, each entry point first joins the process group
(:mod:`imgcls.training.distributed`); every rank then builds the same model and data,
trains on its shard through DistributedDataParallel, and only rank 0 creates and writes
the run folder (the other ranks learn its path from rank 0).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import DataError, UsageProblem
from imgcls.manifest import Header, Record, manifest_hash
from imgcls.training import distributed
from imgcls.training._console import detail, info, warn
from imgcls.training.config import BACKBONE_LR_RATIO, FINETUNE_RECIPE, TrainConfig, learning_rates
from imgcls.training.data import Feed, Feeder, ImageSet, Splits, infer_geometry, label_tensor, split_records
from imgcls.training.features import FeatureStore, ViewFeatureFeeder
from imgcls.training.frozen import FrozenFeatures, closed_form_augment_message, closed_form_head, fit_head
from imgcls.devices import resolve_device
from imgcls.training.loop import FitResult, StartPoint, Trainer
from imgcls.training.rundir import RunDir, resolve_run
from imgcls.training.saver import RunWriter

SCRATCH_SIZE_RANGE = (8, 64)
MIN_SIZE_PRETRAINABLE = 32


@dataclass
class RunResult:
    run_dir: Path
    model_path: Path | None
    fit: FitResult
    config: TrainConfig
    classes: list[str]
    signal: int | None = None  # the signal that stopped the run (SIGTERM), if one did

    @property
    def interrupted(self) -> bool:
        return self.fit.interrupted


# -- configuration helpers ------------------------------------------------------------------

def _per_channel(values: Sequence[float], channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise UsageProblem(f"{what}: {len(values)} values for a {channels}-channel model")
    if what.endswith("std") and any(v <= 0 for v in values):
        raise UsageProblem(f"{what}: standard deviations must be positive")
    return values


def resolve_normalisation(mean: Sequence[float], std: Sequence[float], pre: Any,
                          channels: int) -> tuple[list[float], list[float]]:
    """mean and std: as given (--mean/--std), else the pretrained weights', else the scratch defaults."""
    from imgcls.models.weights import SCRATCH_MEAN, SCRATCH_STD

    resolved = []
    for given, attr, default, flag in ((mean, "mean", SCRATCH_MEAN, "--mean"), (std, "std", SCRATCH_STD, "--std")):
        if given:
            resolved.append(_per_channel(given, channels, flag))
        elif pre is not None and getattr(pre, attr):
            resolved.append(_per_channel(getattr(pre, attr), channels, f"{pre.source}: {attr}"))
        else:
            resolved.append([default] * channels)
    return resolved[0], resolved[1]


def resolve_geometry(cfg: TrainConfig, spec: Any, train: Sequence[Record], root: Path,
                     weights_size: int | None = None) -> tuple[int, int]:
    """Input size and channels: options first, then the pretrained weights' own size, the architecture, the data."""
    size, channels = cfg.image_size or weights_size or None, cfg.channels or None
    if spec.channels is not None:
        if channels is not None and channels != spec.channels:
            raise UsageProblem(f"--channels {channels}: {spec.name} takes {spec.channels}-channel input "
                               f"(images are converted)")
        channels = spec.channels
    need_data = size is None and spec.default_size is None or channels is None
    common, gray = infer_geometry(train, root) if need_data else (None, False)
    if size is None:
        if spec.default_size is not None:
            size = spec.default_size
        else:
            lo, hi = SCRATCH_SIZE_RANGE
            size = min(max(common or 32, lo), hi)
            detail(f"image size {size} px (most common image side {common}, clamped to [{lo}, {hi}]; --image-size overrides)")
    if channels is None:
        channels = 1 if gray else 3
    low = getattr(spec, "min_size", None) or (MIN_SIZE_PRETRAINABLE if spec.pretrainable else SCRATCH_SIZE_RANGE[0])
    if size < low:
        raise UsageProblem(f"--image-size {size}: {spec.name} needs at least {low} px")
    return int(size), int(channels)


def _check_blocks(model: Any, n: int | None, what: str) -> None:
    if n is not None and (n < 0 or n > len(model.blocks)):
        raise UsageProblem(f"{what} {n}: this architecture has {len(model.blocks)} blocks (use 0..{len(model.blocks)} or all)")


def class_weights_for(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``auto``: n / (k * count) per class (scikit-learn's "balanced"); 0 for absent classes."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    weights = torch.zeros(num_classes)
    weights[present] = labels.numel() / (present.sum() * counts[present])
    return weights


def join_process_group(device_name: str) -> distributed.DistInfo:
    """Under torchrun: join the process group (nccl on CUDA, gloo otherwise); a no-op alone."""
    if not distributed.launched_by_torchrun():
        return distributed.info()
    return distributed.setup(resolve_device(device_name).type)


# -- the shared session ---------------------------------------------------------------------

class Session:
    """Data, trainer and run folder for one phase of training (train, resume or finetune)."""

    def __init__(self, model: Any, cfg: TrainConfig, classes: Sequence[str], splits: Splits, root: Path,
                 mhash: str, *, start_point: StartPoint = StartPoint(), callbacks: Sequence[Callable[..., None]] = (),
                 run_config: TrainConfig | None = None, prior_augmentation: dict[str, Any] | None = None):
        self.model = model
        self.run_config = run_config  # the whole run's configuration when this session is its frozen warm-up
        self.prior_augmentation = prior_augmentation  # the parent model's (finetune)
        self.cfg = cfg
        self.classes = list(classes)
        self.splits = splits
        self.root = root
        self.mhash = mhash
        self.start_point = start_point
        self.epoch_offset = start_point.epoch_offset
        self.history = list(start_point.history)
        self.callbacks = list(callbacks)
        self.dist = join_process_group(cfg.device)
        self.device = distributed.rank_device(resolve_device(cfg.device))
        self.is_main = self.dist.is_main
        self.run: RunDir | None = None
        self.ddp: Any = None
        self.writer: RunWriter | None = None
        self.stop_signal: int | None = None  # SIGTERM stopped the run
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu":
            from imgcls.memory import keep_freed_memory

            keep_freed_memory()  # no page faults per batch (see imgcls.memory)
        if self.device.type == "cuda":
            # Fixed input sizes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True

    def prepare(self) -> Trainer | None:
        """Decode images, build feeders (or cached features) and the trainer. No files are written yet."""
        from imgcls.cache import resolve_cache_dir
        from imgcls.training.augment import preset
        from imgcls.training.loop import Precision
        from imgcls.training.progress import EpochReporter

        cfg, device, model = self.cfg, self.device, self.model
        index = {c: i for i, c in enumerate(self.classes)}
        cache_dir = resolve_cache_dir(cfg.cache_dir, enabled=cfg.cache)
        augment = preset(cfg.augment, cfg.flip)
        self.closed_form = closed_form_head(cfg)
        channels_last = cfg.channels_last and device.type == "cuda"
        frozen = FrozenFeatures(model, cfg, self.splits, self.root, device, self.dist)
        views = frozen.views(augment)
        store = None
        if views is not None:  # the digest reads the weights where they are now (before a copy to the GPU)
            store = FeatureStore(model, cfg, device, Precision(device, cfg.amp).label, cache_dir, channels_last)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        forward = None
        if views is None:
            train_set, val_set = self._load_sets(index, cache_dir)
            train_feed: Feed = Feeder(train_set, cfg.batch_size, device, cfg.mean, cfg.std, augment, cfg.workers,
                                     channels_last)
            val_feed: Feed = Feeder(val_set, max(cfg.batch_size, 256), device, cfg.mean, cfg.std, None, cfg.workers,
                                   channels_last)
        else:
            # Frozen backbone: its output never changes, so compute it once per image (and view)
            # and train the head on the features (the model file still holds backbone + head).
            assert store is not None
            feature_train, feature_val = frozen.feeds(store, views, augment, index, cache_dir, channels_last)
            if self.closed_form:  # fit in one step in finish(): no optimiser, no epochs
                self.train_feed, self.val_feed, self.trainer = feature_train, feature_val, None
                return None
            train_feed, val_feed = feature_train, feature_val

            def forward(m: Any, x: torch.Tensor) -> torch.Tensor:
                return m.head(x)

        train_labels = label_tensor(self.splits.train, index)
        weights = class_weights_for(train_labels, len(self.classes)) if cfg.class_weights == "auto" else None
        last_epoch = self.epoch_offset + cfg.epochs
        trainer = self.trainer = Trainer(model, cfg, train_feed, val_feed, device, start_point=self.start_point,
                                         forward=forward, class_weights=weights, reporter=EpochReporter(last_epoch))
        if isinstance(train_feed, ViewFeatureFeeder):  # augmented views: the epoch picks the view
            train_feed.epochs_done = lambda: trainer.state.epoch
        if self.dist.enabled:
            # DDP wraps what the training step runs: the whole model, or the head alone on cached features.
            # The trainer keeps the bare model: saved files are the same as a single process's.
            ddp = self.ddp = distributed.wrap(model.head if views is not None else model, device)
            self.trainer.train_forward = lambda m, x: ddp(x)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        detail(f"{trainable:,} of {model.count_parameters():,} parameters train; precision {self.trainer.precision.label}")
        return self.trainer

    def _load_sets(self, index: dict[str, int], cache_dir: Path | None) -> tuple[ImageSet, ImageSet]:
        """Decode the train and val images (through the decoded-image cache) and say so."""
        cfg, splits = self.cfg, self.splits
        t0 = time.perf_counter()
        with distributed.local_main_first():  # under DDP: one rank per node fills the decoded-image cache
            train_set = ImageSet.from_records(splits.train, self.root, index, cfg.image_size, cfg.channels,
                                              cache_dir=cache_dir)
            val_set = ImageSet.from_records(splits.val, self.root, index, cfg.image_size, cfg.channels,
                                            cache_dir=cache_dir)
        info(f"{cfg.arch}: {len(train_set)} training and {len(val_set)} validation images, "
             f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}, decoded in {time.perf_counter() - t0:.1f}s; "
             f"device {self.device.type}" + (f"; {self.dist.world_size} processes (DDP, {self.dist.backend})"
                                             if self.dist.enabled else ""))
        return train_set, val_set

    def start(self, run: RunDir) -> None:
        """Attach the run folder: the run writer saves the best model, history and checkpoint into it."""
        self.run = run
        trainer = self.trainer
        self.writer = RunWriter(run, self.model, self.cfg, self.classes, self.mhash, trainer=trainer,
                                run_config=self.run_config, prior_augmentation=self.prior_augmentation)
        if trainer is None:  # a closed-form head: finish() writes the run folder at once
            return
        if not self.is_main:  # rank 0 alone writes the run folder
            trainer.on_best = None
            trainer.on_epoch = list(self.callbacks)
            return
        trainer.on_best = self.writer.on_best
        trainer.on_epoch = [self.writer.after_epoch, *self.callbacks]

    def save_model(self, extra: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write model.safetensors now (see :meth:`RunWriter.save_model`)."""
        assert self.writer is not None
        return self.writer.save_model(extra, state)

    def _fit(self) -> FitResult:
        """The trainer's fit; SIGTERM (a scheduler, ``timeout``) stops it like Ctrl-C in a single process."""
        trainer = self.trainer
        assert trainer is not None
        with self._sigterm_stops():
            return trainer.fit()

    def finish(self) -> RunResult:
        """Fit, then restore the best weights and write the final files. Cleans up a run that never got a model."""
        assert self.run is not None
        if self.trainer is None:
            return self._finish_closed_form()
        trainer, run = self.trainer, self.run
        try:
            result = self._fit()
        except BaseException:
            if self.is_main:
                try:  # what was reached before the error stays usable, as if written every epoch
                    assert self.writer is not None
                    self.writer.flush()
                except Exception as exc:  # noqa: BLE001 - the original error matters more
                    detail(f"could not write the pending model/checkpoint: {exc}")
                run.remove_if_unused()
            raise
        if distributed.debug_shards_enabled():
            distributed.write_debug_shards(trainer.seen, trainer.model)
        if not self.is_main:
            # Same weights as rank 0 (DDP); the files are rank 0's, named as rank 0 names them.
            if trainer.best_state is not None and not result.interrupted:
                trainer.restore_best()
            return RunResult(run.path, run.model_path if trainer.best_state is not None else None, result,
                             self.cfg, self.classes, self.stop_signal)
        final = trainer.best_state is not None and not result.interrupted
        if final:
            trainer.restore_best()
            extra: dict[str, Any] = {"best_epoch": result.best_epoch, "epochs_run": self.epoch_offset + result.epochs_run,
                     "stopped_early": result.stopped_early,
                     "val_loss": result.best_val_loss if math.isfinite(result.best_val_loss) else None}
            best = [h for h in result.history if h["epoch"] == result.best_epoch]
            if best:
                extra["val_acc"] = best[-1]["val_acc"]
                if best[-1].get("weights") == "ema":  # the moving average validated better than the live weights
                    extra["val_acc"] = best[-1]["ema_val_acc"]
                    extra["weights"] = "ema"
            self.save_model(extra=extra)
        # The model before the checkpoint: a checkpoint saying "done" never sits beside an older model.
        assert self.writer is not None
        self.writer.flush(model=not final)
        if result.history:
            run.write_history(result.history)
            try:
                run.write_plot(result.history)
            except Exception as exc:  # noqa: BLE001 - a plot is never worth failing a run for
                detail(f"no learning-curve plot: {exc}")
        if not run.model_path.exists():
            run.remove_if_unused()
            return RunResult(run.path, None, result, self.cfg, self.classes, self.stop_signal)
        run.update_latest()
        return RunResult(run.path, run.model_path, result, self.cfg, self.classes, self.stop_signal)

    def _finish_closed_form(self) -> RunResult:
        """Fit a logreg/ncm head on the cached features (:func:`~imgcls.training.frozen.fit_head`), then write
        the model, its one-line history and the plot."""
        assert self.run is not None
        cfg, run, model = self.cfg, self.run, self.model
        try:
            fitted = fit_head(model, cfg, self.train_feed, self.val_feed, len(self.classes), self._sigterm_stops)
            history = [*self.history, fitted.record]
            fit_result = FitResult(history=history, best_epoch=1, best_val_loss=fitted.val_loss, epochs_run=1)
            if self.is_main:
                self.save_model(extra={"best_epoch": 1, "epochs_run": 1, "stopped_early": False,
                                       "val_loss": round(fitted.val_loss, 6), "val_acc": round(fitted.val_acc, 6),
                                       "head_fit": fitted.info})
                run.write_history(history)
                try:
                    run.write_plot(history)
                except Exception as exc:  # noqa: BLE001 - a plot is never worth failing a run for
                    detail(f"no learning-curve plot: {exc}")
                run.update_latest()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM during the fit: no model, no run folder left behind
            if self.is_main:
                run.remove_if_unused()
            return RunResult(run.path, None, FitResult(history=[], interrupted=True), cfg, self.classes,
                             self.stop_signal)
        except BaseException:
            if self.is_main:
                run.remove_if_unused()
            raise
        return RunResult(run.path, run.model_path, fit_result, cfg, self.classes, self.stop_signal)

    @contextlib.contextmanager
    def _sigterm_stops(self) -> Iterator[None]:
        """SIGTERM raises KeyboardInterrupt while in the block, so a stopped fit ends like Ctrl-C (single process only)."""
        import signal
        import threading

        handled = (not self.dist.enabled and threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        if not handled:
            yield
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_manifest_copy(run: RunDir, header: Header, records: Sequence[Record], root: Path) -> None:
    """The data the run used, for --resume; relative paths keep resolving (root made explicit)."""
    from imgcls.manifest import write_manifest

    header = dict(header)
    header.setdefault("root", str(Path(root).resolve()))
    write_manifest(run.manifest_path, header, records)


def _create_run(out: Path | str | None, name: str, header: Header, records: Sequence[Record], root: Path) -> RunDir:
    """Rank 0 creates the run folder and its manifest copy; every rank gets its path."""
    path = None
    if distributed.info().is_main:
        run = RunDir.create(out, name)
        try:
            _write_manifest_copy(run, header, records, root)
        except BaseException:
            run.remove_if_unused()
            raise
        path = str(run.path)
    return RunDir(Path(distributed.broadcast_object(path)))


# -- train ----------------------------------------------------------------------------------

def build_training(header: Header, records: Sequence[Record], root: Path, cfg: TrainConfig,
                   name: str = "manifest") -> tuple[TrainConfig, Any, list[str], Splits]:
    """The resolved configuration, the model (with its starting weights), the classes and the splits of a train run."""
    from imgcls.models.registry import get_model, get_spec
    from imgcls.models.weights import load_backbone_state, resolve_pretrained

    from imgcls.models.heads import DEFAULT_FROZEN_HEAD, HEADS
    from imgcls.models.weights import weights_size
    from imgcls.training.augment import preset

    spec = get_spec(cfg.arch)
    join_process_group(cfg.device)
    if cfg.head is not None and cfg.head not in HEADS:
        raise UsageProblem(f"--head {cfg.head}: not a head (choose from {', '.join(HEADS)})")
    if cfg.head is not None and not cfg.frozen:
        raise UsageProblem(f"--head {cfg.head}: the head choice is for a frozen backbone; add --freeze "
                           f"(a training backbone always gets the SGD-trained linear head)")
    head = cfg.head or (DEFAULT_FROZEN_HEAD if cfg.frozen else "linear")
    cfg = replace(cfg, head=head, head_norm=None if head == "linear" else "l2")
    if closed_form_head(cfg) and preset(cfg.augment, cfg.flip).active and not cfg.feature_views:
        raise UsageProblem(closed_form_augment_message(cfg))
    classes = list(header["classes"])
    splits = split_records(records, classes, cfg.seed, cfg.val_fraction, name)
    if cfg.pretrained and not spec.pretrainable and not cfg.weights:
        raise UsageProblem(f"{cfg.arch} is trained from scratch: it has no pretrained weights (drop --pretrained, "
                           f"or pass --weights FILE to start from a saved state dict)")
    use_hub = spec.pretrainable and cfg.weights is None and cfg.pretrained is not False
    if cfg.weights_name is not None and not spec.pretrainable:
        raise UsageProblem(f"--weights-name {cfg.weights_name}: {cfg.arch} has no pretrained weights")
    if cfg.weights_name is not None and not use_hub and cfg.weights is None:
        raise UsageProblem(f"--weights-name {cfg.weights_name} picks pretrained weights: it cannot be combined "
                           f"with --no-pretrained")
    named_size = weights_size(cfg.arch, cfg.weights_name) if spec.pretrainable and cfg.weights_name else None
    image_size, channels = resolve_geometry(cfg, spec, splits.train, root, weights_size=named_size)
    with distributed.local_main_first():  # one download per node into the torch hub cache
        pre = resolve_pretrained(cfg.arch, pretrained=use_hub, weights_file=cfg.weights,
                                 progress=False, weights_name=cfg.weights_name)
    if pre is not None:
        info(f"pretrained weights: {pre.source}")
    if cfg.trainable_blocks == 0 and pre is None:
        warn(f"--freeze without pretrained weights: only the head trains on a randomly initialised {cfg.arch} backbone")
    mean, std = resolve_normalisation(cfg.mean, cfg.std, pre, channels)
    cfg = replace(cfg, phase="train", image_size=image_size, channels=channels, mean=mean, std=std,
                  pretrained=pre is not None, weights_source=pre.source if pre is not None else None,
                  freeze_bn=(pre is not None) if cfg.freeze_bn is None else cfg.freeze_bn)

    from imgcls.training.budget import check_training_memory

    check_training_memory(cfg, len(classes), len(splits.train) + len(splits.val), resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = get_model(cfg.arch, num_classes=len(classes), in_channels=channels, dropout=cfg.dropout,
                      pretrained=False, weights=pre if (pre is not None and spec.pretrainable) else None,
                      image_size=image_size, **cfg.arch_options)
    if cfg.head_norm is not None:
        model.set_head_norm(cfg.head_norm)
    if pre is not None and not spec.pretrainable:
        load_backbone_state(model.backbone, pre.state_dict, (), cfg.arch, pre.source)
    _check_blocks(model, cfg.trainable_blocks, "--unfreeze")
    if cfg.trainable_blocks is not None:
        model.set_trainable_blocks(cfg.trainable_blocks)
    return cfg, model, classes, splits


def train(header: Header, records: Sequence[Record], root: Path, cfg: TrainConfig, *, out: Path | str | None = None,
          callbacks: Sequence[Callable[..., None]] = (), name: str = "manifest") -> RunResult:
    """Train ``cfg.arch`` on the manifest's train split, selecting on its val split."""
    cfg, model, classes, splits = build_training(header, records, root, cfg, name)
    mhash = manifest_hash(header, records)
    if warms_up(cfg):
        # fastai's fine_tune: the new head first learns on the frozen backbone, then everything trains
        model.set_trainable_blocks(0)
        session = Session(model, warmup_config(cfg), classes, splits, root, mhash, callbacks=callbacks, run_config=cfg)
    else:
        session = Session(model, cfg, classes, splits, root, mhash, callbacks=callbacks)
    session.prepare()
    run = _create_run(out, cfg.arch, header, records, root)
    session.start(run)
    info(f"run folder: {run.path}")
    if warms_up(cfg):
        info(f"fine-tuning recipe: {cfg.freeze_epochs} head-only epochs on the frozen backbone (--freeze-epochs), "
             f"then every block trains ({cfg.schedule} schedule, head lr {cfg.lr:g}, backbone lr "
             f"{cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr:g})")
    result = session.finish()
    if session.run_config is None or result.interrupted or result.model_path is None:
        return result
    return _unfrozen_phase(model, cfg, classes, splits, root, mhash, run, result, callbacks)


def warms_up(cfg: TrainConfig) -> bool:
    """Training starts from trained weights with a new head and an unfrozen backbone: warm the head up first."""
    return cfg.pretrained and cfg.trainable_blocks != 0 and cfg.freeze_epochs > 0 and cfg.phase == "train"


def warmup_config(cfg: TrainConfig) -> TrainConfig:
    """The frozen warm-up of ``cfg``: the head alone, on the plain images' cached features.

    No augmentation, mixup or EMA there (they would make the backbone run on every batch,
    and the head only needs a sensible start); a cosine over ``freeze_epochs``.
    """
    return replace(cfg, phase="warmup", trainable_blocks=0, epochs=cfg.freeze_epochs, schedule="cosine",
                   backbone_lr=None, augment="none", feature_views=0, mixup=0.0, cutmix=0.0, ema=0.0)


def _unfrozen_phase(model: Any, cfg: TrainConfig, classes: Sequence[str], splits: Splits, root: Path, mhash: str,
                    run: RunDir, warm: RunResult, callbacks: Sequence[Callable[..., None]]) -> RunResult:
    """After the warm-up, in the same run folder: every block trains, starting from the warm-up's best weights."""
    model.set_trainable_blocks(cfg.trainable_blocks)
    offset = max((int(h["epoch"]) for h in warm.fit.history), default=0)
    start = StartPoint(offset, warm.fit.history, baseline=True, baseline_epoch=warm.fit.best_epoch)
    session = Session(model, cfg, classes, splits, root, mhash, start_point=start, callbacks=callbacks)
    session.prepare()
    session.start(run)
    info(f"warm-up done (best epoch {warm.fit.best_epoch}); unfreezing: every block trains from here")
    return session.finish()


def find_lr(header: Header, records: Sequence[Record], root: Path, cfg: TrainConfig, *, steps: int | None = None,
            name: str = "manifest") -> Any:
    """``train --find-lr``: the learning-rate range test (:mod:`imgcls.training.lr_find`) for this run's setup.

    It sweeps what ``--lr`` first drives: the head on the frozen backbone when the run would
    start with a warm-up (pretrained weights, no --freeze), else the model as it would train.
    No run folder; the weights are thrown away.
    """
    from imgcls.training import lr_find
    from imgcls.training.progress import EpochReporter

    if distributed.launched_by_torchrun():
        raise UsageProblem("--find-lr runs in one process: run it without torchrun")
    cfg, model, classes, splits = build_training(header, records, root, cfg, name)
    if warms_up(cfg):
        model.set_trainable_blocks(0)
        sweep_cfg = warmup_config(cfg)
        info("--find-lr: sweeping the head on the frozen backbone (what --lr drives first: the warm-up)")
    else:
        sweep_cfg = cfg
    sweep_cfg = replace(sweep_cfg, schedule="none", ema=0.0, precise_bn=0, checkpoint=False)
    session = Session(model, sweep_cfg, classes, splits, root, manifest_hash(header, records))
    trainer = session.prepare()
    if trainer is None:  # a closed-form head: nothing is trained at a rate
        raise UsageProblem(f"--find-lr sweeps the SGD learning rate: the {sweep_cfg.head} head is fitted in one "
                           f"step and has none (use --head linear to train the head by SGD)")
    n = steps or lr_find.STEPS
    reporter = EpochReporter(1)
    with reporter.epoch(1, n) as advance:
        result = lr_find.sweep(trainer, steps=n, advance=advance)
    return result


# -- resume ---------------------------------------------------------------------------------

def resume(run_path: str | Path, *, header: Header | None = None, records: Sequence[Record] | None = None,
           root: Path | None = None, overrides: dict[str, Any] | None = None,
           callbacks: Sequence[Callable[..., None]] = ()) -> tuple[RunResult, Header, list[Record]]:
    """Continue an interrupted run in its own folder from its last checkpoint.

    The data is the manifest saved in the run folder, unless one is given (it must be the same).
    Returns the result plus the manifest used (for the stdout stream).
    """
    from safetensors.torch import load_file

    from imgcls.manifest import read_all
    from imgcls.models.registry import get_model
    from imgcls.training.checkpoint import check_resumable, load_checkpoint, restore_training_state

    run = RunDir(resolve_run(run_path))
    if not run.path.is_dir():
        raise UsageProblem(f"--resume {run_path}: no such run folder")
    if not run.checkpoint_path.exists() and run.model_path.exists():
        from imgcls.models.heads import CLOSED_FORM_HEADS
        from imgcls.models.io import read_model_info

        made = read_model_info(run.model_path).head
        if made in CLOSED_FORM_HEADS:
            raise UsageProblem(f"--resume {run.path}: its {made} head was fitted in one step; there is nothing "
                               f"to resume (fine-tune it with imgcls finetune, or train again)")
    ckpt = load_checkpoint(run.checkpoint_path, resume=True)
    meta = ckpt.meta
    cfg = TrainConfig.from_dict(meta["config"])
    run_cfg = TrainConfig.from_dict(meta["run_config"]) if meta.get("run_config") else None
    if overrides:
        changes = {k: v for k, v in overrides.items() if v is not None}
        if run_cfg is not None:  # interrupted in the warm-up: --epochs is the run's, not the warm-up's
            run_cfg = replace(run_cfg, **changes)
            cfg = replace(cfg, **{k: v for k, v in changes.items() if k != "epochs"})
        else:
            cfg = replace(cfg, **changes)
    if records is None or not records:
        if not run.manifest_path.exists():
            raise DataError(f"{run.path}: no manifest.jsonl in the run folder; pipe in the manifest it was trained on")
        header, records, reader = read_all(run.manifest_path)
        root = reader.root
    assert header is not None and root is not None
    mhash = manifest_hash(header, records)
    if mhash != meta.get("manifest_hash"):
        raise DataError(f"{run.path}: the manifest differs from the one this run was trained on "
                        f"(hash {mhash} vs {meta.get('manifest_hash')}); resume needs the same data")
    check_resumable(ckpt, header, records)
    classes = list(meta["classes"])
    done = int(meta["epoch"])
    if done >= cfg.epochs and run_cfg is None:  # a finished warm-up goes on to its second phase
        raise UsageProblem(f"--resume {run.path}: all {cfg.epochs} epochs are done; pass a larger --epochs to continue")
    splits = split_records(records, classes, cfg.seed, cfg.val_fraction, str(run.manifest_path))
    model = get_model(cfg.arch, num_classes=len(classes), in_channels=cfg.channels, dropout=cfg.dropout,
                      pretrained=False, image_size=cfg.image_size, **cfg.arch_options)
    if cfg.head_norm is not None:
        model.set_head_norm(cfg.head_norm)
    if cfg.trainable_blocks is not None:
        model.set_trainable_blocks(cfg.trainable_blocks)
    # The checkpoint's weights before prepare(): frozen-backbone features are computed from them.
    ckpt.load_model_state(model)
    offset = int(meta.get("epoch_offset", 0))
    session = Session(model, cfg, classes, splits, root, mhash, start_point=StartPoint(offset), callbacks=callbacks,
                      run_config=run_cfg, prior_augmentation=_parent_augmentation(cfg.parent))
    trainer = session.prepare()
    assert trainer is not None  # a run with a checkpoint trains by SGD (heads fitted in one step write none)
    best_state = None
    if run.model_path.exists():
        try:
            best_state = load_file(str(run.model_path))
        except Exception:  # noqa: BLE001 - the checkpoint alone is enough to continue
            warn(f"{run.model_path}: unreadable; the best model restarts from the checkpoint")
    restore_training_state(trainer, ckpt, best_state)
    if best_state is None:
        trainer.state.best_val_loss = math.inf
    session.start(run)
    info(f"resuming {run.path} after epoch {offset + done}")
    result = session.finish()
    if run_cfg is not None and not result.interrupted and result.model_path is not None:
        result = _unfrozen_phase(model, run_cfg, classes, splits, root, mhash, run, result, callbacks)
    return result, header, list(records)


# -- finetune -------------------------------------------------------------------------------

def _augmentation_of(minfo: Any) -> dict[str, Any] | None:
    """What a saved model was trained to see (its record, else its training config), for its fine-tuned child."""
    record = minfo.extra.get("augmentation")
    if isinstance(record, dict):
        return record
    if minfo.config and "augment" in minfo.config:
        from imgcls.training.augment import augmentation_record

        try:
            return augmentation_record(str(minfo.config["augment"]), bool(minfo.config.get("flip", True)))
        except ValueError:
            return None
    return None


def _parent_augmentation(parent: str | None) -> dict[str, Any] | None:
    """The same for a fine-tuning run resumed later: read from its parent model file, if it is still there."""
    if not parent:
        return None
    from imgcls.models.io import read_model_info

    try:
        return _augmentation_of(read_model_info(parent))
    except Exception:  # noqa: BLE001 - a parent moved away only loses the merged record
        return None


def read_parent_history(model_path: Path) -> list[dict[str, Any]]:
    """The history.jsonl beside a model file (its run folder), if any; damaged lines are skipped with a warning."""
    from imgcls.metadata import read_history

    path = model_path.parent / "history.jsonl"
    if not path.exists():
        return []
    return read_history(path, warn)


def finetune(header: Header, records: Sequence[Record], root: Path, model_path: str | Path,
             overrides: dict[str, Any], *, unfreeze: int | None, backbone_lr_ratio: float | None = BACKBONE_LR_RATIO,
             out: Path | str | None = None, callbacks: Sequence[Callable[..., None]] = (),
             name: str = "manifest") -> RunResult:
    """Continue training a saved model with the last ``unfreeze`` blocks trainable (None: all).

    Configuration is inherited from the parent model's training config, then ``overrides``
    (None values mean "inherit"), except the fine-tuning recipe and the rates of trained
    weights (:func:`~imgcls.training.config.learning_rates`): the head learns at ``lr``
    (default ``PRETRAINED_LR``), the backbone at ``backbone_lr`` or ``lr * backbone_lr_ratio``.
    """
    from imgcls.models.io import load_model, resolve_model_path

    path = resolve_model_path(model_path)
    model, minfo = load_model(path)
    classes = list(minfo.classes)
    manifest_classes = list(header.get("classes") or [])
    unknown = [c for c in manifest_classes if c not in classes]
    if unknown:
        raise DataError(f"{name}: classes unknown to the model {path}: {', '.join(unknown[:5])} "
                        f"(the model knows: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); "
                        f"fine-tuning keeps the model's classes; train a new model for new classes")
    parent_cfg = TrainConfig.from_dict(minfo.config) if minfo.config else TrainConfig(arch=minfo.arch)
    cfg = replace(parent_cfg, arch=minfo.arch, arch_options=dict(minfo.arch_options), dropout=minfo.dropout,
                  image_size=minfo.image_size, channels=minfo.channels, mean=list(minfo.mean), std=list(minfo.std),
                  phase="finetune", parent=str(path.resolve()), trainable_blocks=unfreeze,
                  head="linear", head_norm=minfo.head_norm)  # the head now trains by SGD from the parent's weights
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("freeze_bn") is None:
        cfg = replace(cfg, freeze_bn=True)  # the parent's statistics fit this data (or ImageNet's fit its weights)
    # the fine-tuning recipe (warm-up + cosine, mixup, label smoothing), whatever the parent trained with
    cfg = replace(cfg, **{k: v for k, v in FINETUNE_RECIPE.items() if overrides.get(k) is None})
    lr, backbone_lr = learning_rates(overrides.get("lr"), overrides.get("backbone_lr"), backbone_lr_ratio,
                                     from_pretrained=True, backbone_trains=True)
    cfg = replace(cfg, lr=lr, backbone_lr=backbone_lr)
    splits = split_records(records, classes, cfg.seed, cfg.val_fraction, name)
    _check_blocks(model, unfreeze, "--unfreeze")
    torch.manual_seed(cfg.seed)
    model.set_trainable_blocks(unfreeze)
    model.train()
    history = read_parent_history(path)
    offset = max((int(h.get("epoch", 0)) for h in history), default=0)
    for h in history:
        h.setdefault("phase", "train")
    mhash = manifest_hash(header, records)
    parent_best = minfo.extra.get("best_epoch")  # the starting weights are the parent's best epoch
    start = StartPoint(offset, history, baseline=True,
                       baseline_epoch=parent_best if isinstance(parent_best, int) else offset)
    session = Session(model, cfg, classes, splits, root, mhash, start_point=start, callbacks=callbacks,
                      prior_augmentation=_augmentation_of(minfo))
    session.prepare()
    run = _create_run(out, f"{cfg.arch}-finetune", header, records, root)
    session.start(run)
    blocks = "all blocks" if unfreeze is None else f"the last {unfreeze} of {len(model.blocks)} blocks"
    info(f"fine-tuning {path} ({blocks}; head lr {cfg.lr:g}, backbone lr {cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr:g}); "
         f"run folder: {run.path}")
    # The starting point counts as "best so far" (baseline), so the run folder holds a usable model at once.
    if session.is_main:
        assert session.trainer is not None  # an SGD-trained head (finetune never fits one in one step)
        session.save_model(extra={"best_epoch": session.trainer.baseline_epoch})
    return session.finish()

