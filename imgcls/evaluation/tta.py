"""Test-time augmentation: views of an image the model was trained to see.

``eval --tta`` and ``predict --tta`` average the softmax of a few views of each image.
A view the model never saw in training can only mislead it: a digits model trained
without flips reads a mirrored "3" as an "8" (issue 15). So the views follow what the
model file says about its training (``extra["augmentation"]``, written by train and
finetune):

* the image itself;
* four small shifts (right, left, down, up) by ``d`` pixels, edge pixels filling in as
  in training. ``d`` is half the largest shift the model was trained with, or, when it
  was trained without shifts, 1/32 of the side (1 px at 28-32 px, 3 px at 96 px): a
  convolutional network is nearly shift-invariant, so such shifts are safe views;
* the mirror image, only when the model was trained with horizontal flips.

Model files written before the record existed: their training configuration
(``--augment``/``--flip``) says the same; a file with neither (not written by imgcls'
trainer) gets the safe default, shifts without the mirror, and the reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNTRAINED_SHIFT = 1 / 32  # fraction of the side: the shift of models trained without shifts


@dataclass(frozen=True)
class View:
    """One test-time view: shifted by (dx, dy) pixels (right/down positive), then mirrored or not."""

    name: str
    dx: int = 0
    dy: int = 0
    mirror: bool = False


@dataclass(frozen=True)
class TTAPolicy:
    views: tuple[View, ...]
    reason: str  # one sentence for stderr and the report: why these views

    def describe(self) -> str:
        return f"{len(self.views)} views ({', '.join(v.name for v in self.views)}): {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"views": [v.name for v in self.views], "reason": self.reason}


def trained_augmentation(info: Any) -> tuple[dict[str, Any] | None, str]:
    """(what the model saw in training, where that came from); None when nothing says."""
    record = (info.extra or {}).get("augmentation")
    if isinstance(record, dict):
        return record, "its training augmentation"
    config = info.config or {}
    if "augment" in config:
        from imgcls.training.augment import augmentation_record

        try:
            return augmentation_record(str(config["augment"]), bool(config.get("flip", True))), \
                f"its training config (--augment {config['augment']})"
        except ValueError:
            pass
    return None, "no record of its training augmentation"


def policy_for(info: Any) -> TTAPolicy:
    """The views for a model (see the module docstring)."""
    record, source = trained_augmentation(info)
    size = int(info.image_size)
    trained_shift = float(record.get("shift") or 0.0) if record else 0.0
    fraction = trained_shift / 2 if trained_shift > 0 else UNTRAINED_SHIFT
    d = max(1, round(size * fraction))
    views = [View("identity"), View(f"right {d}px", dx=d), View(f"left {d}px", dx=-d),
             View(f"down {d}px", dy=d), View(f"up {d}px", dy=-d)]
    mirror = bool(record and record.get("flip"))
    if mirror:
        views.insert(1, View("mirror", mirror=True))
        reason = f"trained with flips ({source})"
    elif record is not None:
        reason = f"no mirror: trained without flips ({source})"
    else:
        reason = "no mirror: the model file has no record of its training augmentation (safe default)"
    shift_why = f"shifts half the trained {trained_shift:.0%}" if trained_shift > 0 else "shifts of 1/32 of the side"
    return TTAPolicy(tuple(views), f"{reason}; {shift_why}")


def apply_view(x: Any, view: View) -> Any:
    """A normalised NCHW batch seen through ``view`` (shifted with edge pixels filling in, mirrored)."""
    import torch
    import torch.nn.functional as F

    if view.dx or view.dy:
        d = max(abs(view.dx), abs(view.dy))
        h, w = x.shape[-2:]
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        # content moves right by dx: the output's column j shows input column j - dx
        top, left = d - view.dy, d - view.dx
        x = padded[..., top:top + h, left:left + w]
    if view.mirror:
        x = torch.flip(x, dims=[3])
    return x
