"""One head API for every architecture."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

# How the head's input is normalised before its Linear layer (ModelInfo.head_norm):
# None: the features as they are (behind Dropout); "l2": each feature vector scaled to unit length.
HEAD_NORMS = (None, "l2")


class L2Normalize(nn.Module):
    """Scale each row to unit L2 length: the closed-form heads (logreg, ncm) work on directions, not magnitudes.

    Parameter-free, so a model file with it is still the Classifier's plain state dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, p=2.0, dim=1, eps=1e-12)


class Block(nn.ModuleList):
    """Several sibling modules (and parameters owned by none of them) treated as one stage.

    Only a view used in :attr:`Classifier.blocks`, never registered in the model: the
    modules and parameters are the model's own objects.
    """

    def __init__(self, modules: Sequence[nn.Module] = (), params: Sequence[nn.Parameter] = ()):
        super().__init__(modules)
        self._loose = list(params)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        yield from super().parameters(recurse)
        yield from self._loose


class Classifier(nn.Module):
    """A backbone producing a feature vector, then ``head = Dropout + Linear``.

    ``blocks`` lists the backbone's stages from input to output; fine-tuning unfreezes
    the last N of them. Frozen parts stay in eval mode even during training, so their
    BatchNorm statistics do not drift. The closed-form heads (``--head logreg|ncm``) put
    a parameter-free :class:`L2Normalize` where the Dropout was (``head_norm = "l2"``):
    ``head[1]`` is always the Linear layer, so state-dict keys never change.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float,
                 blocks: Sequence[nn.Module] | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.head_norm: str | None = None
        self.weights_source: str | None = None  # where the starting weights came from (None: random)
        # Stored as a plain list, not registered twice as submodules.
        self._blocks: list[nn.Module] = list(blocks) if blocks is not None else [backbone]
        self.trainable_blocks: int | None = None  # None: everything trains

    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    def set_head_norm(self, norm: str | None, dropout: float = 0.0) -> None:
        """``"l2"``: L2-normalise the features before the Linear layer; None: Dropout(``dropout``) as built."""
        if norm not in HEAD_NORMS:
            raise ValueError(f"unknown head normalisation {norm!r}")
        self.head[0] = L2Normalize() if norm == "l2" else nn.Dropout(dropout)
        self.head_norm = norm

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


def blocks_from_param_groups(model: nn.Module, groups: Sequence[Sequence[str]]) -> list[Block]:
    """Blocks from groups of parameter names (timm's group_matcher, a ViT's stages).

    Each block holds the top-most modules whose parameters all fall in its group (so
    ``train()`` reaches their dropout and BatchNorm layers too) plus the parameters of its
    group owned directly by a module that spans several groups (a ViT's class token).
    """
    group_of = {name: i for i, names in enumerate(groups) for name in names}
    spans: dict[str, set[int]] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        spans[mod_name] = {group_of.get(prefix + p, -1) for p, _ in module.named_parameters()}
    modules: list[list[nn.Module]] = [[] for _ in groups]
    loose: list[list[nn.Parameter]] = [[] for _ in groups]
    for mod_name, module in model.named_modules():
        ids = spans[mod_name]
        if len(ids) == 1 and -1 not in ids:
            parent = mod_name.rsplit(".", 1)[0] if "." in mod_name else ""
            if not mod_name or len(spans[parent]) > 1:  # top-most module of one group
                modules[next(iter(ids))].append(module)
        elif len(ids) > 1:  # spans groups: its own parameters go loose
            prefix = f"{mod_name}." if mod_name else ""
            for p_name, p in module.named_parameters(recurse=False):
                if prefix + p_name in group_of:
                    loose[group_of[prefix + p_name]].append(p)
    return [Block(m, lp) for m, lp in zip(modules, loose)]
