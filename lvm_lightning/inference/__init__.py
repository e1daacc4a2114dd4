"""Per-point (local) variational inference and the amortization and approximation gaps it measures."""
from lvm_lightning.inference.gaps import GapReport, gap_decomposition, log_marginal, summarize
from lvm_lightning.inference.local import LocalOptimizer, LocalResult

__all__ = ["GapReport", "LocalOptimizer", "LocalResult", "gap_decomposition", "log_marginal", "summarize"]
