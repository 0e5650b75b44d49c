"""What every mode handler shares: finding chain-graph sites and setting their value.

A handler acts only on unobserved sample sites that a pyrocg layer marked in its ``infer``
dict, and it leaves Pyro's semantics intact for everything around it:

* a value given by an *inner* handler (``condition``, ``replay``, another mode) wins;
* a value an *outer* Pyro handler will give — ``poutine.replay`` (including the guide
  trace that ``Trace_ELBO`` replays the model against), ``poutine.condition``,
  ``Predictive``'s posterior samples — wins too: the handler steps aside and the site is an
  ordinary site, its node log-density counted, exactly as without the handler;
* a site marked for enumeration (``infer={"enumerate": ...}``) is left to the enumerator;
* observed sites and plate subsample sites are never touched.

A site whose value the handler chooses becomes an observed site with ``mask=False`` — the
same device as :func:`pyro.deterministic` — so it adds nothing to the log-density and SVI
does not warn that the model has latent sites the guide lacks. That is exactly the PCFF
training objective: the guide of the hidden nodes is the model's own conditional, so their
log-density terms cancel. Its distribution has no batch dimensions left (all are event
dimensions, as for ``pyro.deterministic``), so a network run outside any ``pyro.plate`` is
fine. Replaying such a trace from *outside* the handler reproduces its values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.distributions.util import broadcast_shape
from pyro.poutine.condition_messenger import ConditionMessenger
from pyro.poutine.infer_config_messenger import InferConfigMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _PYRO_STACK

from ..layers.base import DIRECT_DECIDER, ROLE_KEY
from ..nodes import CGNode
from ..nodes._random import bernoulli_mask

__all__ = ["CGMessenger", "FEEDFORWARD", "SAMPLE", "HANDLED_KEY", "node_of"]

#: Actions a handler can take on a site.
FEEDFORWARD, SAMPLE = "feedforward", "sample"

#: Key set in the ``infer`` dict of a site whose value a mode handler chose.
HANDLED_KEY = "pyrocg_handled"

_STEP_ASIDE = object()


def node_of(fn) -> CGNode:
    """The node distribution inside a site's (possibly ``to_event``/masked/expanded) ``fn``.

    :param fn: a site's distribution, e.g. ``trace.nodes[name]["fn"]``.
    :returns: the :class:`~pyrocg.nodes.CGNode` (batch shape ``(batch,)``, the units as event
        dimensions once unwrapped: ``node_of(fn).feedforward`` has the site value's shape).

    >>> import pyro, torch
    >>> from pyrocg import models
    >>> with pyro.poutine.trace() as tr:
    ...     _ = models.mlp(4, [8], 3)(torch.randn(5, 4))
    >>> node = node_of(tr.trace.nodes["hidden1"]["fn"])
    >>> type(node).__name__, tuple(node.feedforward.shape)  # (batch, units)
    ('ReLUNode', (5, 8))
    """
    while not isinstance(fn, CGNode):
        fn = fn.base_dist
    return fn


def _broadcast_to_outer_plates(handler: Messenger, fn):
    """Expand ``fn`` over the vectorised plates *outside* ``handler``.

    Those plates broadcast a site only after the handler has run (Pyro processes the stack
    from the inside out), yet the handler draws the value. Without this, a plate wrapped
    around the model — ``Trace_ELBO(vectorize_particles=True)``, ``Predictive(parallel=True)``
    — would get one draw shared by all its members instead of independent ones.
    """
    shape = list(fn.batch_shape)
    for frame in _PYRO_STACK:
        if frame is handler:
            break
        if isinstance(frame, PlateMessenger) and frame.dim is not None:
            if -frame.dim > len(shape):
                shape = [1] * (-frame.dim - len(shape)) + shape
            if shape[frame.dim] == 1:
                shape[frame.dim] = frame.subsample_size
    return fn if tuple(shape) == tuple(fn.batch_shape) else fn.expand(shape)


def _outer_value(handler: Messenger, msg):
    """What the Pyro handlers *outside* ``handler`` will do with this site.

    Returns ``None`` (nothing: the mode decides), ``_STEP_ASIDE`` (an outer ``replay`` or
    ``condition`` gives the site its value, or ``config_enumerate`` marks it for the
    enumerator: leave it an ordinary site) or a value (an outer
    ``replay`` of a trace in which a mode handler chose this site's value: reproduce it).
    The innermost of those handlers is the one whose value Pyro keeps.
    """
    name = msg["name"]
    for frame in reversed(_PYRO_STACK[: _PYRO_STACK.index(handler)]):
        if isinstance(frame, ReplayMessenger) and frame.trace is not None and name in frame.trace:
            node = frame.trace.nodes[name]
            if node["type"] == "sample" and node["is_observed"] and node["infer"].get(HANDLED_KEY):
                return node["value"]
            return _STEP_ASIDE
        if isinstance(frame, ConditionMessenger) and name in frame.data:
            return _STEP_ASIDE
        if isinstance(frame, InferConfigMessenger) and frame.config_fn(msg).get("enumerate"):
            return _STEP_ASIDE  # config_enumerate outside: the enumerator gives the values
    return None


def _deterministic_like(fn, plates):
    """``fn`` as the distribution of a chosen, observed value that adds nothing: masked, and
    with batch dimensions only where the plates already entered put them (as
    :func:`pyro.deterministic` has), so the site demands no plate the user did not write.
    Plates outside the handler expand it later, as they expand any site."""
    dims = [f for f in plates if f.dim is not None]
    shape = [1] * max((-f.dim for f in dims), default=0)
    for f in dims:
        shape[f.dim] = f.size
    batch = fn.batch_shape
    if not (len(batch) <= len(shape)
            and all(b in (1, s) for b, s in zip(reversed(batch), reversed(shape), strict=False))):
        fn = fn.to_event(len(batch))  # else every batch dim is a plate's already
        if shape:
            fn = fn.expand(shape)
    return _NoDensity(fn)


class _NoDensity(MaskedDistribution):
    """``fn.mask(False)`` whose zero log-density has the value's dtype (Pyro's is float32,
    which breaks float64 models under ``TraceEnum_ELBO``)."""

    def __init__(self, base_dist):
        super().__init__(base_dist, False)

    def expand(self, batch_shape, _instance=None):
        return super().expand(batch_shape, self._get_checked_instance(_NoDensity, _instance))

    def log_prob(self, value):
        shape = broadcast_shape(self.batch_shape, value.shape[: value.dim() - self.event_dim])
        return value.new_zeros(()).expand(shape)


def _value(action, node: CGNode) -> torch.Tensor:
    """The value a handler's ``action`` gives a site of ``node``."""
    if action == FEEDFORWARD:
        return node.feedforward
    if action == SAMPLE:
        # Draw exactly as Pyro's default would (rsample where there is one), so that a fully
        # sampled site reproduces the unhandled model under the same seed.
        return node.rsample() if node.has_rsample else node.sample()
    # Per element: a draw with probability `action`, else the statistic.
    return node.rsample_where(bernoulli_mask(action, node.batch_shape + node.event_shape,
                                             node.energy.device))


class CGMessenger(Messenger):
    """Base class of the mode handlers; subclasses implement :meth:`choose`.

    A mode handler sees every chain-graph site (node and dropout sites, told apart by their
    role), asks :meth:`choose` what to do, and gives the site its value as an observed,
    masked site (no log-density, as ``pyro.deterministic`` does). Observed sites, sites with a
    value from ``replay``/``condition`` or a guide, enumerated sites and plate subsample sites
    are left to Pyro. A new mode is a subclass with a :meth:`choose`:

    >>> import torch
    >>> from pyrocg import handlers, models
    >>> from pyrocg.handlers.base import FEEDFORWARD, SAMPLE
    >>> class SampleFirstLayer(handlers.CGMessenger):
    ...     def choose(self, name, role):
    ...         return SAMPLE if name == "hidden1" else FEEDFORWARD
    >>> net = models.mlp(4, [8, 8], 3)
    >>> with SampleFirstLayer():
    ...     out = net(torch.randn(5, 4))  # (batch, classes)
    >>> out.shape
    torch.Size([5, 3])
    """

    #: Name of the generated functional wrapper (:mod:`pyrocg.handlers`).
    handler_name: str = ""

    def choose(self, name: str, role: str):
        """Return ``FEEDFORWARD``, ``SAMPLE``, a rate in ``(0, 1)`` (per-element PCFF mix),
        or ``None`` to leave the site alone."""
        raise NotImplementedError

    def value(self, action, node: CGNode) -> torch.Tensor:
        """The value :meth:`choose`'s ``action`` gives a site of ``node`` (subclasses with
        actions of their own, such as learned rates, extend it)."""
        return _value(action, node)

    def decide(self, name: str, role: str, node: CGNode) -> torch.Tensor | None:
        """The value this handler gives a site ``name`` of ``role`` with nothing else around
        it, or ``None`` to leave the site alone."""
        action = self.choose(name, role)
        return None if action is None else self.value(action, node)

    @contextlib.contextmanager
    def deciding(self) -> Iterator[None]:
        """Within the block this handler decides the chain-graph sites directly instead of
        through Pyro's effect stack — the same values and random draws, without building
        each site's message. Only while no Pyro handler is active (otherwise sites go
        through ``pyro.sample`` as usual); for objectives that read nothing but the output,
        such as :class:`~pyrocg.infer.CGModel`'s closed-form loss.
        """
        token = DIRECT_DECIDER.set(self.decide)
        try:
            yield
        finally:
            DIRECT_DECIDER.reset(token)

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg.get("done"):
            return
        infer = msg.get("infer") or {}
        role = infer.get(ROLE_KEY)
        if role is None or infer.get("enumerate"):
            return
        action = self.choose(msg["name"], role)
        if action is None:
            return
        given = _outer_value(self, msg)
        if given is _STEP_ASIDE:
            return
        fn = msg["fn"]
        if given is not None:
            value = given
        else:
            if action != FEEDFORWARD:
                fn = _broadcast_to_outer_plates(self, fn)
            value = self.value(action, node_of(fn))
        msg["value"] = value
        msg["is_observed"] = True
        if _PYRO_STACK[0] is self and len(_PYRO_STACK) == 1:
            return  # nothing but this handler sees the site: no need to dress it up
        msg["fn"] = _deterministic_like(fn, msg["cond_indep_stack"])
        msg["infer"] = {**infer, HANDLED_KEY: True}
