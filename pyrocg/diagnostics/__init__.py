"""Inspection of predictions: ArviZ ``InferenceData`` (:mod:`.arviz`, the only importer of
ArviZ), per-datum uncertainty (:mod:`.uncertainty`), post-hoc calibration
(:mod:`.calibration`), out-of-distribution scores (:mod:`.ood`) and plots (:mod:`.plots`).
The numbers themselves (ECE, MCE, Brier, NLL, AURC, AUROC) are in :mod:`pyrocg.metrics`.
"""

from . import arviz, calibration, ood, plots, uncertainty
from .arviz import plot_loo_pit, plot_ppc, to_inference_data
from .calibration import fit_temperature, temperature_scale
from .ood import SCORES, ood_metrics, ood_scores
from .plots import (
    ARVIZ_FIGURES,
    DIAGNOSTIC_FIGURES,
    plot_accuracy_rejection,
    plot_confidence_histogram,
    plot_reliability,
    plot_uncertainty_histograms,
    reliability_curve,
    write_diagnostic_plots,
)
from .uncertainty import (
    classification_uncertainty,
    entropy,
    expected_entropy,
    interval_coverage,
    mutual_information,
    predictive_entropy,
    predictive_interval,
    regression_uncertainty,
    variation_ratio,
)

__all__ = [
    "arviz",
    "calibration",
    "ood",
    "plots",
    "uncertainty",
    "to_inference_data",
    "plot_ppc",
    "plot_loo_pit",
    "fit_temperature",
    "temperature_scale",
    "SCORES",
    "ood_scores",
    "ood_metrics",
    "reliability_curve",
    "plot_reliability",
    "plot_confidence_histogram",
    "plot_uncertainty_histograms",
    "plot_accuracy_rejection",
    "write_diagnostic_plots",
    "DIAGNOSTIC_FIGURES",
    "ARVIZ_FIGURES",
    "entropy",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "classification_uncertainty",
    "regression_uncertainty",
    "predictive_interval",
    "interval_coverage",
]
