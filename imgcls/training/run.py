"""Train, resume and fine-tune runs: from a manifest to a run folder.

The three entry points resolve their configuration and model differently, then hand
over to one :class:`~imgcls.training.session.Session` per phase, which decodes the data
(or gets a frozen backbone's features from :mod:`imgcls.training.frozen`), runs the
shared :class:`~imgcls.training.loop.Trainer` and writes the run folder through a
:class:`~imgcls.training.saver.RunWriter`.

Launched by torchrun, each entry point first joins the process group
(:mod:`imgcls.training.distributed`); every rank then builds the same model and data,
trains on its shard through DistributedDataParallel, and only rank 0 creates and writes
the run folder (the other ranks learn its path from rank 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import DataError, UsageProblem
from imgcls.manifest import Header, Record, manifest_hash
from imgcls.training import distributed
from imgcls.training._console import detail, info, warn
from imgcls.training.config import BACKBONE_LR_RATIO, FINETUNE_RECIPE, TrainConfig, learning_rates
from imgcls.training.data import Splits, infer_geometry, split_records
from imgcls.training.frozen import closed_form_augment_message, closed_form_head
from imgcls.devices import resolve_device
from imgcls.training.loop import StartPoint
from imgcls.training.rundir import RunDir, resolve_run
from imgcls.training.session import RunResult, Session, class_weights_for, join_process_group

__all__ = ["RunResult", "Session", "build_training", "class_weights_for", "find_lr", "finetune", "resolve_geometry",
           "resolve_normalisation", "resume", "train"]

SCRATCH_SIZE_RANGE = (8, 64)
MIN_SIZE_PRETRAINABLE = 32


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


# -- the shared session ---------------------------------------------------------------------

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

