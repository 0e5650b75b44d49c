"""Exact posterior draws and MAP of discrete layers: :func:`infer_discrete`.

Layers of binary or categorical nodes are enumerable sites (:class:`~pyrocg.layers.
LayerSite`), so ``config_enumerate`` and ``TraceEnum_ELBO`` marginalise them exactly. Pyro's
own :func:`pyro.infer.infer_discrete` however packs every enumerated site's *value* by its
batch dimensions, which fails for any site with event dimensions (``OneHotCategorical`` as
much as a layer of units). This drop-in runs Pyro's algorithm with each enumerated layer
site re-encoded as one categorical variable over the layer's joint configurations, then
replays the model with the drawn configurations decoded back into unit values — so the
trace a user records holds ordinary layer values, as latent (unobserved) sites.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from ..layers.site import LayerSite

__all__ = ["infer_discrete"]

_DECODED = "_pyrocg_decoded"


class _ConfigurationIndex(Messenger):
    """Enumerated layer sites become a ``Categorical`` over configuration indices; the network
    receives the decoded unit values (the trace outside keeps the index, and the decoded
    value in the site's ``infer`` dict)."""

    def __init__(self):
        super().__init__()
        self._configs: dict[str, tuple[torch.Tensor, torch.Size]] = {}

    def _pyro_sample(self, msg) -> None:
        fn = msg["fn"]
        if (msg["is_observed"] or msg["value"] is not None or not isinstance(fn, LayerSite)
                or msg["infer"].get("enumerate") != "parallel"):
            return
        configs = fn.enumerate_support(expand=False)  # (S, 1, ..., 1, *event)
        logits = fn.log_prob(configs)  # (S, *batch)
        msg["fn"] = dist.Categorical(logits=logits.movedim(0, -1))
        self._configs[msg["name"]] = (configs.reshape((configs.shape[0],) + fn.event_shape),
                                      fn.event_shape)

    def _pyro_post_sample(self, msg) -> None:
        entry = self._configs.pop(msg["name"], None)
        if entry is None:
            return
        table, _ = entry
        msg["value"] = table[msg["value"]]
        msg["infer"][_DECODED] = msg["value"]


def infer_discrete(
    fn: Callable | None = None,
    first_available_dim: int | None = None,
    temperature: int = 1,
    *,
    strict_enumeration_warning: bool = True,
):
    """:func:`pyro.infer.infer_discrete` for models with enumerated pyrocg layer sites.

    Samples (``temperature=1``) or maximises (``temperature=0``) the enumerated discrete
    sites from their exact posterior given the observations; other sites keep their model
    semantics. Use it as Pyro's (decorator or function).

    :param fn: a model whose discrete sites are marked for parallel enumeration
        (``config_enumerate``).
    :param first_available_dim: the first tensor dim (from the right) free for enumeration,
        ``-(max_plate_nesting + 1)``.
    :param temperature: 1 to sample, 0 for the joint MAP configuration.

    >>> from collections import OrderedDict
    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro.infer import config_enumerate
    >>> from pyrocg import layers
    >>> sbn = layers.Sequential(OrderedDict(hidden=layers.Dense(4, 3, node="binary"),
    ...                                     out=layers.Dense(3, 2, node=None)))
    >>> @config_enumerate
    ... def model(x, y):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("y", dist.Categorical(logits=sbn(x)), obs=y)
    >>> x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    >>> map_model = infer_discrete(model, first_available_dim=-2, temperature=0)
    >>> pyro.poutine.trace(map_model).get_trace(x, y).nodes["hidden"]["value"].shape  # (batch, units)
    torch.Size([10, 3])
    """
    if temperature not in (0, 1) or isinstance(temperature, bool):
        raise ValueError(f"temperature must be 0 (MAP) or 1 (sample), got {temperature!r}")
    if first_available_dim is not None and (not isinstance(first_available_dim, int)
                                            or first_available_dim >= 0):
        raise ValueError(f"first_available_dim must be a negative int or None, got "
                         f"{first_available_dim!r}")
    if fn is None:
        return lambda f: infer_discrete(f, first_available_dim, temperature,
                                        strict_enumeration_warning=strict_enumeration_warning)
    if not callable(fn):
        raise TypeError(f"fn must be a model (a callable), got {type(fn).__name__}")

    def sampler(*args, **kwargs):
        indexed = pyro.infer.infer_discrete(
            _ConfigurationIndex()(fn), first_available_dim=first_available_dim,
            temperature=temperature, strict_enumeration_warning=strict_enumeration_warning)
        with poutine.block():
            draws = poutine.trace(indexed).get_trace(*args, **kwargs)
        # Replay the drawn values (unit values, latent) through the model, like Pyro's own
        # last pass does with its SamplePosteriorMessenger.
        replayed = poutine.Trace()
        for name, site in draws.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if site["infer"].get("enumerate") != "parallel":
                continue
            infer = {k: v for k, v in site["infer"].items() if k != _DECODED}
            replayed.add_node(name, type="sample", name=name, is_observed=False, infer=infer,
                              value=site["infer"].get(_DECODED, site["value"]),
                              fn=site["fn"], args=(), kwargs={},
                              cond_indep_stack=site["cond_indep_stack"])
        return poutine.replay(fn, trace=replayed)(*args, **kwargs)

    return sampler
