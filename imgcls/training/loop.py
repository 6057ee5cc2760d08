"""The one training loop shared by ``train`` and ``finetune``.

Per epoch: shuffle with a seeded generator, step through batches (autocast on CUDA),
evaluate on the validation set, keep the best weights by validation loss, write
history and a checkpoint, stop early when the validation loss has not improved for
``patience`` epochs. ``KeyboardInterrupt`` ends the loop cleanly: what was saved
(best model so far, last checkpoint) stays usable.

Under torchrun (see :mod:`imgcls.training.distributed`) every rank runs this same loop:
the epoch's seeded order is the same everywhere and each rank trains on its shard of it
through ``train_forward`` (the DistributedDataParallel wrapper, which all-reduces the
gradients); validation is sharded too; ``_reduce`` sums loss, correct and sample counts
across ranks before anything is decided, so the best epoch, the plateau schedule and
early stopping are the same decision on every rank; ``is_main`` (rank 0) alone reports
and runs the callbacks that write files.

Why one module of about 530 lines: the optimiser, scheduler and precision built here, the
step that drives them and :meth:`Trainer.load_checkpoint` that restores them (stretching a
cosine or one-cycle schedule to a new ``--epochs``) are one contract; a change to one is a
change to the others, and reading them side by side is how a reviewer checks that a resumed
run trains as the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imgcls.errors import ImgclsError, UsageProblem
from imgcls.training import distributed
from imgcls.training._console import detail, info
from imgcls.training.bn import recalibrate_on, training_batchnorms
from imgcls.training.config import TrainConfig
from imgcls.training.ema import build_ema
from imgcls.training.mix import build_mixer

if TYPE_CHECKING:
    from imgcls.models.classifier import Classifier
    from imgcls.training.data import Feed
    from imgcls.training.progress import EpochReporter


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability 8.0+: Ampere, Hopper...; ROCm GPUs).

    Not ``torch.cuda.is_bf16_supported()``: by default it also says yes where bf16 is only
    emulated (V100, T4), and it looks at the current device rather than ``device``; there
    fp16 with a gradient scaler is the fast choice.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


class Precision:
    """Autocast + grad scaler: bf16 on GPUs that support it, fp16 with a scaler otherwise; off on CPU/MPS."""

    def __init__(self, device: torch.device, enabled: bool):
        self.enabled = enabled and device.type == "cuda"
        self.dtype: torch.dtype | None = None
        if self.enabled:
            self.dtype = torch.bfloat16 if native_bf16(device) else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)
        self.device_type = device.type

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def label(self) -> str:
        if self.dtype is None:
            return "fp32"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")


def param_groups(model: Classifier, lr: float, weight_decay: float, backbone_lr: float | None = None) -> list[dict]:
    """Trainable parameters only; the head at ``lr``, the backbone at ``backbone_lr``; no decay on biases/norms."""
    groups = []
    parts = [("head", model.head, lr), ("backbone", model.backbone, lr if backbone_lr is None else backbone_lr)]
    for name, module, group_lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0, "name": f"{name}-no-decay"})
    return groups


def build_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr)
    if not groups:
        raise UsageProblem("nothing to train: every parameter is frozen")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    raise UsageProblem(f"unknown optimizer {cfg.optimizer!r}")


ONECYCLE_PCT_START = 0.3  # fastai's fine_tune: 30 % of the steps warm up ...
ONECYCLE_DIV = 5.0  # ... from 1/5 of the peak rate (fastai fine_tune's div) ...
ONECYCLE_FINAL_DIV = 1e4  # ... then a cosine down to 1/(5 x 10^4) of it


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """cosine: per batch from the initial rate to 0 over ``epochs``; onecycle: warm-up then cosine
    (torch's OneCycleLR, momentum cycled too); plateau: x0.2 after 2 flat epochs."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(2, cfg.epochs * steps_per_epoch),
            pct_start=ONECYCLE_PCT_START, anneal_strategy="cos", div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV, cycle_momentum=True)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, patience=2)
    return None


def stretch_onecycle(sched: torch.optim.lr_scheduler.OneCycleLR, total_steps: int) -> None:
    """--epochs changed on resume: the same warm-up fraction and cosine over the new number of steps."""
    sched.total_steps = total_steps
    phases = sched._schedule_phases
    phases[0]["end_step"] = float(ONECYCLE_PCT_START * total_steps) - 1
    phases[-1]["end_step"] = total_steps - 1
    sched.last_epoch = min(sched.last_epoch, total_steps)


def compiled_forward(module: nn.Module) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """``forward(model, x)`` through torch.compile; a failed compilation becomes one clear error.

    Compilation happens at the first call (and again once for eval mode), so errors surface
    there, not here. The bare module is kept for state dicts, snapshots and checkpoints.
    """
    import logging

    # torch's C++-extension helper warns about a missing CUDA runtime on every CPU compile: noise here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compiled = torch.compile(module)

    def forward(_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        try:
            return compiled(x)
        except (KeyboardInterrupt, ImgclsError):
            raise
        except Exception as exc:  # noqa: BLE001 - dynamo/inductor raise many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImgclsError(f"--compile: torch.compile failed ({type(exc).__name__}: {first}); "
                              f"run without --compile") from exc

    return forward


def _num_classes(model: Classifier) -> int:
    """Outputs of the model's head (its last layer with ``out_features``)."""
    for module in reversed(list(model.head.modules())):
        out_features = getattr(module, "out_features", None)
        if out_features is not None:
            return int(out_features)
    raise UsageProblem("--mixup/--cutmix: cannot tell the number of classes from this model's head")


def count_batches(n: int, batch_size: int, drop_single: bool = True) -> int:
    """Batches of ``n`` images, a last batch of one dropped when there are others (as the feeders do)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and not (drop_single and rest == 1 and full) else 0)


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int | None = None
    best_val_loss: float = math.inf
    stopped_early: bool = False
    interrupted: bool = False
    epochs_run: int = 0  # epochs of this phase completed (including before a resume)


@dataclass
class TrainerState:
    """What a checkpoint must restore besides tensors."""

    epoch: int = 0  # epochs of this phase completed
    best_val_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class StartPoint:
    """Where a phase starts in its run (train from scratch: the defaults).

    ``epoch_offset`` epochs came before it (its epochs are numbered after them; ``history``
    holds their records). With ``baseline`` the starting weights are scored first and count as
    the best so far, credited to ``baseline_epoch`` (default: ``epoch_offset``): fine-tuning,
    and the unfrozen phase after a frozen warm-up, never end worse than they began.
    """

    epoch_offset: int = 0
    history: Sequence[dict[str, Any]] = ()
    baseline: bool = False
    baseline_epoch: int | None = None


class Trainer:
    """Fits ``model`` on feeders; ``forward(model, x)`` maps a batch to logits.

    ``on_best(model, result)`` is called when the validation loss improves (the run folder
    saves the model then), ``on_epoch(trainer, record)`` after every epoch (checkpoint,
    history, user callbacks; raising KeyboardInterrupt there stops like Ctrl-C).
    ``train_forward`` maps a training batch to logits when it must go through another
    module than ``forward`` does (the DDP wrapper); ``model`` itself stays unwrapped, so
    its state dict, snapshots and checkpoints are those of a single process.
    """

    def __init__(self, model: Classifier, cfg: TrainConfig, train_feed: Feed, val_feed: Feed, device: torch.device, *,
                 start_point: StartPoint = StartPoint(),
                 forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 train_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 class_weights: torch.Tensor | None = None, reporter: EpochReporter | None = None,
                 on_best: Callable[..., None] | None = None, on_epoch: Sequence[Callable[..., None]] = ()):
        self.model = model
        self.cfg = cfg
        self.train_feed = train_feed
        self.val_feed = val_feed
        self.device = device
        self.forward = forward or (lambda m, x: m(x))
        if cfg.compile and forward is None:
            self.forward = compiled_forward(model)
        self.train_forward = train_forward or self.forward
        self.dist = distributed.info()
        self.precision = Precision(device, cfg.amp)
        self.optimizer = build_optimizer(model, cfg)
        if self.dist.enabled:
            self.steps_per_epoch = count_batches(distributed.shard_length(len(train_feed)), train_feed.batch_size)
        else:
            self.steps_per_epoch = train_feed.num_batches(drop_single=True)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        # early stopping waits for the peak of a warm-up: the rising rate may raise the loss first
        self.patience_from = math.ceil(ONECYCLE_PCT_START * cfg.epochs) if cfg.schedule == "onecycle" else 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        weight = class_weights.to(device) if class_weights is not None else None
        self.train_loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        # the mixer and the EMA, the precise-BN pass and validation of the EMA use an eager
        # forward that honours its module argument (a compiled forward runs the model it compiled)
        self.module_forward = forward or (lambda m, x: m(x))
        self.mixer = build_mixer(cfg.mixup, cfg.cutmix, _num_classes(model)) if (cfg.mixup or cfg.cutmix) else None
        self.ema = build_ema(model, cfg.ema) if cfg.ema > 0 else None
        self.bn_layers: list[str] | None = None  # BatchNorm layers that train (found at the first epoch)
        self.val_loss_fn = nn.CrossEntropyLoss(reduction="sum")  # plain NLL: comparable across runs
        self.epoch_offset = start_point.epoch_offset
        self.state = TrainerState(history=list(start_point.history))
        self.reporter = reporter
        self.on_best = on_best
        self.on_epoch = list(on_epoch)
        self.baseline = start_point.baseline
        self.baseline_epoch = self.epoch_offset if start_point.baseline_epoch is None else start_point.baseline_epoch
        self.best_state: dict[str, torch.Tensor] | None = None
        self.is_main = self.dist.is_main
        self.seen: list[list[int]] = []  # per epoch, the indices this rank trained on (IMGCLS_DEBUG_SHARDS only)

    # -- distributed hooks ------------------------------------------------------------
    def _reduce(self, values: list[float]) -> list[float]:
        """Sum metrics over ranks (identity in a single process)."""
        return distributed.all_reduce_sum(values, self.device)

    def _seed_epoch(self, epoch_no: int) -> None:
        """Under DDP: dropout and augmentation draw differently on every rank, reproducibly.

        Every rank starts from the same seed (identical initial weights); left alone, rank
        1's image k would get the same random flip as rank 0's image k. A seed from (seed,
        epoch, rank) also makes a resumed DDP run draw as the uninterrupted one did. A single
        process keeps its one continuous stream (restored by --resume from the checkpoint).
        """
        if self.dist.enabled:
            torch.manual_seed(((self.cfg.seed * 1_000_003 + epoch_no) * 65_537 + self.dist.rank) % 2**63)

    def _memory_mib(self) -> float | None:
        """Peak CUDA memory of this epoch (the largest over the ranks), in MiB; None off CUDA."""
        if self.device.type != "cuda":
            return None
        peak = float(torch.cuda.max_memory_allocated(self.device))
        return round(distributed.all_reduce_max([peak], self.device)[0] / 2**20, 1)

    # -- one pass ---------------------------------------------------------------------
    def set_train_mode(self) -> None:
        """train() for what trains; with ``freeze_bn`` the backbone's BatchNorm layers keep their statistics.

        Fine-tuning pretrained weights on small batches of other images would otherwise replace
        ImageNet's running statistics with noisy batch statistics and wreck the features the head
        was trained on (Keras gives the same advice: keep BatchNormalization in inference mode).
        """
        self.model.train()
        if self.cfg.freeze_bn:
            for module in self.model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch (mixup/CutMix, loss, backward, step, EMA update).

        Returns (loss, logits, hard labels) for the statistics. The scheduler is the caller's.
        """
        model, opt, precision = self.model, self.optimizer, self.precision
        target = y
        if self.mixer is not None:
            x, target = self.mixer(x, y)
            y = target.argmax(1)  # the dominant label, for the training accuracy
        with precision.autocast():
            logits = self.train_forward(model, x)
        loss = self.train_loss_fn(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(opt)
        precision.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(model)
        return loss, logits, y

    def step_scheduler(self) -> None:
        sched = self.scheduler
        if sched is None or isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.last_epoch >= sched.total_steps - 1:
            return  # its last step is the last batch's rate; past it OneCycleLR extrapolates, then refuses
        sched.step()

    def train_epoch(self, advance: Callable[[float], None]) -> tuple[float, float]:
        model = self.model
        self.set_train_mode()
        if self.bn_layers is None:
            self.bn_layers = training_batchnorms(model)
        distributed.debug_fail_point()
        # The same permutation on every rank (one seeded generator), then this rank's shard of it.
        order = distributed.shard(torch.randperm(len(self.train_feed), generator=self.generator))
        if distributed.debug_shards_enabled():
            self.seen.append(order.tolist())
        self._seed_epoch(self.epoch_offset + self.state.epoch + 1)
        total_loss = correct = count = 0.0
        for x, y in self.train_feed.batches(order, train=True):
            loss, logits, y = self.train_step(x, y)
            self.step_scheduler()
            n = y.shape[0]
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ImgclsError(f"training diverged (loss {value}) at epoch {self.epoch_offset + self.state.epoch + 1}: "
                                  f"lower --lr (now {self.cfg.lr:g})")
            total_loss += value * n
            correct += float((logits.argmax(1) == y).sum())
            count += n
            advance(value)
        distributed.sync_buffers(model)
        self.calibrate_bn()
        total_loss, correct, count = self._reduce([total_loss, correct, count])
        return total_loss / max(count, 1), correct / max(count, 1)

    def calibrate_bn(self) -> None:
        """Precise BN (see :mod:`imgcls.training.bn`) for the live weights and the EMA, before validation."""
        if not self.bn_layers or self.cfg.precise_bn <= 0:
            return
        seed = self.cfg.seed * 1_000_003 + self.epoch_offset + self.state.epoch + 1
        modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for module in modules:
            recalibrate_on(module, self.bn_layers, self.train_feed, self.cfg.precise_bn, seed, self.module_forward,
                           self.precision.autocast)

    @torch.no_grad()
    def evaluate(self, feed: Feed, module: nn.Module | None = None) -> tuple[float, float]:
        """Validation loss and accuracy of the model (or of ``module``, the EMA), in eval mode."""
        model = self.model if module is None else module
        forward = self.forward if module is None else self.module_forward
        was_training = model.training
        model.eval()
        total_loss = correct = count = 0.0
        # Each rank scores its share of the validation images; the sums are reduced below.
        order = distributed.shard(torch.arange(len(feed)), pad=False) if self.dist.enabled else None
        try:
            for x, y in feed.batches(order):
                if y.shape[0] == 0:
                    continue
                with self.precision.autocast():
                    logits = forward(model, x)
                total_loss += float(self.val_loss_fn(logits.float(), y))
                correct += float((logits.argmax(1) == y).sum())
                count += y.shape[0]
        finally:
            model.train(was_training)
        total_loss, correct, count = self._reduce([total_loss, correct, count])
        return total_loss / max(count, 1), correct / max(count, 1)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def snapshot(self, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        module = self.model if module is None else module
        return {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg, st = self.cfg, self.state
        result = FitResult(history=st.history)
        try:
            if self.baseline and st.epoch == 0 and self.best_state is None:
                val_loss, val_acc = self.evaluate(self.val_feed)
                st.best_val_loss, st.best_epoch = val_loss, self.baseline_epoch
                self.best_state = self.snapshot()
                info(f"starting point: val loss {val_loss:.4f} acc {val_acc:.3f}")
            while st.epoch < cfg.epochs:
                if cfg.patience and st.bad_epochs >= cfg.patience:
                    result.stopped_early = True
                    break
                epoch_no = self.epoch_offset + st.epoch + 1
                t0 = time.perf_counter()
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                ctx = self.reporter.epoch(epoch_no, self.steps_per_epoch) if self.reporter else contextlib.nullcontext(lambda v: None)
                with ctx as advance:
                    train_loss, train_acc = self.train_epoch(advance)
                val_loss, val_acc = self.evaluate(self.val_feed)
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val_loss)
                score, weights = val_loss, "live"
                if self.ema is not None:
                    ema_loss, ema_acc = self.evaluate(self.val_feed, self.ema.module)
                    if ema_loss < val_loss:
                        score, weights = ema_loss, "ema"
                improved = score < st.best_val_loss
                st.epoch += 1
                if improved:
                    st.best_val_loss, st.best_epoch, st.bad_epochs = score, epoch_no, 0
                    self.best_state = self.snapshot(self.ema.module if weights == "ema" and self.ema is not None else None)
                elif st.epoch > self.patience_from:
                    st.bad_epochs += 1
                record = {
                    "epoch": epoch_no, "phase": cfg.phase,
                    "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                    "val_loss": round(val_loss, 6) if math.isfinite(val_loss) else None,
                    "val_acc": round(val_acc, 6), "lr": self.current_lr(),
                    "seconds": round(time.perf_counter() - t0, 3), "best": improved,
                }
                if self.ema is not None:
                    record.update(ema_val_loss=round(ema_loss, 6) if math.isfinite(ema_loss) else None,
                                  ema_val_acc=round(ema_acc, 6), weights=weights)
                memory = self._memory_mib()
                if memory is not None:
                    record["max_memory_mib"] = memory
                st.history.append(record)
                if self.reporter and self.is_main:
                    self.reporter.end_epoch(record)
                if improved and self.on_best is not None and self.is_main:
                    self.on_best(self.model, st)
                for hook in self.on_epoch:
                    hook(self, record)
                if cfg.patience and st.bad_epochs >= cfg.patience and st.epoch < cfg.epochs:
                    result.stopped_early = True
                    break
            if result.stopped_early and self.is_main:
                info(f"early stopping: validation loss has not improved for {cfg.patience} epochs "
                     f"(best: epoch {st.best_epoch}, val loss {st.best_val_loss:.4f})")
        except KeyboardInterrupt:
            result.interrupted = True
        result.best_epoch = st.best_epoch
        result.best_val_loss = st.best_val_loss
        result.epochs_run = st.epoch
        return result

    def restore_best(self) -> bool:
        """Load the best weights seen (by validation loss) into the model."""
        if self.best_state is None:
            return False
        self.model.load_state_dict(self.best_state)
        detail(f"restored the best weights (epoch {self.state.best_epoch})")
        return True

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        st = self.state
        return {"epoch": st.epoch, "best_val_loss": st.best_val_loss if math.isfinite(st.best_val_loss) else None,
                "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs, "history": st.history,
                "epoch_offset": self.epoch_offset, "config": self.cfg.to_dict()}

    def load_checkpoint(self, ckpt: Any, best_state: dict[str, torch.Tensor] | None) -> None:
        from imgcls.training.checkpoint import restore_rng

        self.model.load_state_dict(ckpt.model_state())
        self.optimizer.load_state_dict(ckpt.optimizer_state())
        meta = ckpt.meta
        if self.ema is not None:
            from imgcls.training.ema import load_ema_state

            state = {k[len("ema."):]: v for k, v in ckpt.tensors.items() if k.startswith("ema.")}
            if state:
                try:
                    load_ema_state(self.ema, state)
                except (RuntimeError, KeyError, ValueError) as exc:
                    from imgcls.errors import ModelError

                    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                    raise ModelError(f"{ckpt.path}: checkpoint tensors \"ema.*\" do not fit the model ({first})") from None
            else:  # a checkpoint written without --ema: the average starts from the current weights
                self.ema.module.load_state_dict(self.model.state_dict())
        if self.scheduler is not None and meta.get("scheduler"):
            self.scheduler.load_state_dict(meta["scheduler"])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
                stretch_onecycle(self.scheduler, max(2, self.cfg.epochs * self.steps_per_epoch))
            if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                # --epochs may have grown on resume: stretch the cosine to the new end, and put
                # the rates back on the (closed-form) curve: the scheduler's recursive update
                # would otherwise keep multiplying a rate that already reached 0.
                sched = self.scheduler
                sched.T_max = max(1, self.cfg.epochs * self.steps_per_epoch)
                step = min(sched.last_epoch, sched.T_max)
                for group, base in zip(self.optimizer.param_groups, sched.base_lrs):
                    group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * step / sched.T_max)) / 2
                sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if meta.get("scaler") and self.precision.scaler.is_enabled():
            self.precision.scaler.load_state_dict(meta["scaler"])
        restore_rng(ckpt, self.generator)
        st = self.state
        st.epoch = int(meta["epoch"])
        st.best_val_loss = math.inf if meta.get("best_val_loss") is None else float(meta["best_val_loss"])
        st.best_epoch = meta.get("best_epoch")
        st.bad_epochs = int(meta.get("bad_epochs", 0))
        st.history = list(meta.get("history", []))
        self.best_state = best_state
