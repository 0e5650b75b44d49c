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

    def forward(self, x):
        # A child that shares this module's Pyro context (every layer added to it does) runs
        # inside that context already: PyroModule.__call__ would only re-enter it and look up
        # Pyro's settings again, so call it as a plain nn.Module — same semantics, less
        # per-layer overhead.
        context = self._pyro_context
        for module in self._modules.values():
            if isinstance(module, PyroModule) and module._pyro_context is context and context.active:
                x = nn.Module.__call__(module, x)
            else:
                x = module(x)
        return x
