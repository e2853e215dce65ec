"""DigitsCNN: the small real model behind edgekit's demo (scikit-learn's 8x8 handwritten digits).

Input ``(N, 1, 8, 8)`` float32 with pixel values in [0, 1]; output logits ``(N, 10)``.
The residual block gives structured pruning a real dependency to respect (both convs of the
block and the stem share the channels joined by the skip add); the fully connected head holds
most of the weights, so int8 quantization shrinks the file the way it does for real models.
Plain PyTorch only, so ``--arch models/digits_cnn.py:DigitsCNN`` needs nothing else.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn, added to the block's input, then relu."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class DigitsCNN(nn.Module):
    """1x8x8 -> conv 32 -> residual block 32 -> conv 64 -> maxpool (4x4) -> fc 256 -> fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.block = ResidualBlock(32)
        self.conv = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 4 * 4, 256),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.block(self.stem(x))))
