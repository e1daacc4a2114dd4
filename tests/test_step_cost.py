"""What a training step skips: the per-batch hooks nobody overrides, and torch's CUDA graph check where no parameter is on a GPU."""

from typing import Any

import pytorch_lightning as pl
import torch

from lvm_lightning.callbacks.batch_hooks import BATCH_HOOKS
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.models import MixtureModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact
from lvm_lightning.schedules import Adam

from conftest import quiet_trainer


class CountsBatchEnds(pl.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.calls += 1


class CountsBatchEndsBySubclass(CountsBatchEnds):
    """Inherits its hook from a user's class, not from pl.Callback: it must still be called."""


def test_unused_batch_hooks_are_skipped_and_used_ones_still_called(tmp_path):
    counting, inherited, silent = CountsBatchEnds(), CountsBatchEndsBySubclass(), pl.Callback()
    module = LVMModule(MixtureModel(2, 3, encoder_hidden=(8,), init="random"), Exact())
    trainer = quiet_trainer(max_steps=7, limit_val_batches=0, callbacks=[counting, inherited, silent], logger=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=GaussianMixtureData(num_train=64, num_val=32, num_test=32, batch_size=8))
    assert counting.calls == inherited.calls == 7 and trainer.global_step == 7
    assert all(getattr(silent, hook) is None for hook in BATCH_HOOKS)
    assert callable(counting.on_train_batch_end) and counting.on_train_batch_start is None
    assert module.on_train_batch_start is None and module.on_before_backward is None
    assert callable(module.on_validation_batch_start)  # Lightning reads its signature
    assert callable(module.training_step) and callable(module.on_validation_epoch_end)  # overridden: kept


def test_adam_on_the_cpu_never_asks_for_cuda_and_updates_as_torchs(monkeypatch):
    torch.manual_seed(0)
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]

    def three_steps(optimizer: torch.optim.Optimizer, params: list) -> None:
        for _ in range(3):
            optimizer.zero_grad()
            (params[0].sin().sum() * params[1].cos().sum()).backward()
            optimizer.step()

    def no_cuda(*args: Any) -> int:
        raise AssertionError("a CPU step asked for CUDA devices")

    three_steps(torch.optim.Adam(copies, lr=0.1), copies)
    monkeypatch.setattr(torch.cuda, "device_count", no_cuda)
    monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
    three_steps(Adam(weights, lr=0.1), weights)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights, copies))
