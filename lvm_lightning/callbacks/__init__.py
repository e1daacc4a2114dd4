"""Callbacks: the true density beside the model's, and pictures."""
from lvm_lightning.callbacks.density_plot import DensityPlot, model_log_density
from lvm_lightning.callbacks.true_density import TrueLogDensity

__all__ = ["DensityPlot", "TrueLogDensity", "model_log_density"]
