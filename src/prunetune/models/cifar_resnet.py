"""CIFAR ResNets (He et al., 2016) with the papers' parameter-free option-A shortcuts.

Layout and names follow torchvision: ``conv1, bn1, layer{1,2,3}.{b}.conv1/bn1/conv2/bn2, fc``.
Depth 6n+2 with n blocks per stage and widths 16/32/64. At a stage transition the shortcut
subsamples by stride 2 and zero-pads the channels (option A); it has no parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunetune.exceptions import ConfigError


class ChannelPadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling, then input channel ``src[k]`` lands on output ``dst[k]``.

    Output channels that no input maps to are zero. Dense, ``src = arange(in)`` and
    ``dst = arange(in) + (out - in) // 2`` (the papers' symmetric zero-padding). Pruning input or
    output channels edits ``src``/``dst`` (see :mod:`prunetune.pruning.surgery`), so the two residual
    streams it joins stay independent groups and the pruned network computes exactly what the
    masked one does.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(f"option-A shortcut cannot shrink channels ({in_channels}->{out_channels})")
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        pad = (out_channels - in_channels) // 2
        self.register_buffer("src", torch.arange(in_channels), persistent=False)
        self.register_buffer("dst", torch.arange(in_channels) + pad, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # always the gather (no branch on a size: torch.jit.trace, which the deploy export uses, would
        # freeze the branch and warn); dense, src is arange(in) and this is a copy of the strided input
        x = x[:, :, :: self.stride, :: self.stride].index_select(1, self.src)
        out = x.new_zeros(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        return out.index_copy(1, self.dst, x)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ChannelPadShortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs (any size works: global average pooling)."""

    def __init__(
        self, depth: int = 56, *, num_classes: int = 10, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        self.layer1 = self._stage(planes, width, n, 1)
        self.layer2 = self._stage(width, 2 * width, n, 2)
        self.layer3 = self._stage(2 * width, 4 * width, n, 2)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
