"""One phase of training (train, resume, finetune, a warm-up): device, data, trainer, run folder, signals.

A :class:`Session` joins the process group under torchrun and picks this rank's device,
decodes the images (or, on a frozen backbone, gets their features from
:class:`~imgcls.training.frozen.FrozenFeatures`), builds the shared
:class:`~imgcls.training.loop.Trainer`, attaches a :class:`~imgcls.training.saver.RunWriter`
to the run folder, and runs the fit with SIGTERM stopping it like Ctrl-C. The entry points
in :mod:`imgcls.training.run` build its model and configuration.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imgcls.training import distributed
from imgcls.training._console import detail, info
from imgcls.training.config import TrainConfig
from imgcls.training.data import Feed, Feeder, ImageSet, Splits, label_tensor
from imgcls.training.features import FeatureStore, ViewFeatureFeeder
from imgcls.training.frozen import FrozenFeatures, closed_form_head, fit_head
from imgcls.devices import resolve_device
from imgcls.training.loop import FitResult, StartPoint, Trainer
from imgcls.training.rundir import RunDir
from imgcls.training.saver import RunWriter

if TYPE_CHECKING:
    from imgcls.models.classifier import Classifier


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

    def __init__(self, model: Classifier, cfg: TrainConfig, classes: Sequence[str], splits: Splits, root: Path,
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
