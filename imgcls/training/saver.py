"""The run writer: a session's best model and checkpoint, written at most every ``--save-interval`` seconds.

In the manner of timm's ``CheckpointSaver``: the trainer says when an epoch is better
(:meth:`RunWriter.on_best`) and when an epoch ends (:meth:`RunWriter.after_epoch`); the
writer decides what reaches the run folder and when. History is written every epoch; the
best model and the checkpoint after the session's first epoch, then once ``save_interval``
seconds have passed since the last write (0: every epoch); in between they wait in memory.
The end of the run, early stopping, Ctrl-C, SIGTERM and errors write whatever is pending
(:meth:`RunWriter.flush`). Rank 0 alone owns a writer under DDP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imgcls.training.config import TrainConfig
from imgcls.training.rundir import RunDir

if TYPE_CHECKING:
    from imgcls.models.classifier import Classifier
    from imgcls.models.io import ModelInfo
    from imgcls.training.loop import Trainer, TrainerState


def model_info(cfg: TrainConfig, classes: Sequence[str], mhash: str, extra: dict[str, Any] | None = None,
               prior_augmentation: dict[str, Any] | None = None) -> ModelInfo:
    from imgcls import __version__
    from imgcls.models.io import ModelInfo
    from imgcls.training.augment import augmentation_record

    extra = dict(extra or {})
    # what the model was trained to see (test-time augmentation picks its views from it)
    extra.setdefault("augmentation", augmentation_record(cfg.augment, cfg.flip, prior_augmentation))
    return ModelInfo(
        arch=cfg.arch, classes=list(classes), image_size=cfg.image_size, channels=cfg.channels,
        mean=list(cfg.mean), std=list(cfg.std), arch_options=dict(cfg.arch_options), dropout=cfg.dropout,
        trainable_blocks=cfg.trainable_blocks, imgcls_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), config=cfg.to_dict(), manifest_hash=mhash,
        parent=cfg.parent, head=cfg.head or "linear", head_norm=cfg.head_norm, extra=extra,
    )


class _Snapshot:
    """A model's state-dict snapshot where save_model expects the model (a best model written later)."""

    def __init__(self, state: dict[str, torch.Tensor], model: Classifier):
        self._state = state
        self.trainable_blocks = getattr(model, "trainable_blocks", None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class RunWriter:
    """Writes one session's model file and checkpoint into its run folder (``trainer``: None for a fitted head)."""

    def __init__(self, run: RunDir, model: Classifier, cfg: TrainConfig, classes: Sequence[str], mhash: str, *,
                 trainer: Trainer | None = None, run_config: TrainConfig | None = None,
                 prior_augmentation: dict[str, Any] | None = None):
        self.run = run
        self.model = model
        self.cfg = cfg
        self.classes = list(classes)
        self.mhash = mhash
        self.trainer = trainer
        self.run_config = run_config  # the whole run's configuration when this session is its frozen warm-up
        self.prior_augmentation = prior_augmentation  # the parent model's (finetune)
        self._last_write: float | None = None  # time.monotonic() of the last best-model/checkpoint write
        self._pending_model: dict[str, Any] | None = None  # extra metadata of a better epoch not yet written
        self._pending_checkpoint: Any = None  # payload of an epoch's checkpoint not yet written

    def on_best(self, model: Classifier, state: TrainerState) -> None:
        """A better epoch: its weights are the trainer's ``best_state``; the file follows at the next write."""
        self._pending_model = {"best_epoch": state.best_epoch}
        if state.history and state.history[-1].get("weights") == "ema":
            self._pending_model["weights"] = "ema"

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """History every epoch; best model and checkpoint now when due, else kept in memory until they are."""
        self.run.write_history(trainer.state.history)
        interval = self.cfg.save_interval
        now = time.monotonic()
        if self._last_write is None or interval <= 0 or now - self._last_write >= interval:
            self._pending_checkpoint = self._checkpoint_payload(copy=False) if self.cfg.checkpoint else None
            self.flush()
            self._last_write = time.monotonic()
        elif self.cfg.checkpoint:
            self._pending_checkpoint = self._checkpoint_payload(copy=True)

    def _checkpoint_payload(self, copy: bool) -> Any:
        from imgcls.training.checkpoint import checkpoint_payload

        trainer = self.trainer
        assert trainer is not None
        state = trainer.checkpoint_state()
        state.update(classes=self.classes, manifest_hash=self.mhash)
        if self.run_config is not None:
            state["run_config"] = self.run_config.to_dict()
        extra = None
        if trainer.ema is not None:
            from imgcls.training.ema import ema_state

            extra = {f"ema.{k}": v for k, v in ema_state(trainer.ema).items()}
        return checkpoint_payload(model=trainer.model, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                                  scaler=trainer.precision.scaler, generator=trainer.generator, state=state, copy=copy,
                                  extra=extra)

    def flush(self, model: bool = True) -> None:
        """Write the pending best model (unless ``model`` is False: a final one follows), then the checkpoint."""
        from imgcls.training.checkpoint import write_checkpoint

        if (self._pending_model is not None and model and self.trainer is not None
                and self.trainer.best_state is not None):
            self.save_model(extra=self._pending_model, state=self.trainer.best_state)
        self._pending_model = None
        if self._pending_checkpoint is not None:
            write_checkpoint(self.run.checkpoint_path, self._pending_checkpoint)
            self._pending_checkpoint = None

    def save_model(self, extra: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write model.safetensors from the model, or from ``state`` (a snapshot of its state dict)."""
        from imgcls.models.io import save_model

        source = self.model if state is None else _Snapshot(state, self.model)
        return save_model(self.run.model_path, source,
                          model_info(self.cfg, self.classes, self.mhash, extra, self.prior_augmentation))
