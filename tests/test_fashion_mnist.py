"""Real data: a few hundred steps on Fashion-MNIST from Debian's dataset-fashion-mnist must bring the test NLL well below chance."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lvm_lightning.data import FashionMNISTData
from lvm_lightning.objectives import ImportanceSampling

from conftest import ROOT, module_from_config, run_tool

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
CONFIG = ROOT / "configs" / "fashion_mnist_vae.yaml"
STEPS, TEST_POINTS, K = 300, 1000, 100
# Measured: 543 nats (784 log 2) untrained, 311 after 100 steps, 285 after 300 (seed 0, CPU).
NLL_THRESHOLD = 300.0


needs_debian_data = pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason=f"{DEBIAN_FOLDER} absent: apt-get install dataset-fashion-mnist (.ci/run does)")


@needs_debian_data
def test_vae_on_fashion_mnist_learns(tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = module_from_config(CONFIG, data_dim=784)
    data = FashionMNISTData(root=str(DEBIAN_FOLDER), cache_dir=str(tmp_path / "cache"))
    trainer = pl.Trainer(max_steps=STEPS, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    assert data.splits["train"].shape == (50_000, 784) and data.splits["test"].shape == (10_000, 784)
    torch.manual_seed(0)
    with torch.no_grad():
        nll = -ImportanceSampling(K).estimate(module.lvm, data.splits["test"][:TEST_POINTS]).log_px.mean()
    assert nll < NLL_THRESHOLD, f"test NLL {float(nll):.1f} nats after {STEPS} steps (IS, K={K}, first {TEST_POINTS} test points)"


@needs_debian_data
def test_readme_command_trains_and_evaluates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a new user types it, cut to a few steps; the unpacked files go to the default cache, under XDG_CACHE_HOME.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = ROOT / "configs" / "fashion_mnist_iwae.yaml"
    quick = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--model.eval_num_samples", "2", "--trainer.enable_progress_bar", "false"]
    train = run_tool([str(ROOT / "train.py"), "fit", "--config", str(config), "--data.root", str(DEBIAN_FOLDER), *quick], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert list((tmp_path / "cache" / "lvm_lightning").glob("*/FashionMNIST/raw/train-images-idx3-ubyte"))
    checkpoint = tmp_path / "runs" / "fashion_mnist_iwae" / "version_0" / "checkpoints" / "last.ckpt"
    evaluate = run_tool(["-m", "lvm_lightning.evaluate", str(checkpoint), "--num_samples", "2", "--gap_points", "0"], cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "importance_sampling" in evaluate.stdout and "10000" in evaluate.stdout
