"""Exponential moving average of the weights (``--ema DECAY``), through torch's ``swa_utils``.

The average is a :class:`torch.optim.swa_utils.AveragedModel` updated after every
optimizer step; buffers (BatchNorm running statistics) are averaged too
(``use_buffers=True``), and precise BN (:mod:`imgcls.training.bn`) recomputes the
averaged model's statistics before it is validated.

One change from ``get_ema_multi_avg_fn(decay)``: the decay warms up as in TensorFlow's
``ExponentialMovingAverage(num_updates=...)``, ``min(decay, (1 + n) / (10 + n))`` after
``n`` updates. Small data means few steps (100 images in batches of 32 are 3 steps an
epoch), and a fixed decay of 0.999 would keep the average at the random initial weights
for the whole run.

The trainer validates the live and the averaged weights every epoch and keeps whichever
has the lower validation loss as the best model (the history says which: ``"weights":
"ema"`` or ``"live"``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

WARMUP_OFFSET = 10  # (1 + n) / (10 + n): 0.1 after the first update, 0.9 after 80, 0.99 after 890


def warmed_decay(decay: float, updates: int) -> float:
    """The decay used for update number ``updates`` (0-based count of earlier updates)."""
    return min(decay, (1.0 + updates) / (WARMUP_OFFSET + updates))


def ema_multi_avg_fn(decay: float):
    """A ``multi_avg_fn`` for AveragedModel: EMA with a warmed-up decay; non-float buffers are copied."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            d = warmed_decay(decay, int(num_averaged))
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # num_batches_tracked: the live model's count
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model`` on its device, in eval mode; the first update copies the weights."""
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)  # a deep copy
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_state(ema: AveragedModel) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the EMA: the averaged weights and the number of updates."""
    return {k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}


def load_ema_state(ema: AveragedModel, state: dict[str, torch.Tensor]) -> None:
    ema.load_state_dict(state)
