"""PSIS's k̂ against oracles: arviz-stats' implementation, and weights whose tail index is known in closed form."""

import json
import math

import numpy as np
import pytest
import torch
from arviz_stats.base import array_stats

from lvm_lightning.estimates import estimate_all
from lvm_lightning.evaluate import summarize_estimates
from lvm_lightning.inference import AIS
from lvm_lightning.models import LinearGaussian, MixtureModel
from lvm_lightning.objectives import ELBO, Estimate, ImportanceSampling, PriorSampling, evaluation_estimators, pareto_k
from lvm_lightning.objectives.psis import diagnostics, fits, tail_length

ABOVE = "pareto_k_above_0.7"


def arviz_k(log_weights: np.ndarray) -> np.ndarray:
    """arviz-stats' k̂ per column of [K, B] log-weights: its ``psislw`` smooths −ary (it takes log-likelihoods, as in PSIS-LOO)."""
    return array_stats.psislw(-log_weights.T, r_eff=1)[1]


def weight_sets(rng: np.random.Generator, num: int, batch: int) -> dict[str, np.ndarray]:
    """Log-weights [K, B] with light, log-normal and heavy (Student-t, Cauchy) tails, some zero weights, and a large offset."""
    with_zeros = rng.normal(size=(num, batch))
    with_zeros[rng.random((num, batch)) < 0.3] = -np.inf  # zero weights below the tail
    sparse = np.full((num, batch), -np.inf)
    sparse[: tail_length(num)] = rng.normal(size=(tail_length(num), batch))  # the threshold is a zero weight, the tail positive
    return {
        "log-normal σ 0.3": 0.3 * rng.normal(size=(num, batch)),
        "log-normal σ 1.5": 1.5 * rng.normal(size=(num, batch)),
        "log-normal σ 4": 4 * rng.normal(size=(num, batch)),
        "Student-t ν 3": np.log(np.abs(rng.standard_t(3, size=(num, batch)))),
        "Cauchy": np.log(np.abs(rng.standard_cauchy(size=(num, batch)))),
        "uniform": np.log(rng.random((num, batch))),
        "zero weights": with_zeros,
        "few nonzero weights": sparse,
        "offset 800": 800 + rng.normal(size=(num, batch)),
    }


@pytest.mark.parametrize("num", [25, 26, 100, 225, 226, 1000, 4000])
def test_k_hat_equals_arviz_stats(num):
    """Every weight set, on both sides of the tail rule's switch at K = 225 and at the smallest K with a tail (25)."""
    rng = np.random.default_rng(num)
    for name, log_weights in weight_sets(rng, num, 6).items():
        ours = pareto_k(torch.from_numpy(log_weights)).numpy()
        assert np.isfinite(ours).all(), name
        np.testing.assert_allclose(ours, arviz_k(log_weights), rtol=0, atol=1e-10, err_msg=name)


def test_the_tail_length_is_arviz_stats():
    assert [tail_length(k) for k in (24, 25, 100, 225, 226, 10_000)] == [4, 5, 20, 45, 45, 300]
    assert not fits(24) and fits(25)


def test_too_few_draws_give_nan_where_arviz_stats_refuses():
    log_weights = np.random.default_rng(0).normal(size=(24, 3))
    with pytest.raises(ValueError, match="at least 5"):
        arviz_k(log_weights)
    assert torch.isnan(pareto_k(torch.from_numpy(log_weights))).all()


def test_tails_without_spread():
    """Equal weights and few distinct weights: −∞ (bounded; arviz-stats refuses); a tail of zero weights: +∞; no positive weight: NaN."""
    num = 100  # M = 20
    columns = {
        "equal": torch.zeros(num),
        "four values": torch.tensor([3.0, 2, 1, 0]).repeat_interleave(torch.tensor([10, 30, 30, 30])),  # a discrete z: half the tail ties with the threshold
        "M equal, the rest zero": torch.where(torch.arange(num) < 20, 0.5, -math.inf),
        "three nonzero": torch.where(torch.arange(num) < 3, torch.randn(num), -math.inf),
        "all zero": torch.full((num,), -math.inf),
        "a NaN": torch.randn(num).index_fill(0, torch.tensor([7]), math.nan),
        "+∞": torch.randn(num).index_fill(0, torch.tensor([7]), math.inf),
    }
    k_hat = pareto_k(torch.stack(list(columns.values()), 1).double())
    expected = [-math.inf, -math.inf, -math.inf, math.inf, math.nan, math.nan, math.nan]
    torch.testing.assert_close(k_hat, torch.tensor(expected, dtype=torch.float64), equal_nan=True)
    with pytest.raises(ValueError, match="All tail values are the same"):
        arviz_k(columns["equal"].numpy()[:, None])


def test_a_batch_is_its_points_one_by_one_and_scale_free():
    log_weights = torch.randn(500, 7, dtype=torch.float64) * torch.linspace(0.2, 3, 7)
    log_weights[:, 5] = 0.0  # a constant point among fitted ones
    log_weights[::3, 6] = -math.inf
    k_hat = pareto_k(log_weights)
    one_by_one = torch.cat([pareto_k(log_weights[:, b : b + 1]) for b in range(7)])
    torch.testing.assert_close(k_hat, one_by_one, rtol=0, atol=1e-13)
    # Scaling every weight of a point by e^c (here far beyond float64's exponent range) leaves k̂ as it is.
    torch.testing.assert_close(pareto_k(log_weights + torch.tensor([1e3, -1e3, 0, 5, 800, 1e3, -700])), k_hat, rtol=0, atol=1e-9)
    # float32 log-weights: the same fit, in float64, of the float32 values.
    torch.testing.assert_close(pareto_k(log_weights.float()), pareto_k(log_weights.float().double()).float())


def test_gaussian_importance_weights_have_the_known_tail_index():
    """Target p = N(0, 1), proposal q = N(0, s²), s < 1: w(z) = p(z)/q(z) = s exp(a z²) with a = (1/s² − 1)/2 > 0.

    Under q, P(w > t) = P(|z| > √(log(t/s)/a)) = 2 Φ̄(√(log(t/s)/a) / s). As y → ∞, Φ̄(y) = φ(y)/y (1 + o(1)), so
    P(w > t) ∝ exp(−log(t/s)/(2 a s²)) (log t)^(−1/2) (1 + o(1)) = t^(−1/k) L(t), with L slowly varying and

        1/k = 1/(2 a s²) = 1/(1 − s²),  i.e. k = 1 − s².

    A regularly varying tail of index 1/k: its exceedances over a high threshold tend to a GPD of shape k (Pickands,
    1975), so k̂ → 1 − s² as K → ∞; L(t) = (log t)^(−1/2) thins the tail at finite t, biasing k̂ low at finite K.
    A proposal wider than the target (s > 1, a < 0) gives bounded weights, w ≤ s: k < 0.
    """
    num, batch = 100_000, 32
    for s in (0.6, 0.7, 0.8, 0.9):
        z = s * torch.randn(num, batch, dtype=torch.float64)
        log_weights = math.log(s) + z**2 * (1 / s**2 - 1) / 2
        assert pareto_k(log_weights).mean().item() == pytest.approx(1 - s**2, abs=0.06), s
    wide = 1.5 * torch.randn(10_000, batch, dtype=torch.float64)
    k_hat = pareto_k(math.log(1.5) - wide**2 * (1 - 1 / 1.5**2) / 2)
    assert (k_hat < 0.5).all() and k_hat.mean() < 0


def test_pareto_weights_have_the_known_tail_index():
    """w ~ Pareto(α) (log w ~ Exponential(α)): above any threshold u, w − u is exactly GPD with shape 1/α and scale u/α."""
    for alpha in (1.5, 2.5, 5.0):
        log_weights = torch.empty(10_000, 64, dtype=torch.float64).exponential_(alpha)
        assert pareto_k(log_weights).mean().item() == pytest.approx(1 / alpha, abs=0.05), alpha


def test_the_diagnostics_clip_k_hat_and_count_the_unreliable_points():
    k_hat = torch.tensor([-math.inf, -0.3, 0.2, 0.7, 0.71, 1.4, math.inf, math.nan])
    out = diagnostics(k_hat)
    torch.testing.assert_close(out["pareto_k"], torch.tensor([0, 0, 0.2, 0.7, 0.71, 1, 1, math.nan]), equal_nan=True)
    torch.testing.assert_close(out[ABOVE], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, math.nan]), equal_nan=True)


def test_sampled_estimators_report_k_hat_from_25_draws_on():
    """Prior and importance sampling, and AIS's final weights, carry k̂ where K allows a fit; the ELBO never (it is no log-mean-exp)."""
    model = LinearGaussian(data_dim=4, latent_dim=2, noise_std=0.5)
    x = torch.randn(5, 4)
    for num in (10, 24, 25, 200):
        for estimator in (PriorSampling(num), ImportanceSampling(num)):
            estimate = estimator.estimate(model, x)
            found = estimator.diagnostics(estimate)
            assert ({"pareto_k", ABOVE} <= set(found)) == (num >= 25), (estimator.name, num)
            if num >= 25:
                k_hat = pareto_k(estimate.log_weights)
                torch.testing.assert_close(found["pareto_k"], k_hat.clamp(0, 1))
                torch.testing.assert_close(found[ABOVE], (k_hat > 0.7).to(k_hat.dtype))
        assert "pareto_k" not in ELBO(num).diagnostics(ELBO(num).estimate(model, x))
    chains = torch.randn(40, 5)
    statistics = {"acceptance_rate": torch.full((5,), 0.6)}
    found = AIS(num_chains=40).diagnostics(Estimate(chains.logsumexp(0) - math.log(40), chains, statistics))
    assert {"pareto_k", ABOVE, "acceptance_rate", "ess_fraction"} <= set(found)
    torch.testing.assert_close(found["pareto_k"], pareto_k(chains).clamp(0, 1))


@pytest.mark.parametrize("latent", ["continuous", "categorical"])
def test_the_evaluation_summary_is_finite_json(latent):
    """``evaluate``'s summary: the mean k̂ and the fraction above 0.7 beside each sampled estimate, finite also where a
    categorical z leaves the tail without spread."""
    model = LinearGaussian(data_dim=3, latent_dim=2) if latent == "continuous" else MixtureModel(3, 4, decoder_hidden=[])
    x = torch.randn(30, 3)
    estimators = evaluation_estimators(model, 100)
    summary = summarize_estimates([estimate_all(model, x, estimators)], estimators)
    json.dumps(summary, allow_nan=False)
    for name in ("prior_sampling", "importance_sampling"):
        assert 0 <= summary[name]["pareto_k"] <= 1 and 0 <= summary[name][ABOVE] <= 1
    assert "pareto_k" not in summary["elbo"]
