"""Resolve the ``node=`` argument of layers to a node family."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .base import CGNode
from .binary import BinaryNode
from .categorical import CategoricalNode
from .rectified import GaussianNode, LeakyReLUNode, ReLUNode, SoftplusNode

__all__ = ["NODE_NAMES", "resolve_node"]

NodeFactory = Callable[[torch.Tensor], CGNode]

_NAMED: dict[str, NodeFactory] = {
    "binary": BinaryNode,
    "sign": functools.partial(BinaryNode, low=-1.0, high=1.0),
    "categorical": CategoricalNode,
    "relu": ReLUNode,
    "softplus": SoftplusNode,
    "leaky_relu": LeakyReLUNode,
    "gaussian": GaussianNode,
}
NODE_NAMES = tuple(_NAMED)


def resolve_node(node: str | NodeFactory | None) -> NodeFactory | None:
    """Turn a node name, a node class (or any ``energy -> CGNode`` callable) or ``None``
    (no node: the layer returns its energy) into a factory.

    >>> resolve_node("sign")(torch.zeros(1)).low
    -1.0
    """
    if node is None:
        return None
    if isinstance(node, str):
        try:
            return _NAMED[node]
        except KeyError:
            raise ValueError(f"unknown node {node!r}; expected one of {NODE_NAMES}") from None
    if isinstance(node, type) and not issubclass(node, CGNode):
        raise TypeError(f"node class must subclass pyrocg.nodes.CGNode, got {node.__name__}")
    if not callable(node):
        raise TypeError(f"node must be a name, a CGNode class or a callable, got {node!r}")
    return node
