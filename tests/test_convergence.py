"""Reaching the known optimum and saying when it was not reached: pPCA against its closed-form MLE, the convergence signal, the plateau schedule."""

import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from sklearn.decomposition import PCA

from lvm_lightning.callbacks import Convergence, convergence_note
from lvm_lightning.callbacks.convergence import verdict
from lvm_lightning.cli import main
from lvm_lightning.data import GaussianMixtureData, LinearGaussianData
from lvm_lightning.errors import UsageError
from lvm_lightning.models import MixtureModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact
from lvm_lightning.schedules import Adam, Plateau

from conftest import ROOT, gap_callback, quiet_trainer, scalars

pytestmark = pytest.mark.usefixtures("one_thread")


def ppca_mle_log_px(x: torch.Tensor, latent_dim: int) -> float:
    """Mean log N(x; x̄, U_d (Λ_d − σ²I) U_dᵀ + σ²I) with σ² the mean of the discarded eigenvalues of the sample covariance: the MLE (Tipping & Bishop, 1999)."""
    x = x.double()
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(x.T, correction=0))  # ascending
    noise = eigenvalues[:-latent_dim].mean()
    top, vectors = eigenvalues[-latent_dim:], eigenvectors[:, -latent_dim:]
    covariance = vectors @ torch.diag(top - noise) @ vectors.T + noise * torch.eye(x.shape[1], dtype=x.dtype)
    return float(torch.distributions.MultivariateNormal(x.mean(0), covariance).log_prob(x).mean())


def test_shipped_linear_gaussian_config_reaches_the_ppca_mle(tmp_path, monkeypatch, capsys):
    """The config as shipped (lr, schedule, early stopping): within 0.02 nats per point of the closed-form MLE on its training data, and said to have converged."""
    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "--config", str(ROOT / "configs" / "linear_gaussian.yaml"), "--trainer.enable_progress_bar", "false", "--amortization_gap.every_n_epochs", "0"]
    )
    path = tmp_path / "runs" / "linear_gaussian" / "version_0" / "checkpoints" / "last.ckpt"
    module = LVMModule.load_from_checkpoint(path)
    data = LinearGaussianData(dim=10, latent_dim=3, noise_std=0.5)
    x = data.load_splits()["train"]
    with torch.no_grad():
        model = float(module.lvm.marginal().log_prob(x).mean())
    mle = ppca_mle_log_px(x, 3)
    assert abs(mle - PCA(3).fit(x.double().numpy()).score(x.double().numpy())) < 1e-3  # the closed form is scikit-learn's (which divides by N − 1)
    assert mle - 0.02 < model <= mle + 1e-4, (model, mle)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["epoch"] + 1 < 60  # early stopping ended it
    assert convergence_note(checkpoint) is None
    assert "not converged" not in capsys.readouterr().err


def test_verdict():
    rising = [-10.0 + i * 0.1 for i in range(8)]
    assert not verdict(rising, 5, 0.01).converged and math.isclose(verdict(rising, 5, 0.01).improvement, 0.5)
    flat = [-10.0, -9.0, -8.995, -8.999, -8.998, -8.996, -8.994]
    assert verdict(flat, 5, 0.01).converged and math.isclose(verdict(flat, 5, 0.01).improvement, 0.006, abs_tol=1e-9)
    few = verdict([-1.0, -1.0], 5, 0.01)
    assert not few.converged and few.improvement is None and "too few" in few.note()
    assert "still improved by 0.5 nats per point over the last 5 validations" in verdict(rising, 5, 0.01).note()
    with pytest.raises(UsageError):
        Convergence(window=0)


def fit(tmp_path, epochs: int, callbacks: list, name: str = "run", **kwargs) -> tuple[pl.Trainer, LVMModule]:
    """A 6-component mixture from a random start (so that it has something to learn) on small mixture data."""
    pl.seed_everything(0)
    data = GaussianMixtureData(num_train=512, num_val=256, num_test=64, batch_size=64)
    module = LVMModule(MixtureModel(2, 6, encoder_hidden=(16,), init="random"), Exact(), **kwargs)
    trainer = quiet_trainer(max_epochs=epochs, logger=TensorBoardLogger(str(tmp_path), name=name), callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return trainer, module


def test_a_run_stopped_early_is_not_converged_and_says_so(tmp_path, capsys):
    convergence = Convergence(window=3)
    trainer, _ = fit(tmp_path, 5, [convergence])
    result = convergence.verdict()
    assert result.validations == 5 and not result.converged and result.improvement > 0.01
    err = capsys.readouterr().err
    assert err.count("warning: training had not converged: validation log p(x) still improved by") == 1
    logged = scalars(Path(trainer.logger.log_dir))
    assert logged["val/converged"] == [0.0] * 5 and len(logged["val/improvement"]) == 2


def test_early_stopping_ends_a_converged_run_and_the_state_survives_the_checkpoint(tmp_path, capsys):
    convergence = Convergence(window=3, tolerance=0.01)
    stopping = EarlyStopping(monitor="val/log_px", mode="max", patience=3, min_delta=0.01)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer, _ = fit(tmp_path, 200, [convergence, stopping, checkpoint], optimizer=partial(Adam, lr=0.05))
    assert trainer.current_epoch < 200 and convergence.verdict().converged
    assert "not converged" not in capsys.readouterr().err
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert convergence_note(saved) is None
    restored = Convergence(window=3)
    restored.load_state_dict(saved["callbacks"]["Convergence"])
    assert restored.values == convergence.values
    # A note for the same history judged over 3 validations, had training stopped while still improving:
    assert "training had not converged" in convergence_note(
        {"callbacks": {"Convergence": {**saved["callbacks"]["Convergence"], "values": [-9.0, -8.0, -7.0, -6.0]}}}
    )
    assert convergence_note({}) is None  # a checkpoint that records nothing: unknown


def test_a_resumed_run_continues_the_history(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    fit(tmp_path, 2, [Convergence(), checkpoint])
    resumed = Convergence()
    pl.seed_everything(0)
    data = GaussianMixtureData(num_train=512, num_val=256, num_test=64, batch_size=64)
    module = LVMModule(MixtureModel(2, 6, encoder_hidden=(16,), init="random"), Exact())
    trainer = pl.Trainer(max_epochs=3, logger=False, callbacks=[resumed], enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(module, datamodule=data, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert len(resumed.values) == 3


def test_the_gap_callback_says_when_it_measures_an_unconverged_model(tmp_path, capsys):
    trainer, _ = fit(tmp_path, 2, [Convergence(), gap_callback()])
    assert capsys.readouterr().err.count("amortization gap at epoch 1 is measured on a model that has not converged") == 1  # once a run; epochs count from 1
    assert scalars(Path(trainer.logger.log_dir))["gap/model_converged"] == [0.0, 0.0]


def test_plateau_schedule_halves_the_lr_when_validation_stalls(tmp_path):
    # lr 1e-6: validation log p(x) cannot rise by 0.001; after the first validation and 2 more without a rise, the next halves the lr.
    trainer, _ = fit(tmp_path, 4, [], optimizer=partial(Adam, lr=1e-6), lr_scheduler=Plateau)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5e-6)


def test_evaluate_says_when_the_checkpoint_had_not_converged(tmp_path, monkeypatch, capsys):
    """Two epochs of the default run: lvm-evaluate's first line says the model had not converged, and its JSON keeps the note."""
    import json

    from test_cli import FAST, QUIET

    from lvm_lightning import evaluate

    monkeypatch.chdir(tmp_path)
    main(["fit", "--trainer.max_epochs", "2", *FAST, *QUIET])
    capsys.readouterr()
    evaluate.main(["runs/default/version_0/checkpoints/last.ckpt", "--num_samples", "10", "--gap_points", "0", "--output", "r.json"])
    err = capsys.readouterr().err
    assert err.count("note: training had not converged: only 2 validations, too few") == 1
    assert json.loads((tmp_path / "r.json").read_text())["convergence_note"].startswith("training had not converged")
