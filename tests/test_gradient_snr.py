"""The gradient SNR diagnostic: Rainforth et al.'s O(1/√K) fall under reparameterization, DReG's rise, and a callback that leaves training alone."""

import csv
import math
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from lvm_lightning.callbacks import GradientSNR, gradient_snr
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.errors import UsageError
from lvm_lightning.models import VAE
from lvm_lightning.models.examples import rainforth_model
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import DReG, ImportanceSampling, Reparameterized

from conftest import quiet_trainer


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_snr_falls_with_k_under_reparam_and_rises_under_dreg(seed):
    """1000 gradient draws at K = 1 and 100: the reparameterized encoder SNR at least halves (theory: ÷10), DReG's at least doubles
    (theory: ×10) and ends 10 times the reparameterized one."""
    torch.set_default_dtype(torch.float64)
    try:
        model, x = rainforth_model(seed)
        snr = {}
        for name, gradient in (("reparam", Reparameterized()), ("dreg", DReG())):
            for k in (1, 100):
                torch.manual_seed(seed)
                snr[name, k] = float(gradient_snr(ImportanceSampling(k, gradient=gradient), model, x, 1000)["encoder"])
    finally:
        torch.set_default_dtype(torch.float32)
    assert snr["reparam", 100] < 0.5 * snr["reparam", 1], snr
    assert snr["dreg", 100] > 2 * snr["dreg", 1], snr
    assert snr["dreg", 100] > 10 * snr["reparam", 100], snr


def test_the_decoder_snr_rises_with_k():
    """The other half of Rainforth et al.'s result: the decoder's SNR grows with K (as O(√K))."""
    model, x = rainforth_model(0)
    torch.manual_seed(0)
    low = float(gradient_snr(ImportanceSampling(1), model, x, 300)["decoder"])
    high = float(gradient_snr(ImportanceSampling(100), model, x, 300)["decoder"])
    assert high > 3 * low


def fit(callbacks: list, folder) -> tuple[dict, list[dict]]:
    """Three epochs of a small VAE trained with DReG on the mixture data: (final weights, the rows of its CSV log)."""
    torch.manual_seed(0)
    data = GaussianMixtureData(num_train=256, num_val=64, num_test=64, batch_size=64)
    module = LVMModule(VAE(data_dim=2, latent_dim=2, encoder_hidden=[16], decoder_hidden=[16]), ImportanceSampling(5, gradient=DReG()))
    logger = CSVLogger(folder)
    trainer = quiet_trainer(max_epochs=3, logger=logger, enable_checkpointing=False, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    with open(Path(logger.log_dir) / "metrics.csv") as rows:
        return {name: value.clone() for name, value in module.state_dict().items()}, list(csv.DictReader(rows))


def test_the_callback_logs_snr_and_leaves_training_untouched(tmp_path):
    """With the callback every epoch the final weights are bit-identical to a run without it; snr/encoder and snr/decoder are logged each epoch."""
    plain, _ = fit([], tmp_path / "plain")
    measured, rows = fit([GradientSNR(every_n_epochs=1, num_estimates=10, batch_size=32)], tmp_path / "snr")
    for name in ("snr/encoder", "snr/decoder"):
        values = [float(row[name]) for row in rows if row.get(name)]
        assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values), (name, values)
    for name, value in plain.items():
        assert torch.equal(value, measured[name]), name


def test_bad_settings_are_one_line_errors():
    with pytest.raises(UsageError, match="num_estimates >= 2"):
        GradientSNR(num_estimates=1)
