"""CIFAR VGG-16-BN as in the HRank/CHIP code bases.

13 conv-BN-ReLU layers (max-pooling after convs 2, 4, 7 and 10), global average pooling, and the
classifier ``Linear(512, 512) - BatchNorm1d - ReLU - Linear(512, classes)``.
"""

from __future__ import annotations

from torch import Tensor, nn

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)


class CifarVGG(nn.Module):
    """VGG with BN for small inputs; ``cfg`` lists conv widths and ``"M"`` for max-pooling."""

    def __init__(
        self, cfg: tuple[int | str, ...] = VGG16_CFG, *, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
