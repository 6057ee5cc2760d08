"""Mixup and CutMix (``--mixup ALPHA``, ``--cutmix ALPHA``): torchvision's ``transforms.v2``.

Applied to each normalised training batch on the device after the geometric
augmentation; labels become soft (mixed one-hot) targets of the training loss, with
label smoothing and class weights applying to them as usual. With both on, each batch
gets one of the two at random (timm's ``--mixup-switch-prob`` 0.5). Validation, precise
BN and the learning-rate finder's loss see plain images.

The random draws come from torch's global RNG: seeded by ``--seed``, different on every
torchrun rank, and restored by ``--resume`` from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_mixer(mixup: float, cutmix: float, num_classes: int) -> Mixer | None:
    """``mix(x, y) -> (x, soft_y)``, or None when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from torchvision.transforms import v2

    parts = []
    if mixup > 0:
        parts.append(v2.MixUp(alpha=float(mixup), num_classes=num_classes))
    if cutmix > 0:
        parts.append(v2.CutMix(alpha=float(cutmix), num_classes=num_classes))
    transform = parts[0] if len(parts) == 1 else v2.RandomChoice(parts)

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] < 2:  # nothing to mix with
            return x, torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
        return transform(x, y)

    return mix
