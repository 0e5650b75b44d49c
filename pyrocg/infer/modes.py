"""Training and prediction modes: which handler runs the network when."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyro.poutine.messenger import Messenger

from .. import handlers

__all__ = ["Mode", "MODES", "get_mode"]


@dataclass(frozen=True)
class Mode:
    """A mode: the handler of training passes, the handler of prediction passes, whether
    prediction averages several stochastic passes, and whether weights are random."""

    name: str
    train: Callable[[float], Messenger]
    predict: Callable[[float], Messenger]
    stochastic_prediction: bool = False
    bayesian: bool = False


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("feedforward", lambda r: handlers.feedforward(), lambda r: handlers.feedforward()),
        Mode("pcff", lambda r: handlers.pcff(r), lambda r: handlers.feedforward()),
        Mode("dropout", lambda r: handlers.mc_dropout(), lambda r: handlers.feedforward()),
        Mode("mc-dropout", lambda r: handlers.mc_dropout(), lambda r: handlers.mc_dropout(), True),
        Mode("bayes", lambda r: handlers.feedforward(), lambda r: handlers.feedforward(), True, True),
        # Forward (ancestral) sampling of the nodes at test time, PCFF at train time.
        Mode("pcff-sampling", lambda r: handlers.pcff(r), lambda r: handlers.pcff(r), True),
    )
}


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; expected one of {tuple(MODES)}") from None
