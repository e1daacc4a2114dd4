"""lvm-study estimators: prior sampling against importance sampling on 8 well-separated clusters, against oracles from the true parameters."""

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from lvm_lightning import study as lvm_study
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.models import VAE
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.study import main, run_estimators, study, true_model

from conftest import ROOT, run_tool, undocumented_options

N, RADIUS, STD, POINTS, REPEATS = 8, 4.0, 0.4, 200, 10  # neighbouring centres 2·4·sin(π/8) = 3.06 apart: 7.7 σ


def ring_centres() -> torch.Tensor:
    """μ_c = r (cos 2πc/N, sin 2πc/N) [N, 2], written out here, not read from the data module."""
    angles = torch.arange(N) * 2 * math.pi / N
    return RADIUS * torch.stack([angles.cos(), angles.sin()], 1)


def oracle_components(x: torch.Tensor) -> torch.Tensor:
    """log N(x; μ_c, σ²I) [B, C]."""
    return Normal(ring_centres(), STD).log_prob(x[:, None, :]).sum(-1)


def oracle_mixture() -> MixtureSameFamily:
    """torch's own mixture Σ_c (1/N) N(μ_c, σ²I) of the ring."""
    return MixtureSameFamily(Categorical(logits=torch.zeros(N)), Independent(Normal(ring_centres(), torch.full((N, 2), STD)), 1))


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    data = GaussianMixtureData(num_clusters=N, radius=RADIUS, cluster_std=STD, num_test=POINTS)
    data.setup("test")
    return data.splits["test"]


@pytest.fixture(scope="module")
def report(points) -> dict:
    data = GaussianMixtureData(num_clusters=N, radius=RADIUS, cluster_std=STD, num_test=POINTS)
    return run_estimators(data=data, num_samples=[1, 2, 5, 1000], repeats=REPEATS)


def row(report: dict, k: int) -> dict:
    return next(r for r in report["rows"] if r["num_samples"] == k)


def test_the_exact_log_px_is_torchs_mixture_density(report, points):
    assert report["exact_log_px"] == pytest.approx(oracle_mixture().log_prob(points).mean().item(), abs=1e-4)


def test_prior_sampling_at_one_sample_has_the_bias_of_a_uniformly_chosen_cluster(report, points):
    # K = 1: log p̂(x) = log p(x|z), z uniform over the clusters, so E[bias] = mean_c log p(x|c) − log p(x) per point,
    # with Monte Carlo variance Var_c log p(x|c) / (R·B²) summed over points: compared within 4 standard errors.
    components = oracle_components(points)
    expected = (components.mean(1) - oracle_mixture().log_prob(points)).mean().item()
    stderr = math.sqrt(components.var(1, unbiased=False).sum().item() / (REPEATS * POINTS**2))
    assert row(report, 1)["prior_sampling"]["bias"] == pytest.approx(expected, abs=4 * stderr)
    assert expected < -50  # most draws land in a cluster far from the point


def test_prior_sampling_below_n_samples_is_far_below_log_px_and_its_useful_fraction_is_one_in_n(report):
    for k in (1, 2, 5):  # K < N: most points get no sample of their own cluster
        assert row(report, k)["prior_sampling"]["bias"] < -1.0
    # At K = 1000 a point's M ~ Binomial(K, 1/N) own-cluster samples carry weight p(x|c) and the rest ~e^-29 of it: ESS = M, ESS/K → 1/N.
    assert row(report, 1000)["useful_fraction"] == pytest.approx(1 / N, abs=0.01)
    # ESS >= 1 for any weights: at K = 1 the fraction is 1 whatever the sample, which is why 1/N is a large-K statement.
    assert row(report, 1)["useful_fraction"] == pytest.approx(1.0)
    assert abs(row(report, 1000)["prior_sampling"]["bias"]) < 0.05


def test_importance_sampling_from_the_exact_posterior_is_exact(report):
    # q = p(z|x) makes every weight p(x, z)/p(z|x) = p(x): no bias, no spread, all samples useful, at every K.
    for r in report["rows"]:
        assert abs(r["importance_sampling"]["bias"]) < 1e-4 and r["importance_sampling"]["spread"] < 1e-4
        assert r["importance_sampling"]["ess_fraction"] == pytest.approx(1.0, abs=1e-4)


class BlurredPosterior(LatentVariableModel):
    """The true mixture with q(z|x) = (1 − ε) p(z|x) + ε/N, p(z|x) from the oracle: a good but imperfect encoder, as training leaves one."""

    def __init__(self, model: LatentVariableModel, epsilon: float) -> None:
        super().__init__(model.prior, model.decoder, model.encoder)
        self.epsilon = epsilon

    def posterior(self, x: torch.Tensor) -> Distribution:
        exact = oracle_components(x).softmax(1)
        return Categorical(probs=(1 - self.epsilon) * exact + self.epsilon / N)


def test_importance_sampling_from_an_imperfect_q_is_nearly_unbiased(points):
    epsilon = 0.2
    model = BlurredPosterior(true_model(oracle_mixture()), epsilon)
    result = study(model, points, [10, 100], REPEATS, seed=0)
    # The delta method: E[log mean_k w_k/p(x)] ≈ −Var_q(w/p(x)) / (2K), Var_q(w/p(x)) = Σ_z p(z|x)²/q(z|x) − 1, ≈ 0.21 here.
    exact = oracle_components(points).softmax(1)
    variance = ((exact**2 / ((1 - epsilon) * exact + epsilon / N)).sum(1) - 1).mean().item()
    for r in result["rows"]:
        k, bias = r["num_samples"], r["importance_sampling"]["bias"]
        assert bias == pytest.approx(-variance / (2 * k), abs=0.005)
        assert abs(bias) < 0.02  # against the prior's < −1 nat at K < N and ~−8 nats at K = 10
        # ESS/K → (E_q w)² / E_q w² = 1 / (1 + Var_q(w/p(x))) as K grows.
        assert r["importance_sampling"]["ess_fraction"] == pytest.approx(1 / (1 + variance), abs=0.02)


def test_the_command_writes_the_table_figure_and_tensorboard_reproducibly(tmp_path, capsys):
    args = ["estimators", "--data.num_test", "50", "--num_samples", "1", "10", "--repeats", "2", "--seed", "3"]
    main([*args, "--output", str(tmp_path / "a.json"), "--figure", str(tmp_path / "a.png"), "--log_dir", str(tmp_path / "tb")])
    main([*args, "--output", str(tmp_path / "b.json")])
    first, again = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert first == again  # seeded: the same numbers twice
    assert [r["num_samples"] for r in first["rows"]] == [1, 10]
    assert set(first["rows"][0]) == {"num_samples", "prior_sampling", "importance_sampling", "useful_fraction"}
    assert set(first["rows"][0]["prior_sampling"]) == {"bias", "spread", "ess_fraction"}
    assert (first["num_clusters"], first["num_points"], first["repeats"]) == (8, 50, 2)
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert accumulator.Tags()["images"] == ["study/estimators"]
    assert "useful (ESS/K)" in capsys.readouterr().out


def test_a_trained_checkpoint_is_studied_with_its_encoder(tmp_path):
    fast = ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--data.num_train", "1000", "--data.num_val", "200"]
    trained = run_tool([str(ROOT / "train.py"), "fit", *fast, "--data.num_test", "100", "--amortization_gap.every_n_epochs", "0"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = tmp_path / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    result = run_estimators(checkpoint=str(checkpoint), num_samples=[1, 100], repeats=2)
    assert (result["proposal"], result["num_clusters"], result["num_points"]) == ("q_φ(z|x)", 8, 100)
    # Two epochs leave the encoder rough (about −15 nats at K = 1), yet 100 samples of it are within 0.1 nat (measured 0.0006).
    assert abs(row(result, 100)["importance_sampling"]["bias"]) < 0.1
    assert row(result, 1)["prior_sampling"]["bias"] < -1.0
    exact = run_estimators(checkpoint=str(checkpoint), proposal="exact_posterior", num_samples=[1], repeats=2)
    assert exact["proposal"] == "p(z|x)" and abs(row(exact, 1)["importance_sampling"]["bias"]) < 1e-4


def test_a_model_without_an_exact_log_px_is_one_line(monkeypatch, capsys):
    data = GaussianMixtureData(num_test=10)
    data.setup("test")
    monkeypatch.setattr(lvm_study, "load_checkpoint", lambda path, trust: (VAE(data_dim=2), data))  # a checkpoint of configs/mixture_vae.yaml
    with pytest.raises(SystemExit):
        main(["estimators", "--checkpoint", "vae.ckpt", "--num_samples", "1"])
    assert capsys.readouterr().err.startswith("error: the study compares with the exact log p(x): VAE has none")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num_samples", "0"], "--num_samples must be one or more K >= 1"),
        (["--repeats", "1"], "--repeats must be >= 2"),
        (["--num_points", "5000"], "--num_points must be between 1 and the test split's 2000 points"),
        (["--proposal", "encoder"], "the true model has no trained encoder"),
        (["--checkpoint", "missing.ckpt"], "checkpoint 'missing.ckpt' not found"),
        (["--data.num_clusters", "0"], "num_clusters, dim and cluster_std must be positive"),
        (["--output", "."], "--output . is a folder"),
        (["--figure", "no/such/folder/study.png"], "--figure no/such/folder/study.png: its folder does not exist"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["estimators", "--num_samples", "1", *args])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error, error


def test_python_m_runs_the_command_in_a_fresh_process(tmp_path):
    result = run_tool(["-m", "lvm_lightning.study", "estimators", "--repeats", "1"], tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["error: --repeats must be >= 2 to measure a spread over repeats, got 1"]


def test_every_lvm_study_option_has_help():
    assert undocumented_options(lvm_study.parser()) == []
