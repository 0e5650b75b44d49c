"""A chain of layers."""

from __future__ import annotations

from pyro.nn import PyroModule
from torch import nn

__all__ = ["Sequential"]


class Sequential(PyroModule[nn.Sequential]):
    """:class:`torch.nn.Sequential` as a Pyro module: pass layers positionally or as an
    ``OrderedDict`` of names to layers (the names become the site names).

    >>> from collections import OrderedDict
    >>> from pyrocg.layers import Dense
    >>> net = Sequential(OrderedDict(hidden=Dense(3, 4), out=Dense(4, 2, node=None)))
    >>> net.hidden.site_name
    'hidden'
    """
