"""Training configuration: one dataclass, stored in the model file and the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "plateau", "none")
CLASS_WEIGHTS = ("none", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Fine-tuning trained weights (finetune; train from pretrained weights without --freeze): these settings
# unless given, whatever the parent used. Chosen by the recipes study (docs/benchmarks.md).
FINETUNE_RECIPE = {"schedule": "onecycle", "mixup": 0.2, "label_smoothing": 0.1}


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
    weight_decay: float = 0.05
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
