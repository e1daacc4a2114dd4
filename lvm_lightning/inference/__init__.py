"""Inference that never trains: annealed importance sampling, per-point (local) variational inference and the amortization and approximation gaps they measure."""

from lvm_lightning.inference.ais import AIS, annealing_schedule, simulate
from lvm_lightning.inference.families import InFamily, family_name, in_family
from lvm_lightning.inference.gaps import (
    REFINE_STEPS,
    GapReport,
    format_gap_columns,
    format_gaps,
    gap_decomposition,
    gap_summary,
    log_marginal,
    summarize_sums,
    tractable,
    unconverged_warning,
)
from lvm_lightning.inference.local import LocalOptimizer, LocalResult

__all__ = [
    "AIS",
    "REFINE_STEPS",
    "GapReport",
    "InFamily",
    "LocalOptimizer",
    "LocalResult",
    "annealing_schedule",
    "format_gap_columns",
    "format_gaps",
    "gap_decomposition",
    "gap_summary",
    "family_name",
    "in_family",
    "log_marginal",
    "simulate",
    "summarize_sums",
    "tractable",
    "unconverged_warning",
]
