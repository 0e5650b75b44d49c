"""Node families of chain-graph layers, each a Pyro distribution parametrised by its energy."""

from .base import CGNode, check_energy
from .binary import BinaryNode
from .categorical import CategoricalNode
from .rectified import (
    SOFTPLUS_SCALE,
    GaussianNode,
    LeakyReLUNode,
    RectifiedGaussianNode,
    ReLUNode,
    SoftplusNode,
)
from .registry import NODE_NAMES, resolve_node

__all__ = [
    "CGNode",
    "BinaryNode",
    "CategoricalNode",
    "RectifiedGaussianNode",
    "ReLUNode",
    "SoftplusNode",
    "LeakyReLUNode",
    "GaussianNode",
    "SOFTPLUS_SCALE",
    "NODE_NAMES",
    "resolve_node",
    "check_energy",
]
