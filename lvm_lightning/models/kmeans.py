"""The data-dependent start of a Gaussian mixture: k-means (k-means++ seeding, Lloyd's iterations) in torch, vectorized over points.

Gradient ascent on log p(x) from random component means stalls in local optima (two components sharing a
cluster, one stranded between clusters); started from k-means clusters, as EM software starts, it reaches the optimum. Draws come from
torch's global stream: the caller seeds or forks it.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lvm_lightning.errors import UsageError
from lvm_lightning.models.families import DiagonalGaussian

LLOYD_ITERATIONS = 100  # an upper bound: they stop when no point changes cluster
MAX_ROWS = 100_000  # k-means on at most this many training rows (drawn at random): more change the start little and cost more


def squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    """‖x_n − c_k‖² [N, K] by one matrix product, clamped at 0 against rounding."""
    return (x.square().sum(1, keepdim=True) - 2 * x @ centres.T + centres.square().sum(1)).clamp(min=0)


def kmeans_plus_plus(x: Tensor, k: int) -> Tensor:
    """k centres [k, D] by greedy k-means++ (Arthur & Vassilvitskii, 2007): each next centre the best of 2 + ⌊ln k⌋ rows drawn ∝ D(x)²,
    the squared distance to the nearest centre so far (best: the lowest Σ D(x)² after adding it, as scikit-learn's KMeans)."""
    trials = 2 + int(math.log(k))
    centres = x[torch.randint(len(x), (1,), device=x.device)]
    nearest = squared_distances(x, centres)[:, 0]  # [N]
    for _ in range(k - 1):  # a loop over centres, not over points
        # All points on the centres already (duplicate rows): draw uniformly instead of from zero weights.
        rows = torch.multinomial(nearest + (nearest.sum() == 0), trials, replacement=True)
        candidates = torch.minimum(nearest, squared_distances(x, x[rows]).T)  # [trials, N]
        best = candidates.sum(1).argmin()
        centres, nearest = torch.cat([centres, x[rows[best]][None]]), candidates[best]
    return centres


def lloyd(x: Tensor, centres: Tensor) -> Tensor:
    """The cluster index [N] of each row after Lloyd's iterations from ``centres`` [k, D], run until no row changes cluster."""
    assignment = squared_distances(x, centres).argmin(1)
    for _ in range(LLOYD_ITERATIONS):
        counts = torch.bincount(assignment, minlength=len(centres))[:, None]
        sums = torch.zeros_like(centres).index_add_(0, assignment, x)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)  # an empty cluster keeps its centre
        update = squared_distances(x, centres).argmin(1)
        if torch.equal(update, assignment):
            break
        assignment = update
    return assignment


@dataclass
class DiagonalMixture:
    """Σ_k w_k N(μ_k, diag σ_k²): log weights [K], means [K, D], variances [K, D]."""

    log_weights: Tensor
    means: Tensor
    variances: Tensor

    @classmethod
    def of_clusters(cls, x: Tensor, assignment: Tensor, k: int) -> "DiagonalMixture":
        """w_k, μ_k and σ_k² the fraction, mean and per-column variance of cluster k's rows (the data's variance for a cluster of fewer than two rows),
        floored at 1e-6 of the data's mean variance (scikit-learn's reg_covar, relative to the data's scale)."""
        counts = torch.bincount(assignment, minlength=k)[:, None].to(x)
        means = torch.zeros(k, x.shape[1]).to(x).index_add_(0, assignment, x) / counts.clamp(min=1)
        spread = torch.zeros_like(means).index_add_(0, assignment, (x - means[assignment]).square()) / counts.clamp(min=1)
        overall = x.var(0, correction=0)
        variances = torch.where(counts > 1, spread, overall).clamp(min=1e-6 * float(overall.mean()) + torch.finfo(x.dtype).tiny)
        return cls((counts[:, 0].clamp(min=1) / len(x)).log(), means, variances)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) [N], with the quadratic form as matrix products ([N, K], no [N, K, D] tensor) about the data's mean, where rounding is least."""
        centre = x.mean(0)
        x, means, precision = x - centre, self.means - centre, 1 / self.variances
        quadratic = x.square() @ precision.T - 2 * x @ (means * precision).T + (means.square() * precision).sum(1)
        log_normal = -0.5 * (quadratic + self.variances.log().sum(1) + x.shape[1] * math.log(2 * math.pi))
        return torch.logsumexp(self.log_weights.log_softmax(0) + log_normal, 1)


class KMeansStart:
    """The start of a mixture of diagonal Gaussians from k-means, as EM software starts: means from the clusters of the
    training rows, variances and weights from their spread and sizes, the best of ``runs`` k-means runs by mean log p(x).

    It applies to any model whose prior is categorical with logits, p(z) = softmax(logits), and whose decoder is a
    ``Conditional`` of a table (an ``nn.Embedding``, one parameter row per component) and a ``DiagonalGaussian``:
    ``MixtureModel`` and a mixture built from parts alike (``LatentVariableModel`` takes it by itself).
    """

    def __init__(self, runs: int = 5) -> None:
        if runs < 1:
            raise UsageError(f"the k-means start needs runs >= 1, got {runs}")
        self.runs = runs

    @staticmethod
    def table(model: Any) -> Optional[nn.Embedding]:
        """The decoder's table of component parameters [C, P] where the model is such a mixture; None otherwise."""
        net, family = getattr(model.decoder, "net", None), getattr(model.decoder, "family", None)
        layers = list(net) if isinstance(net, nn.Sequential) else [net]
        logits = getattr(model.prior, "logits", None)
        if len(layers) != 1 or not isinstance(layers[0], nn.Embedding) or not isinstance(family, DiagonalGaussian):
            return None
        if not isinstance(logits, Tensor) or logits.dim() != 1 or len(logits) != layers[0].num_embeddings:
            return None
        return layers[0]

    @classmethod
    def applies(cls, model: Any) -> bool:
        """Whether ``model`` is a mixture of diagonal Gaussians this start can set."""
        return cls.table(model) is not None

    @torch.no_grad()
    def __call__(self, model: Any, x: Tensor) -> None:
        """Sets ``model``'s components (and learned weights) from k-means clusters of the rows ``x`` [N, D], in the units its decoder writes."""
        table, family, logits = self.table(model).weight, model.decoder.family, model.prior.logits
        if len(x) > MAX_ROWS:
            x = x[torch.randperm(len(x), device=x.device)[:MAX_ROWS]]
        k = len(table)
        runs = [constrained(DiagonalMixture.of_clusters(x, lloyd(x, kmeans_plus_plus(x, k)), k), family, logits) for _ in range(self.runs)]
        best = max(runs, key=lambda mixture: float(mixture.log_prob(x).mean()))
        table.copy_(family.component_params(best.means, best.variances))
        if isinstance(logits, nn.Parameter):
            logits.copy_(best.log_weights)


def constrained(mixture: DiagonalMixture, family: DiagonalGaussian, logits: Tensor) -> DiagonalMixture:
    """``mixture`` within the model's family: uniform weights unless the logits are learned, one pooled variance for a shared σ, σ² for a fixed σ."""
    log_weights, variances = mixture.log_weights, family.component_variances(mixture.variances, mixture.log_weights.exp())
    if not isinstance(logits, nn.Parameter):
        log_weights = torch.zeros_like(log_weights)
    return DiagonalMixture(log_weights, mixture.means, variances)
