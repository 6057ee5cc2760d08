"""The learning-rate range test (``train --find-lr``), as fastai's ``Learner.lr_find``.

A short sweep: ``steps`` optimizer steps (default 100) on training batches, the rate
growing exponentially from ``start_lr`` (1e-7) to ``end_lr`` (10), every parameter
group keeping its ratio to the head's rate (so a pretrained backbone sweeps at
``--backbone-lr-ratio`` times the head's). The loss is smoothed (exponential average,
beta 0.98, debiased) and the sweep stops early once it exceeds 4x its minimum
(divergence). Nothing is kept: the weights are a throw-away copy of the run's start, no
run folder is created and nothing of the user's data is written.

Suggestions (fastai's ``SuggestionMethod``): ``valley`` (the default: 2/3 down the
longest descending stretch of the curve, fastai's default since 2.5), ``minimum`` (the
rate at the smoothed minimum, divided by 10) and ``steep`` (the steepest descent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imgcls.errors import ImgclsError

if TYPE_CHECKING:
    from imgcls.training.loop import Trainer

START_LR = 1e-7
END_LR = 10.0
STEPS = 100
BETA = 0.98
DIVERGED = 4.0


@dataclass
class LRFind:
    lrs: list[float] = field(default_factory=list)  # the head's rate at each step
    losses: list[float] = field(default_factory=list)  # smoothed training loss
    raw: list[float] = field(default_factory=list)
    diverged: bool = False

    def suggestions(self) -> dict[str, float | None]:
        return {"valley": valley(self.lrs, self.losses), "minimum": minimum(self.lrs, self.losses),
                "steep": steep(self.lrs, self.losses)}

    def to_json(self, plot: str | None = None) -> dict[str, Any]:
        sugg = self.suggestions()
        return {"suggested_lr": sugg["valley"], "method": "valley", "suggestions": sugg,
                "steps": len(self.lrs), "start_lr": START_LR, "end_lr": END_LR, "diverged": self.diverged,
                "lrs": self.lrs, "losses": self.losses, "plot": plot}


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's ``valley``: the longest stretch where the loss keeps falling; 2/3 of the way down it."""
    n = len(losses)
    if n < 2:
        return lrs[0] if lrs else None
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def minimum(lrs: list[float], losses: list[float]) -> float | None:
    if not losses:
        return None
    return float(lrs[min(range(len(losses)), key=losses.__getitem__)] / 10)


def steep(lrs: list[float], losses: list[float]) -> float | None:
    """The rate where the loss falls fastest per decade of rate."""
    if len(losses) < 3:
        return None
    logs = [math.log10(lr) for lr in lrs]
    grads = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, len(losses) - 1)]
    return float(lrs[1 + min(range(len(grads)), key=grads.__getitem__)])


def sweep(trainer: Trainer, steps: int = STEPS, start_lr: float = START_LR, end_lr: float = END_LR,
          advance: Any = None) -> LRFind:
    """Run the range test with ``trainer``'s model, optimizer and training feed (all of which it changes)."""
    opt, feed = trainer.optimizer, trainer.train_feed
    head_lr = trainer.cfg.lr
    ratios = [g["lr"] / head_lr if head_lr else 1.0 for g in opt.param_groups]
    trainer.set_train_mode()
    generator = torch.Generator().manual_seed(trainer.cfg.seed)
    result = LRFind()
    avg, best = 0.0, math.inf

    def batches():
        while True:  # as many epochs as the steps need
            yielded = False
            for batch in feed.batches(torch.randperm(len(feed), generator=generator), train=True):
                yielded = True
                yield batch
            if not yielded:
                return

    for i, (x, y) in zip(range(steps), batches()):
        lr = start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))
        for group, ratio in zip(opt.param_groups, ratios):
            group["lr"] = lr * ratio
        loss, _, _ = trainer.train_step(x, y)
        value = float(loss.detach())
        if advance is not None:
            advance(value)
        if not math.isfinite(value):
            result.diverged = True
            break
        avg = BETA * avg + (1 - BETA) * value
        smoothed = avg / (1 - BETA ** (i + 1))
        result.lrs.append(lr)
        result.losses.append(smoothed)
        result.raw.append(value)
        best = min(best, smoothed)
        if smoothed > DIVERGED * best and i > 0:
            result.diverged = True
            break
    if not result.lrs:
        raise ImgclsError("--find-lr: no training batch to sweep over")
    return result


def write_plot(result: LRFind, path: str | Path) -> Path:
    """The loss against the rate (log scale), the suggestions marked; needs matplotlib (the plots extra)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from imgcls.evaluation.plots import PLOTS_HINT

        raise ImgclsError(f"--find-lr-plot needs matplotlib: install it with {PLOTS_HINT}") from None
    from imgcls.fsutil import atomic_path

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, label="training loss (smoothed)")
    marks = {"valley": "o", "minimum": "v", "steep": "s"}
    for name, lr in result.suggestions().items():
        if lr is None:
            continue
        i = min(range(len(result.lrs)), key=lambda k: abs(math.log(result.lrs[k]) - math.log(lr)))
        ax.plot([lr], [result.losses[i]], marks[name], label=f"{name}: {lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("loss")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png")
    return path
