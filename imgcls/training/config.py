"""Training configuration: one dataclass, stored in the model file and the checkpoint.

Also the one home of the training vocabularies (optimizers, schedules, augmentation
presets), the fine-tuning recipe and the learning-rate rule: the torch-free command layer
builds its options, defaults and help texts from this module (no torch here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "plateau", "none")
CLASS_WEIGHTS = ("none", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Fine-tuning trained weights (finetune; train from pretrained weights without --freeze): these settings
# unless given, whatever the parent used. Chosen by the recipes study (docs/benchmarks.md).
FINETUNE_RECIPE: dict[str, Any] = {"schedule": "onecycle", "mixup": 0.2, "label_smoothing": 0.1}
FINETUNE_EPOCHS = 10  # finetune's --epochs (train's is TrainConfig.epochs)

# The learning-rate rule. From scratch: TrainConfig.lr. From trained weights (pretrained backbones, finetune):
# PRETRAINED_LR for the head (recipes study, docs/benchmarks.md: with the onecycle warm-up 1e-3 beat 3e-4 and
# 1e-4), and BACKBONE_LR_RATIO times that for a backbone that trains (discriminative rates).
PRETRAINED_LR = 1e-3
BACKBONE_LR_RATIO = 0.1

# --augment presets of the on-the-fly training augmentation (imgcls.training.augment.AugmentSpec fields),
# and of their offline twins (imgcls.augment.PRESETS, imgcls augment --preset). "flip" is a separate switch.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"shift": 0.08, "flip": True},
    "standard": {"rotation": 15.0, "shift": 0.1, "zoom": 0.1, "flip": True},
    "strong": {"rotation": 15.0, "shift": 0.1, "zoom": 0.1, "flip": True, "policy": "trivialaugment"},
}
AUGMENTS = tuple(AUGMENT_PRESETS)


def describe_augment_preset(name: str) -> str:
    """A preset's magnitudes in words, for --help: "rotation 15 deg, shift 10%, zoom 10%, flip".

    A preset that extends an earlier one reads "standard + TrivialAugmentWide".
    """
    spec = AUGMENT_PRESETS[name]
    if not spec:
        return "none"
    for earlier in reversed(AUGMENTS[:AUGMENTS.index(name)]):
        base = AUGMENT_PRESETS[earlier]
        if base and base.items() <= spec.items():
            rest = {k: v for k, v in spec.items() if k not in base}
            return f"{earlier} + {_describe(rest)}"
    return _describe(spec)


def _describe(spec: dict[str, Any]) -> str:
    parts = []
    if spec.get("rotation"):
        parts.append(f"rotation {spec['rotation']:g} deg")
    if spec.get("shift"):
        parts.append(f"shift {spec['shift'] * 100:g}%")
    if spec.get("zoom"):
        parts.append(f"zoom {spec['zoom'] * 100:g}%")
    if spec.get("flip"):
        parts.append("flip")
    if spec.get("policy") == "trivialaugment":
        parts.append("TrivialAugmentWide")
    return ", ".join(parts)


def learning_rates(lr: float | None, backbone_lr: float | None, backbone_lr_ratio: float | None, *,
                   from_pretrained: bool, backbone_trains: bool) -> tuple[float, float | None]:
    """(head rate, backbone rate) by the rule above; values given (not None) are kept.

    ``backbone_lr_ratio`` None: no separate backbone rate (it learns at the head's).
    """
    if lr is None:
        lr = PRETRAINED_LR if from_pretrained else TrainConfig.lr
    if backbone_lr is None and from_pretrained and backbone_trains and backbone_lr_ratio is not None:
        backbone_lr = lr * backbone_lr_ratio
    return lr, backbone_lr


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained (resolved: no "auto" left but device)."""

    arch: str = "cnn"
    phase: str = "train"  # "train" or "finetune"
    image_size: int = 0  # 0: from the architecture or the data
    channels: int = 0  # 0: from the architecture or the data
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    pretrained: bool = False
    weights: str | None = None  # the --weights file, when one was given
    weights_source: str | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.2
    trainable_blocks: int | None = None  # None: all; 0: head only (--freeze); N: last N blocks
    head: str | None = None  # linear (SGD), logreg, ncm (closed form, frozen only); None: logreg if frozen, else linear
    head_norm: str | None = None  # the head's input normalisation (l2 for logreg/ncm heads), kept by finetune
    weights_name: str | None = None  # --weights-name: which of the architecture's pretrained weights
    freeze_bn: bool | None = None  # backbone BatchNorm in inference mode; None: yes when starting from trained weights
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    backbone_lr: float | None = None  # fine-tuning: learning rate of the unfrozen backbone blocks
    weight_decay: float = 0.01
    momentum: float = 0.9
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) mixup of training batches (0: off)
    cutmix: float = 0.0  # Beta(alpha, alpha) CutMix of training batches (0: off)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off)
    precise_bn: int = 2048  # training images BatchNorm statistics are recomputed on before each validation (0: off)
    freeze_epochs: int = 5  # from pretrained weights without --freeze: head-only epochs before unfreezing
    class_weights: str = "none"
    patience: int = 5
    augment: str = "none"
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int | str = "auto"  # DataLoader worker processes, or "auto": from the machine (runtime setting)
    threads: int = 0  # torch intra-op threads; 0: torch's default
    compile: bool = False  # torch.compile the model's steps (runtime setting)
    cache: bool = True  # decoded-image cache on disk (runtime setting)
    cache_dir: str | None = None  # None: $IMGCLS_CACHE or the platform cache folder
    feature_cache: bool = True  # frozen backbone + no augmentation: compute features once
    feature_views: int = 0  # frozen backbone + augmentation: K augmented views computed once (0: backbone every step)
    val_fraction: float = 0.15
    checkpoint: bool = True
    save_interval: float = 60.0  # seconds between checkpoint / best-model writes (0: every epoch; runtime setting)
    parent: str | None = None  # fine-tuning: the model it started from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        data = dict(data)
        data.setdefault("head", "linear")  # configs written before --head: the SGD-trained head
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def frozen(self) -> bool:
        return self.trainable_blocks == 0
