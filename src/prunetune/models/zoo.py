"""A zoo of small architectures that covers the layer patterns real CNNs use (no downloads).

Each model is registered as ``zoo_<name>`` (input 16×16) and takes ``num_classes``, ``in_channels``
and ``width``. Together they exercise every way a pruned group reaches its consumers: a flattened
feature map into a Linear (:class:`ZooVGG`), DenseNet concatenation with BN over the concatenation
(:class:`ZooDenseNet`), grouped and depthwise convs (:class:`ZooGrouped`), squeeze-excite
(:class:`ZooSqueezeExcite`), inverted residuals (:class:`ZooInvertedResidual`), option-A and
1×1-conv shortcuts (:class:`ZooShortcuts`), parallel branches concatenated
(:class:`ZooInception`), functional ops between convs (:class:`ZooFunctional`) and a transposed
conv, which the analytic MACs counter does not model (:class:`ZooTransposed`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunetune.models.cifar_resnet import ChannelPadShortcut


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) → BN → ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ZooVGG(nn.Module):
    """Plain VGG whose head flattens a C×4×4 map into a Linear (each channel feeds 16 inputs)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn(in_channels, w), nn.MaxPool2d(2), conv_bn(w, 2 * w),
                                      conv_bn(2 * w, 2 * w), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 4 * w), nn.ReLU(inplace=True),
                                        nn.Dropout(0.1), nn.Linear(4 * w, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 4)  # 4×4 whatever the input size
        return self.classifier(x)


class DenseLayer(nn.Module):
    """Pre-activation BN → ReLU → 1×1 conv → BN → ReLU → 3×3 conv; the output joins the concatenation."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)


class ZooDenseNet(nn.Module):
    """Two dense blocks (BN over the concatenation of every earlier layer) and a transition."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        g = max(2, width // 2)
        self.conv0 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        c = width
        self.block1 = nn.Sequential(DenseLayer(c, g), DenseLayer(c + g, g), DenseLayer(c + 2 * g, g))
        c += 3 * g
        self.trans_norm = nn.BatchNorm2d(c)
        self.trans_conv = nn.Conv2d(c, c // 2, 1, bias=False)
        c //= 2
        self.block2 = nn.Sequential(DenseLayer(c, g), DenseLayer(c + g, g))
        c += 2 * g
        self.norm5 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(self.conv0(x))
        x = F.avg_pool2d(self.trans_conv(F.relu(self.trans_norm(x))), 2)
        x = F.relu(self.norm5(self.block2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ZooGrouped(nn.Module):
    """ResNeXt-style grouped 3×3 convs (4 groups) and a depthwise conv, with a residual add."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = 2 * width
        self.stem = conv_bn(in_channels, w)
        self.reduce = conv_bn(w, w, 1)
        self.grouped = conv_bn(w, w, 3, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.dw = conv_bn(w, w, 3, stride=2, groups=w)
        self.pw = conv_bn(w, 2 * w, 1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        x = self.pw(self.dw(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """Global pool → reduce → ReLU → expand → sigmoid, scaling the input's channels."""

    def __init__(self, channels: int, reduced: int, *, linear: bool = False) -> None:
        super().__init__()
        layer = nn.Linear if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.linear = linear
        self.reduce = layer(channels, reduced)
        self.expand = layer(reduced, channels)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        if self.linear:
            s = self.expand(F.relu(self.reduce(s.flatten(1))))[:, :, None, None]
        else:
            s = self.expand(F.relu(self.reduce(s)))
        return x * torch.sigmoid(s)


class ZooSqueezeExcite(nn.Module):
    """Conv blocks with squeeze-excite (1×1-conv SE, then a Linear SE)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.block1 = conv_bn(in_channels, 2 * w)
        self.se1 = SqueezeExcite(2 * w, w // 2)
        self.block2 = conv_bn(2 * w, 4 * w, stride=2)
        self.se2 = SqueezeExcite(4 * w, w, linear=True)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se2(self.block2(self.se1(self.block1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand → depthwise 3×3 → 1×1 linear projection (+ input when shapes match)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = conv_bn(cin, hidden, 1)
        self.dw = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_res else y


class ZooInvertedResidual(nn.Module):
    """A MobileNetV2-like stack of inverted residuals with hardswish, and a 1×1 head conv."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn(in_channels, w, stride=1)
        self.blocks = nn.Sequential(InvertedResidual(w, w, 1), InvertedResidual(w, 2 * w, 2),
                                    InvertedResidual(2 * w, 2 * w, 1))
        self.head = conv_bn(2 * w, 4 * w, 1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ShortcutBlock(nn.Module):
    """Basic residual block with an identity, option-A (pad) or option-B (1×1 conv + BN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if option == "A":
            self.shortcut = ChannelPadShortcut(cin, cout, stride)
        elif option == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class ZooShortcuts(nn.Module):
    """Three stages joined by an option-A shortcut (stage 2) and a 1×1-conv shortcut (stage 3)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn(in_channels, w)
        self.layer1 = ShortcutBlock(w, w, 1, "identity")
        self.layer2 = ShortcutBlock(w, 2 * w, 2, "A")
        self.layer3 = ShortcutBlock(2 * w, 4 * w, 2, "B")
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InceptionBlock(nn.Module):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→5×5 as two 3×3; pool→1×1), concatenated."""

    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, w, 1)
        self.b3 = nn.Sequential(conv_bn(cin, w, 1), conv_bn(w, w))
        self.b5 = nn.Sequential(conv_bn(cin, w // 2, 1), conv_bn(w // 2, w // 2), conv_bn(w // 2, w // 2))
        self.bp = conv_bn(cin, w // 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.max_pool2d(x, 3, 1, 1)
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)], 1)


class ZooInception(nn.Module):
    """A stem, two inception blocks (each concatenation read by the next block's four branches)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn(in_channels, w)
        self.mix1 = InceptionBlock(w, w)
        c = 3 * w
        self.mix2 = InceptionBlock(c, w)
        self.fc = nn.Linear(3 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mix2(F.max_pool2d(self.mix1(self.stem(x)), 2))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ZooFunctional(nn.Module):
    """Functional ops between convs: relu6, average pooling, swish, upsampling added to a skip."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, 2 * w, 3, padding=1)
        self.conv2 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.relu6(self.conv1(x))
        y = F.avg_pool2d(skip, 2)
        y = self.bn2(self.conv2(y))
        y = y * torch.sigmoid(y)
        x = skip + F.interpolate(y, scale_factor=2.0, mode="nearest")
        x = F.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class ZooTransposed(nn.Module):
    """An encoder-decoder: a transposed conv upsamples, which the analytic MACs counter does not model
    (its budgets are projected by counting pruned copies)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1 = conv_bn(in_channels, w)
        self.enc2 = conv_bn(w, 2 * w, stride=2)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2, bias=False)
        self.bn_up = nn.BatchNorm2d(w)
        self.dec = conv_bn(w, 2 * w)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.enc2(self.enc1(x))
        x = self.dec(F.relu(self.bn_up(self.up(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


ZOO: dict[str, tuple[type[nn.Module], str]] = {
    "zoo_vgg": (ZooVGG, "zoo: VGG, flatten of 4×4 maps into a Linear"),
    "zoo_densenet": (ZooDenseNet, "zoo: DenseNet concatenation, BN over the concatenation"),
    "zoo_grouped": (ZooGrouped, "zoo: grouped (4 groups) and depthwise convs, residual add"),
    "zoo_se": (ZooSqueezeExcite, "zoo: squeeze-excite (1×1-conv and Linear)"),
    "zoo_mobilenet": (ZooInvertedResidual, "zoo: MobileNetV2 inverted residuals"),
    "zoo_shortcuts": (ZooShortcuts, "zoo: option-A and 1×1-conv (option-B) shortcuts"),
    "zoo_inception": (ZooInception, "zoo: inception-like branches concatenated"),
    "zoo_functional": (ZooFunctional, "zoo: functional ops between convs, upsample + add"),
    "zoo_transposed": (ZooTransposed, "zoo: transposed conv (MACs counted, not analytic)"),
}
