"""What the commands report: a mean over points with its standard error, and plain-text tables."""

import math
from typing import Any, Optional, Sequence

from torch import Tensor


def standard_error(variance: float, count: float) -> Optional[float]:
    """√(s² / N), the standard error of a mean of N values of sample variance s²; None (JSON null) for one value, where it is undefined."""
    return math.sqrt(max(variance, 0.0) / count) if count > 1 else None


def summarize(values: Tensor) -> dict[str, Any]:
    """{'mean', 'stderr', 'num_points'} of the per-point ``values`` [N]: their mean and its standard error (std / √N)."""
    n = values.numel()
    return {"mean": values.mean().item(), "stderr": standard_error(values.var().item() if n > 1 else 0.0, n), "num_points": n}


def summarize_moments(total: float, total_of_squares: float, count: float) -> tuple[float, Optional[float]]:
    """(mean, standard error) of N values from Σv, Σv² and N: additive, so that processes can sum their parts first."""
    mean = total / count
    variance = (total_of_squares / count - mean**2) * count / (count - 1) if count > 1 else 0.0
    return mean, standard_error(variance, count)


def table(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """The rows as aligned text, columns two spaces apart: the first ``left`` columns (names) flush left, the others (numbers) flush right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows)
