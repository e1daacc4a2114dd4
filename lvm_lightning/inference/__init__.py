"""Per-point (local) variational inference and the amortization and approximation gaps it measures."""

from lvm_lightning.inference.gaps import REFINE_STEPS, GapReport, format_gaps, gap_decomposition, gap_summary, log_marginal, summarize_sums, tractable
from lvm_lightning.inference.local import LocalOptimizer, LocalResult

__all__ = [
    "REFINE_STEPS",
    "GapReport",
    "LocalOptimizer",
    "LocalResult",
    "format_gaps",
    "gap_decomposition",
    "gap_summary",
    "log_marginal",
    "summarize_sums",
    "tractable",
]
