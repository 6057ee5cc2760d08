"""Precise BatchNorm: running statistics recomputed for the weights as they are now.

BatchNorm's running mean and variance are an exponential average (momentum 0.1) of batch
statistics taken while the weights moved. On a short run over little data (a few dozen
steps) that average still remembers the initial statistics and early weights, so the
model in eval mode normalises with statistics that no longer fit: training accuracy 0.98,
eval-mode accuracy on the very same images 0.49 (issue 15). "Precise BN" (fvcore's
``update_bn_stats``, used by Detectron2 and pycls; torch's ``swa_utils.update_bn`` does
the same for averaged weights) recomputes them before they are used: reset, then a plain
cumulative average (``momentum=None``) over batches of training images.

Decisions:

* The images are the *plain* training images (no augmentation, no mixup): the statistics
  are for the images the model will be evaluated and used on. Everything else in the
  model is in eval mode meanwhile (dropout off), so the statistics are those of the
  eval-mode network's own activations.
* Only BatchNorm layers that train are recalibrated: a frozen block, or pretrained
  BatchNorm kept in inference mode (``--freeze-bn``), keeps its statistics untouched.
* At most ``limit`` images (a seeded shuffle, the same on every rank), in training-sized
  batches, so the statistics are those of batches like the training ones (the variance is
  the mean within-batch variance, as fvcore computes it); batches of one image are skipped.
* Under torchrun each rank recomputes on its share of those images, then the
  per-rank averages are averaged (every rank has the same number of batches, so this
  is the average over all of them) and rank 0's result is broadcast: the statistics are
  bit-identical on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imgcls.training import distributed

if TYPE_CHECKING:
    from imgcls.training.data import Feed


def training_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of ``model`` in training mode that track running statistics.

    Call it with the model in the mode training puts it in (frozen blocks and
    ``--freeze-bn`` layers are in eval mode then, so they are not listed).
    """
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
            and module.track_running_stats]


def sample_order(n: int, limit: int, seed: int) -> torch.Tensor:
    """The images to recalibrate on, in batches as mixed as training's: a seeded shuffle, at most ``limit``.

    Never file order: manifests list images class by class, and batches of one class have
    a far smaller variance than the shuffled batches the weights were trained on.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


@torch.no_grad()
def recalibrate(model: nn.Module, names: Sequence[str], batches: Iterable[torch.Tensor],
                forward: Callable[[nn.Module, torch.Tensor], Any], autocast: Callable[[], Any] | None = None) -> int:
    """Recompute the running statistics of the BatchNorm layers ``names`` over ``batches``.

    Returns the number of batches used (0: nothing changed). The rest of the model runs in
    eval mode; every module's mode, momentum and ``num_batches_tracked`` are restored.
    """
    modules = dict(model.named_modules())
    layers = [modules[n] for n in names if n in modules]
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    saved = [(bn.momentum, bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None,
              bn.running_mean.clone(), bn.running_var.clone()) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    model.eval()
    for bn in layers:
        bn.train()
    used = 0
    try:
        for x in batches:
            if x.shape[0] < 2:
                continue
            if autocast is not None:
                with autocast():
                    forward(model, x)
            else:
                forward(model, x)
            used += 1
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for bn, (momentum, tracked, mean, var) in zip(layers, saved):
            bn.momentum = momentum
            if tracked is not None:
                bn.num_batches_tracked.copy_(tracked)
            if not used:  # nothing seen: keep the statistics it had
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
    used = _average_over_ranks(layers, used)
    return used


def _average_over_ranks(layers: list[nn.Module], used: int) -> int:
    """Under torchrun: the mean of every rank's statistics, then rank 0's copy everywhere."""
    if not distributed.info().enabled:
        return used
    import torch.distributed as dist

    world = distributed.info().world_size
    for bn in layers:
        for buf in (bn.running_mean, bn.running_var):
            if not isinstance(buf, torch.Tensor):  # track_running_stats=False: nothing to average
                continue
            dist.all_reduce(buf.data)
            buf.data.div_(world)
            dist.broadcast(buf.data, src=0)
    return used


def recalibrate_on(model: nn.Module, names: Sequence[str], feed: Feed, limit: int, seed: int,
                   forward: Callable[[nn.Module, torch.Tensor], Any],
                   autocast: Callable[[], Any] | None = None) -> int:
    """:func:`recalibrate` over at most ``limit`` plain images of an image feeder (see the module docstring)."""
    if not names or limit <= 0 or not hasattr(feed, "data"):  # feature feeders carry no images
        return 0
    order = distributed.shard(sample_order(len(feed), limit, seed))
    return recalibrate(model, names, (x for x, _ in feed.batches(order)), forward, autocast)
