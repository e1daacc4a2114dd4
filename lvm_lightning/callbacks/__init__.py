"""Callbacks: the true density beside the model's, pictures, the amortization gap, convergence and the progress bar."""

from lvm_lightning.callbacks.amortization_gap import AmortizationGap
from lvm_lightning.callbacks.convergence import Convergence, convergence_note
from lvm_lightning.callbacks.density_plot import DensityPlot
from lvm_lightning.callbacks.gradient_snr import GradientSNR, gradient_snr
from lvm_lightning.callbacks.images import ActiveUnits, ImageGrids, LatentScatter, active_units
from lvm_lightning.callbacks.layout import ScalarLayout
from lvm_lightning.callbacks.progress import ProgressBar
from lvm_lightning.callbacks.run_checkpoint import RunCheckpoint
from lvm_lightning.callbacks.true_density import TrueLogDensity

__all__ = [
    "ActiveUnits",
    "AmortizationGap",
    "Convergence",
    "DensityPlot",
    "GradientSNR",
    "ImageGrids",
    "LatentScatter",
    "ProgressBar",
    "RunCheckpoint",
    "ScalarLayout",
    "TrueLogDensity",
    "active_units",
    "convergence_note",
    "gradient_snr",
]
