"""Structured prediction: exact chain CRFs over semirings and unrolled mean-field CRFs.

* :mod:`~pyrocg.structured.semirings`: :class:`LogSemiring`, :class:`MaxSemiring`.
* :mod:`~pyrocg.structured.chain`: the one generic chain dynamic programme (sequential or
  parallel scan), Viterbi and forward-filtering backward-sampling.
* :class:`LinearChainCRF`: a Pyro distribution over tag sequences.
* :class:`GridMeanFieldCRF`, :class:`MultiLabelMeanFieldCRF`: unrolled mean-field CRFs.
"""

from pyrocg.structured import chain, meanfield, semirings
from pyrocg.structured.crf import LinearChainCRF
from pyrocg.structured.hmm import ChainHMM, NeuralHMM
from pyrocg.structured.meanfield import (
    GridMeanFieldCRF,
    MultiLabelMeanFieldCRF,
    grid_mean_field,
    multilabel_mean_field,
)
from pyrocg.structured.semirings import LogSemiring, MaxSemiring, Semiring

__all__ = [
    "ChainHMM",
    "NeuralHMM",
    "GridMeanFieldCRF",
    "MultiLabelMeanFieldCRF",
    "LinearChainCRF",
    "LogSemiring",
    "MaxSemiring",
    "Semiring",
    "chain",
    "grid_mean_field",
    "meanfield",
    "multilabel_mean_field",
    "semirings",
]
