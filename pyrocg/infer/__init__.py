"""Training and inference: likelihoods, the model, the training loop and a vectorised
predictive. Network, prior, likelihood, mode and guide are separate objects that
:class:`CGModel` combines (the TyXe way); modes, priors and guides live in
:mod:`pyrocg.modes` and are re-exported here for convenience."""

from ..modes import (
    MODES,
    PCFF,
    AncestralSampling,
    BayesianWeights,
    Dropout,
    DropoutWeightGuide,
    FeedForward,
    GaussianPrior,
    LocalReparamGuide,
    MCDropout,
    MeanFieldNormalGuide,
    Mode,
    get_mode,
)
from . import distributed
from .amortised import (
    AmortisedModel,
    AmortisedVI,
    ImportanceEstimate,
    InferenceNetwork,
    marginal_log_likelihood,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .discrete import infer_discrete
from .likelihoods import (
    Categorical,
    ChainCRFLikelihood,
    Gaussian,
    GridCRFLikelihood,
    Likelihood,
    MultiLabelCRFLikelihood,
)
from .model import CGModel
from .predictive import Prediction, predict, predict_pyro
from .trainer import TrainConfig, TrainingDiverged, evaluate, fit

__all__ = [
    "distributed",
    "AmortisedModel",
    "AmortisedVI",
    "InferenceNetwork",
    "ImportanceEstimate",
    "marginal_log_likelihood",
    "CGModel",
    "Likelihood",
    "Categorical",
    "Gaussian",
    "ChainCRFLikelihood",
    "MultiLabelCRFLikelihood",
    "GridCRFLikelihood",
    "GaussianPrior",
    "DropoutWeightGuide",
    "MeanFieldNormalGuide",
    "LocalReparamGuide",
    "Mode",
    "FeedForward",
    "PCFF",
    "Dropout",
    "MCDropout",
    "BayesianWeights",
    "AncestralSampling",
    "MODES",
    "get_mode",
    "Prediction",
    "predict",
    "predict_pyro",
    "infer_discrete",
    "TrainConfig",
    "TrainingDiverged",
    "fit",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
]
