"""Chain-graph layers: PyroModules that emit their nodes as vectorised sample sites."""

from .activation import Activation
from .base import DROPOUT_ROLE, NODE_ROLE, ROLE_KEY, CGLayer
from .conv import Conv1d, Conv2d
from .crf import ChainCRF
from .dense import Dense
from .dropout import Dropout
from .gaussian_noise import GaussianDropout, GaussianNoiseNode
from .indrnn import IndRNN
from .pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d
from .refine import RefineBlock
from .reparam import GaussianWeights, local_reparam
from .sequential import Sequential
from .site import MAX_JOINT_SUPPORT, LayerSite

__all__ = [
    "LayerSite",
    "MAX_JOINT_SUPPORT",
    "CGLayer",
    "Dense",
    "Conv1d",
    "Conv2d",
    "Activation",
    "AvgPool2d",
    "MaxPool2d",
    "GlobalAvgPool2d",
    "Flatten",
    "Dropout",
    "GaussianDropout",
    "GaussianNoiseNode",
    "RefineBlock",
    "IndRNN",
    "Sequential",
    "ChainCRF",
    "GaussianWeights",
    "local_reparam",
    "ROLE_KEY",
    "NODE_ROLE",
    "DROPOUT_ROLE",
]
