"""Training and inference: likelihoods, priors, modes, guides, the training loop and a
vectorised predictive. Network, prior, likelihood and guide are separate objects that
:class:`CGModel` combines (the TyXe way)."""

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .guides import DropoutWeightGuide, MeanFieldNormalGuide
from .likelihoods import (
    Categorical,
    ChainCRFLikelihood,
    Gaussian,
    GridCRFLikelihood,
    Likelihood,
    MultiLabelCRFLikelihood,
)
from .model import CGModel
from .modes import MODES, Mode, get_mode
from .predictive import Prediction, predict
from .priors import GaussianPrior
from .trainer import TrainConfig, TrainingDiverged, evaluate, fit

__all__ = [
    "distributed",
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
    "Mode",
    "MODES",
    "get_mode",
    "Prediction",
    "predict",
    "TrainConfig",
    "TrainingDiverged",
    "fit",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
]
