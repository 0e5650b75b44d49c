"""Plain PyTorch twins of the reference architectures, and weight transfer between them.

``models.mlp/cnn/resnet20`` in the feed-forward mode compute exactly what these torch.nn
networks compute; :func:`copy_weights` moves weights either way (parameters and buffers are
registered in the same order), which is how the tests and benchmarks compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["plain_mlp", "plain_cnn", "PlainPreActBlock", "PlainResNet20", "copy_weights"]


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and buffers of ``src`` into ``dst`` in registration order.

    :raises ValueError: if the two modules' parameter/buffer lists do not match in shape.
    """
    pairs = [
        (list(src.parameters()), list(dst.parameters())),
        (list(src.buffers()), list(dst.buffers())),
    ]
    for a, b in pairs:
        sa, sb = [tuple(t.shape) for t in a], [tuple(t.shape) for t in b]
        if sa != sb:
            raise ValueError(f"modules do not match: {sa} vs {sb}")
    with torch.no_grad():
        for a, b in pairs:
            for s, d in zip(a, b, strict=True):
                d.copy_(s)


def plain_mlp(in_features: int = 784, hidden: Sequence[int] = (1024, 1024), out: int = 10):
    """``Linear -> ReLU -> ... -> Linear`` as :func:`pyrocg.models.mlp` with ReLU nodes."""
    mods: list[nn.Module] = []
    width = in_features
    for h in hidden:
        mods += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*mods, nn.Linear(width, out))


def plain_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
    """The torch.nn twin of :func:`pyrocg.models.cnn` with default arguments."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class PlainPreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        r = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return (x if self.shortcut is None else self.shortcut(a)) + r


class PlainResNet20(nn.Module):
    """Pre-activation ResNet-20, the torch.nn twin of :func:`pyrocg.models.resnet20`."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, width = [], 16
        for s, w in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(PlainPreActBlock(width, w, 2 if s and not b else 1))
                width = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(h.mean((-2, -1)))
