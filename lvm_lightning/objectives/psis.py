"""The Pareto-smoothed importance sampling diagnostic k̂ (Vehtari, Simpson, Gelman, Yao and Gabry, JMLR 2024).

A generalized Pareto distribution (GPD) is fitted to the M largest of K importance weights; its shape k̂ says how
heavy their tail is: a tail of shape k has finite moments of order below 1/k (all of them for k ≤ 0). Above 0.7 an
importance-sampling estimate is unreliable, its error falling too slowly with K to be trusted; from 1 on the fitted
tail has no mean. The fit is Zhang and Stephens (2009)'s empirical-Bayes estimate with the paper's weakly informative
prior on k, to the M = ⌊min(K/5, 3√K)⌋ largest weights (independent draws: relative efficiency 1), as in the paper
and its reference implementations (arviz-stats, R's loo).
"""

import math

import torch
from torch import Tensor

MIN_TAIL = 5  # the fewest tail weights the fit takes, as the paper's reference implementations
THRESHOLD = 0.7  # k̂ above it: the estimate is unreliable
PRIOR_MEAN = 0.5  # the weakly informative prior on k: PRIOR_WEIGHT pseudo-observations at PRIOR_MEAN
PRIOR_WEIGHT = 10
GRID_BASE = 30  # Zhang and Stephens' grid of m = 30 + ⌊√M⌋ values of θ
QUARTILE_SCALE = 3  # θ's grid is spread in units of 1 / (3 × the tail's first quartile), as Zhang and Stephens'


def tail_length(num_samples: int) -> int:
    """M = ⌊min(K/5, 3√K)⌋, the number of largest weights the GPD is fitted to."""
    return min(num_samples // 5, math.isqrt(9 * num_samples))


def fits(num_samples: int) -> bool:
    """Whether K draws give a tail of at least MIN_TAIL weights (K >= 25)."""
    return tail_length(num_samples) >= MIN_TAIL


def pareto_k(log_weights: Tensor) -> Tensor:
    """k̂ per point [B] from log-weights [K, B]: the shape of a GPD fitted to the M largest w_k − u over the threshold u, the (M+1)-th largest w_k.

    NaN for every point when K < 25 (fewer than MIN_TAIL tail weights), and for a point whose weights are all zero
    or whose largest log-weight is NaN or +∞. A tail without spread has no GPD shape to fit (arviz-stats refuses it):
    k̂ = −∞ where its M weights are all equal, or its ⌊M/4 + ½⌋ smallest equal a positive threshold (the weights take
    few values, as for a discrete z or near-equal weights rounded alike: a bounded tail, a reliable estimate); +∞ where
    those equal a zero threshold (so few draws carry weight that the estimate rests on a handful).
    """
    num, batch = log_weights.shape
    tail = tail_length(num)
    dtype = log_weights.dtype if log_weights.dtype.is_floating_point else torch.get_default_dtype()
    if tail < MIN_TAIL:
        return torch.full((batch,), math.nan, dtype=dtype, device=log_weights.device)
    # Selecting the M + 1 largest is exact in any precision; the fit's arithmetic is float64 (on the CPU where the device has none).
    top = log_weights.detach().topk(tail + 1, dim=0).values.flip(0)  # ascending: the threshold, then the tail
    top = top.to(torch.device("cpu") if top.device.type == "mps" else top.device, torch.float64)
    threshold, largest = top[0], top[-1]
    log_tail = top[1:]
    # w − u in units of the largest weight, as u (e^{log w − log u} − 1): no digits lost where w is close to u.
    exceedances = torch.where(
        threshold > -math.inf, (threshold - largest).exp() * torch.expm1(log_tail - threshold), (log_tail - largest).exp()
    )  # [M, B], ascending
    quartile = exceedances[int(tail / 4 + 0.5) - 1]
    k_hat = gpd_shape(exceedances, quartile)
    tied = quartile == 0
    k_hat = torch.where(tied & (threshold == -math.inf), math.inf, k_hat)
    k_hat = torch.where((log_tail[0] == largest) | (tied & (threshold > -math.inf)), -math.inf, k_hat)
    k_hat = torch.where(largest.isfinite(), k_hat, math.nan)
    return k_hat.to(log_weights.device, dtype)


def gpd_shape(exceedances: Tensor, quartile: Tensor) -> Tensor:
    """Zhang and Stephens' k̂ = mean_i log(1 − θ̂ x_i), θ̂ the profile-likelihood-weighted mean of a grid of θ, shrunk to 0.5 by 10 pseudo-observations.

    ``exceedances`` x [M, B] ascending and positive at the top, ``quartile`` its ⌊M/4 + ½⌋-th value [B].
    """
    tail = exceedances.shape[0]
    grid = GRID_BASE + math.isqrt(tail)
    j = torch.arange(1, grid + 1, dtype=exceedances.dtype, device=exceedances.device)
    # θ_j = 1/x_max + (1 − √(m/(j − ½))) / (3 x_quartile), [m, B]
    thetas = 1 / exceedances[-1] + (1 - (grid / (j - 0.5)).sqrt())[:, None] / (QUARTILE_SCALE * quartile)
    # One grid value at a time: memory M × B however large the grid (the grid has m ≈ 30 + √M values).
    shapes = torch.stack([torch.log1p(-theta * exceedances).mean(0) for theta in thetas])  # k(θ_j) [m, B]
    log_likelihood = tail * ((-thetas / shapes).log() - shapes - 1)  # profile log-likelihood of θ_j, up to a constant
    weights = torch.softmax(log_likelihood, 0)
    # Grid values of negligible weight are dropped before averaging, as the paper's reference implementations do.
    weights = torch.where(weights >= 10 * torch.finfo(weights.dtype).eps, weights, 0)
    theta = (thetas * weights).sum(0) / weights.sum(0)
    k_hat = torch.log1p(-theta * exceedances).mean(0)
    return (tail * k_hat + PRIOR_WEIGHT * PRIOR_MEAN) / (tail + PRIOR_WEIGHT)


def diagnostics(k_hat: Tensor) -> dict[str, Tensor]:
    """Per point: ``pareto_k``, k̂ clipped to [0, 1], and ``pareto_k_above_0.7``, 1 where k̂ > 0.7 else 0 (NaN where k̂ is), whose mean is the unreliable points' fraction.

    Clipping keeps the mean over points finite where a tail without spread gives k̂ = ±∞, and loses nothing the
    paper acts on: its minimum sample size for a reliable estimate, 10^(1/(1 − k̂)), counts every k̂ ≤ 0 as 0 (as
    arviz-stats computes it) and is infinite from k̂ = 1 on.
    """
    above = torch.where(k_hat.isnan(), math.nan, (k_hat > THRESHOLD).to(k_hat.dtype))
    return {"pareto_k": k_hat.clamp(0, 1), f"pareto_k_above_{THRESHOLD}": above}
