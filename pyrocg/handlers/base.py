"""What every mode handler shares: finding chain-graph sites and setting their value.

A handler acts only on unobserved sample sites that a pyrocg layer marked in its ``infer``
dict, and only if no inner handler (``condition``, ``replay``, another mode) has already
given the site a value: the innermost handler wins, observed sites and plate subsample sites
are never touched.

A site whose value the handler chooses becomes an observed site with ``mask=False`` — the
same device as :func:`pyro.deterministic` — so it adds nothing to the log-density and SVI
does not warn that the model has latent sites the guide lacks. That is exactly the PCFF
training objective: the guide of the hidden nodes is the model's own conditional, so their
log-density terms cancel.
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.runtime import _PYRO_STACK

from ..layers.base import ROLE_KEY
from ..nodes import CGNode

__all__ = ["CGMessenger", "FEEDFORWARD", "SAMPLE", "node_of"]

#: Actions a handler can take on a site.
FEEDFORWARD, SAMPLE = "feedforward", "sample"


def node_of(fn) -> CGNode:
    """The node distribution inside a site's (possibly ``to_event``/masked/expanded) ``fn``."""
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


class CGMessenger(Messenger):
    """Base class of the mode handlers; subclasses implement :meth:`choose`."""

    def choose(self, name: str, role: str):
        """Return ``FEEDFORWARD``, ``SAMPLE``, a rate in ``(0, 1)`` (per-element PCFF mix),
        or ``None`` to leave the site alone."""
        raise NotImplementedError

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg.get("done"):
            return
        role = (msg.get("infer") or {}).get(ROLE_KEY)
        if role is None:
            return
        action = self.choose(msg["name"], role)
        if action is None:
            return
        if action == FEEDFORWARD:
            value = node_of(msg["fn"]).feedforward
        else:
            # Draw exactly as Pyro's default would (rsample where there is one), so that a
            # fully sampled site reproduces the unhandled model under the same seed.
            msg["fn"] = _broadcast_to_outer_plates(self, msg["fn"])
            value = msg["fn"](*msg["args"], **msg["kwargs"])
            if action != SAMPLE:
                ff = node_of(msg["fn"]).feedforward.expand(value.shape)
                keep = torch.rand(value.shape, device=value.device) < action
                value = torch.where(keep, value, ff)
        msg["value"] = value
        msg["is_observed"] = True
        msg["fn"] = msg["fn"].mask(False)
