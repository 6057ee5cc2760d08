"""Scratch CNNs of the small-data studies: ``cnn``, ``cnn-gru`` and ``cnn-classic``."""

from __future__ import annotations

import torch
from torch import nn

from imgcls.models.classifier import Classifier
from imgcls.models.registry import register_model


def conv_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    """conv-BN-ReLU twice, 2x2 max-pool, dropout. ceil_mode keeps 1x1 maps at 1x1, so 8 px inputs work."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Dropout(dropout),
    )


def _widths(width: int, depth: int) -> list[int]:
    if width < 1 or depth < 1:
        raise ValueError("width and depth must be positive")
    return [width * 2**i for i in range(depth)]


@register_model("cnn", options=("width", "depth", "block_dropout"),
                description="scratch CNN: DEPTH blocks of (conv-BN-ReLU)x2 + pool + dropout, global average pooling")
def build_cnn(num_classes: int, in_channels: int, dropout: float, pretrained: bool = False, weights=None,
              width: int = 32, depth: int = 4, block_dropout: float = 0.1) -> Classifier:
    widths = _widths(width, depth)
    blocks = []
    c_in = in_channels
    for c_out in widths:
        blocks.append(conv_block(c_in, c_out, block_dropout))
        c_in = c_out
    backbone = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(backbone, widths[-1], num_classes, dropout, blocks=blocks)


class ConvGRU(nn.Module):
    """Conv blocks, then a bidirectional GRU reading the feature map's positions as a sequence."""

    def __init__(self, in_channels: int, widths: list[int], hidden: int, block_dropout: float):
        super().__init__()
        convs = []
        c_in = in_channels
        for c_out in widths:
            convs.append(conv_block(c_in, c_out, block_dropout))
            c_in = c_out
        self.convs = nn.Sequential(*convs)
        self.gru = nn.GRU(c_in, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.convs(x)  # N, C, H, W
        seq = fmap.flatten(2).transpose(1, 2)  # N, H*W, C: row-major scan of positions
        _, h_n = self.gru(seq)  # 2, N, hidden (forward and backward final states)
        return torch.cat([h_n[0], h_n[1]], dim=1)


@register_model("cnn-gru", options=("width", "depth", "hidden", "block_dropout"),
                description="CNN x RNN hybrid: conv blocks, then a bidirectional GRU over spatial positions")
def build_cnn_gru(num_classes: int, in_channels: int, dropout: float, pretrained: bool = False, weights=None,
                  width: int = 32, depth: int = 3, hidden: int = 128, block_dropout: float = 0.1) -> Classifier:
    backbone = ConvGRU(in_channels, _widths(width, depth), hidden, block_dropout)
    return Classifier(backbone, backbone.out_dim, num_classes, dropout, blocks=[*backbone.convs, backbone.gru])


@register_model("cnn-classic", description="the classic MNIST-study CNN: conv 32-32/64-64/128-128 with BN, "
                "pool and dropout 0.3, then dense 512-512 (about 1.15 M parameters at 28 px)")
def build_cnn_classic(num_classes: int, in_channels: int, dropout: float, pretrained: bool = False,
                      weights=None) -> Classifier:
    def pair(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out),
            nn.MaxPool2d(2), nn.Dropout(0.3),
        )

    blocks = [pair(in_channels, 32), pair(32, 64), pair(64, 128)]
    dense = nn.Sequential(
        nn.AdaptiveAvgPool2d(3), nn.Flatten(),
        nn.Linear(128 * 9, 512), nn.ReLU(inplace=True), nn.BatchNorm1d(512), nn.Dropout(0.3),
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
    )
    backbone = nn.Sequential(*blocks, dense)
    return Classifier(backbone, 512, num_classes, dropout, blocks=[*blocks, dense])
