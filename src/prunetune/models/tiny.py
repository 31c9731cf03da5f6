"""Tiny models for tests: each builds and runs on CPU in milliseconds, through the same factory."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TinyConvNet(nn.Module):
    """Three conv-BN-ReLU layers (one pooling), global pooling, a hidden linear and a head."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.relu(self.fc1(x)))


class DepthwiseBlock(nn.Module):
    """MobileNet-style depthwise 3×3 then pointwise 1×1, each with BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn_dw = nn.BatchNorm2d(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn_dw(self.dw(x)))
        return F.relu(self.bn_pw(self.pw(x)))


class TinyMobileNet(nn.Module):
    """A stem conv and two depthwise-separable blocks: exercises depthwise coupling."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block1 = DepthwiseBlock(width, 2 * width, stride=2)
        self.block2 = DepthwiseBlock(2 * width, 2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.block2(self.block1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
