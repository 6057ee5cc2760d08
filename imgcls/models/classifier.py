"""One head API for every architecture."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Classifier(nn.Module):
    """A backbone producing a feature vector, then ``head = Dropout + Linear``.

    ``blocks`` lists the backbone's stages from input to output; fine-tuning unfreezes
    the last N of them. Frozen parts stay in eval mode even during training, so their
    BatchNorm statistics do not drift.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float,
                 blocks: Sequence[nn.Module] | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        # Stored as a plain list, not registered twice as submodules.
        self._blocks: list[nn.Module] = list(blocks) if blocks is not None else [backbone]
        self.trainable_blocks: int | None = None  # None: everything trains

    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.backbone(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def set_trainable_blocks(self, n: int | None) -> None:
        """Train the head plus the last ``n`` backbone blocks (0: head only; None: all)."""
        self.trainable_blocks = n
        for p in self.backbone.parameters():
            p.requires_grad_(n is None)
        if n:
            for block in self._blocks[-n:]:
                for p in block.parameters():
                    p.requires_grad_(True)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def freeze_backbone(self) -> None:
        self.set_trainable_blocks(0)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        n = self.trainable_blocks
        if n is not None and mode:
            self.backbone.eval()
            if n:
                for block in self._blocks[-n:]:
                    block.train(True)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
