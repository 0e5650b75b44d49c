"""Structured prediction: exact chain CRFs over semirings and unrolled mean-field CRFs.

* :mod:`~pyrocg.structured.semirings`: :class:`LogSemiring`, :class:`MaxSemiring`,
  :func:`KMaxSemiring`.
* :mod:`~pyrocg.structured.chain`: the one chain dynamic programme over semirings
  (:class:`Chain`; fused forward-backward, log-space or parallel-scan backends), and the
  quantities derived from it (marginals, entropy, KL, Viterbi, k-best, max-marginals, samples).
* :class:`LinearChainCRF`: a Pyro distribution over tag sequences (constraints, partial
  labels, k-best, KL); :class:`CRFDecoder`: its Viterbi decoder as an exportable module.
* :class:`GridMeanFieldCRF`, :class:`MultiLabelMeanFieldCRF`: unrolled mean-field CRFs (one
  surrogate loss, :func:`~pyrocg.structured.meanfield.surrogate_log_lik`).
* :class:`ChainCRFLikelihood`, :class:`MultiLabelCRFLikelihood`, :class:`GridCRFLikelihood`:
  these models as the likelihood of a network (also importable from :mod:`pyrocg.infer`).
"""

from pyrocg.structured import chain, likelihoods, meanfield, semirings, tree
from pyrocg.structured.chain import Chain
from pyrocg.structured.crf import MISSING, CRFDecoder, LinearChainCRF
from pyrocg.structured.hmm import ChainHMM, NeuralHMM
from pyrocg.structured.likelihoods import (
    ChainCRFLikelihood,
    GridCRFLikelihood,
    MultiLabelCRFLikelihood,
)
from pyrocg.structured.meanfield import (
    GridMeanFieldCRF,
    MultiLabelMeanFieldCRF,
    grid_mean_field,
    multilabel_mean_field,
)
from pyrocg.structured.semirings import KMaxSemiring, LogSemiring, MaxSemiring, Semiring
from pyrocg.structured.tree import (
    MultiLabelTreeCRF,
    Tree,
    TreeCRF,
    TreeCRFLikelihood,
    chow_liu_tree,
    mutual_information,
)

__all__ = [
    "MISSING",
    "CRFDecoder",
    "Chain",
    "ChainCRFLikelihood",
    "GridCRFLikelihood",
    "MultiLabelCRFLikelihood",
    "likelihoods",
    "KMaxSemiring",
    "MultiLabelTreeCRF",
    "Tree",
    "TreeCRF",
    "TreeCRFLikelihood",
    "chow_liu_tree",
    "mutual_information",
    "tree",
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
