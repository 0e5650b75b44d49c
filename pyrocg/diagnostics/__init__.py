"""Inspection: ArviZ ``InferenceData`` from predictions, and plots people would rather see.

This is the only part of pyrocg that imports ArviZ (lazily, so importing pyrocg stays fast).
"""

from .arviz import to_inference_data
from .plots import plot_reliability, reliability_curve

__all__ = ["to_inference_data", "plot_reliability", "reliability_curve"]
