"""pyrocg: neural networks as chain graphs in Pyro.

Write a network once as a chain graph of random variables with explicit ``pyro.sample``
sites (:mod:`pyrocg.layers`, :mod:`pyrocg.models`), then run it as a deterministic network,
with PCFF, MC dropout or ancestral sampling by wrapping it in a handler
(:mod:`pyrocg.handlers`) or naming a mode object (:mod:`pyrocg.modes`); train and predict
with :mod:`pyrocg.infer`; put CRF output layers on it with :mod:`pyrocg.structured`.
"""

from . import (
    data,
    diagnostics,
    handlers,
    infer,
    layers,
    metrics,
    models,
    modes,
    nodes,
    reference,
    structured,
    tasks,
    validation,
)

__version__ = "0.1.0"

__all__ = [
    "data",
    "diagnostics",
    "handlers",
    "infer",
    "layers",
    "metrics",
    "models",
    "modes",
    "nodes",
    "reference",
    "structured",
    "tasks",
    "validation",
    "__version__",
]
