"""ResNet-18, CIFAR variant (3x3 stem, no max-pool), with BatchNorm or no normalization at all."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    # norm=none: no normalization module at all. An empty nn.Sequential (the identity) rather than nn.Identity,
    # as the lab's reference code writes its identity shortcut: summary tools skip containers, so the
    # per-layer table lists only real layers.
    "none": lambda channels: nn.Sequential(),
}


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus shortcut (1x1 conv + norm when shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Sequential()  # identity, as in the lab's reference code (no summary row)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The lab's ResNet-18: 64/128/256/512 channels (at width 64), strides 1/2/2/2, 4x4 avg-pool, Linear."""

    def __init__(self, norm: str = "batchnorm", width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}; allowed: {', '.join(NORMS)}")
        make_norm = NORMS[norm]
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(width)
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride, make_norm), BasicBlock(cout, cout, 1, make_norm)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # the lab's avg_pool2d(4) over the 4x4 feature map of a 32x32 input; adaptive, so that any side works
        # (the same numbers at 32x32: one average over the whole map)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
