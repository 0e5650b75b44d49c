"""Builders of reference chain-graph architectures.

Each returns a :class:`~pyrocg.layers.Sequential` whose last layer is a linear read-out
(``node=None``): it returns the energies (logits) of the output layer, which the likelihood
(:mod:`pyrocg.infer`) turns into the observed label site.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch  # noqa: F401  (doctests)

from .layers import (
    Activation,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    MaxPool2d,
    RefineBlock,
    Sequential,
)

__all__ = ["mlp", "cnn", "resnet20"]


def mlp(
    in_features: int = 784,
    hidden: Sequence[int] = (1024, 1024),
    out_features: int = 10,
    node="relu",
    dropout: float = 0.0,
    norm: str | None = None,
    input_dropout: float = 0.0,
) -> Sequential:
    """Multi-layer perceptron ``in -> hidden... -> out`` (the CG paper's 784-1024-1024-10).

    Sites: ``hidden1``, ``hidden2``, ... (nodes) and ``drop1``, ... (dropout before each
    dense layer after the input, when ``dropout > 0``); the read-out is ``out``. With
    ``input_dropout > 0`` the inputs are dropped too, at site ``drop0`` (Gal & Ghahramani's
    UCI networks drop inputs and hidden units at the same rate:
    ``mlp(d, [50], 1, dropout=p, input_dropout=p)``).

    :param input_dropout: drop probability of the inputs in ``[0, 1)``; 0 adds no site.

    Input ``(*sample, batch, in_features)``, output ``(*sample, batch, out_features)``.

    >>> net = mlp(8, [16], 3)
    >>> net(torch.randn(2, 8)).shape
    torch.Size([2, 3])
    >>> list(mlp(8, [16], 1, dropout=0.1, input_dropout=0.1)._modules)
    ['drop0', 'hidden1', 'drop1', 'out']
    """
    if isinstance(input_dropout, bool) or not isinstance(input_dropout, (int, float)) or not (
            0.0 <= input_dropout < 1.0):
        raise ValueError(f"input_dropout must be a probability in [0, 1), got {input_dropout!r}")
    layers: OrderedDict = OrderedDict()
    width = in_features
    if input_dropout > 0:
        layers["drop0"] = Dropout(input_dropout)
    for i, h in enumerate(hidden, 1):
        if dropout > 0 and i > 1:
            layers[f"drop{i - 1}"] = Dropout(dropout)
        layers[f"hidden{i}"] = Dense(width, h, node=node, norm=norm)
        width = h
    if dropout > 0 and hidden:
        layers[f"drop{len(hidden)}"] = Dropout(dropout)
    layers["out"] = Dense(width, out_features, node=None)
    return Sequential(layers)


def cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    node="relu",
    dropout: float = 0.0,
    norm: str | None = None,
) -> Sequential:
    """Small convnet for 28x28 (Fashion-MNIST) or 8x8 (digits) images: two 3x3 conv layers
    each followed by 2x2 max-pooling, a dense hidden layer and a read-out.

    >>> net = cnn(image_size=8)
    >>> net(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    if image_size % 4:
        raise ValueError(f"image_size must be divisible by 4, got {image_size}")
    c1, c2 = channels
    layers = OrderedDict(
        conv1=Conv2d(in_channels, c1, 3, padding=1, node=node, norm=norm),
        pool1=MaxPool2d(2),
        conv2=Conv2d(c1, c2, 3, padding=1, node=node, norm=norm),
        pool2=MaxPool2d(2),
        flatten=Flatten(),
    )
    if dropout > 0:
        layers["drop1"] = Dropout(dropout)
    layers["hidden"] = Dense(c2 * (image_size // 4) ** 2, hidden, node=node)
    if dropout > 0:
        layers["drop2"] = Dropout(dropout)
    layers["out"] = Dense(hidden, num_classes, node=None)
    return Sequential(layers)


def resnet20(
    in_channels: int = 3,
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 3,
    node="relu",
    norm: str | None = "batch",
) -> Sequential:
    """The CG paper's ResNet-20: a 3x3 conv, 3 stages x ``blocks`` pre-activation refinement
    modules (16/32/64 channels, stride 2 entering stages 2 and 3), a final BN+node layer,
    global average pooling and a dense read-out. Sites are named ``stage{s}.block{b}.act{k}``.

    >>> net = resnet20(in_channels=1, blocks=1)
    >>> net(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2, 10])
    """
    layers: OrderedDict = OrderedDict(
        conv=Conv2d(in_channels, widths[0], 3, padding=1, bias=False, node=None)
    )
    width = widths[0]
    for s, w in enumerate(widths, 1):
        stage = OrderedDict()
        for b in range(blocks):
            stride = 2 if (s > 1 and b == 0) else 1
            stage[f"block{b}"] = RefineBlock(width, w, stride, node=node, norm=norm)
            width = w
        layers[f"stage{s}"] = Sequential(stage)
    layers["act"] = Activation(node, norm, width, spatial=True)
    layers["pool"] = GlobalAvgPool2d()
    layers["out"] = Dense(width, num_classes, node=None)
    return Sequential(layers)
