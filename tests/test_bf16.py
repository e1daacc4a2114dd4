"""bf16 networks: the nets' products in bfloat16, every density, log-weight and sum in float32, close to float32 on the same draws."""

import logging

import numpy as np
import pytest
import torch

from lvm_lightning import LVMModule, precision
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.errors import UsageError
from lvm_lightning.models import VAE
from lvm_lightning.objectives import ImportanceSampling
from lvm_lightning.precision import native_bf16, resolve_bf16

from conftest import quiet_trainer


def test_bf16_networks_keep_densities_in_float32_and_stay_within_a_twentieth_of_a_nat_of_float32():
    torch.manual_seed(0)
    model = VAE(784, 20, (200, 200), (200, 200), "tanh", "bernoulli")
    x = torch.bernoulli(torch.full((64, 784), 0.3))
    estimates = {}
    for bf16 in (False, True):
        model.networks_in_bf16(bf16)
        q = model.posterior(x)
        assert q.mean.dtype == torch.float32 and model.likelihood(q.sample()).base_dist.logits.dtype == torch.float32
        torch.manual_seed(1)
        with torch.no_grad():
            estimates[bf16] = ImportanceSampling(100).estimate(model, x).log_px
    assert estimates[True].dtype == torch.float32
    difference = (estimates[True] - estimates[False]).abs()
    assert 0 < float(difference.max()) < 0.05  # rounded, and by little: 784 pixels' logits in bf16 summed in float32


def test_bf16_networks_train_float32_parameters():
    torch.manual_seed(0)
    model = VAE(8, 2, (16,), (16,))
    model.networks_in_bf16()
    loss = -ImportanceSampling(5).objective(model, torch.randn(32, 8)).surrogate.mean()
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize(
    ("device", "features", "capability", "native"),
    [
        ("cpu", {"avx512_bf16": True, "amx_bf16": False}, None, True),
        ("cpu", {"avx512_bf16": False, "amx_bf16": True}, None, True),
        ("cpu", {"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, None, False),
        ("cpu", {}, None, False),
        ("cuda", {}, (8, 0), True),
        ("cuda", {}, (7, 5), False),
        ("meta", {}, None, False),
    ],
)
def test_auto_takes_bf16_only_where_the_device_multiplies_it_natively(monkeypatch, device, features, capability, native):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: features)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _: capability)
    assert native_bf16(torch.device(device)) is native
    assert resolve_bf16("auto", torch.device(device)) is native
    assert resolve_bf16(True, torch.device(device)) is True and resolve_bf16(False, torch.device(device)) is False


def test_auto_is_false_where_torch_has_no_cpu_feature_table(monkeypatch):
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    assert native_bf16(torch.device("cpu")) is False


def test_the_feature_names_auto_reads_are_in_torchs_cpu_table():
    table = getattr(torch._C._cpu, "_get_cpu_capability", None)
    if table is None:
        pytest.skip("this torch has no CPU feature table: auto answers float32")
    assert {"avx512_bf16", "amx_bf16"} <= set(table())  # renamed keys would make auto float32 on every CPU, silently


@pytest.mark.parametrize("choice", [True, "auto"])
def test_bf16_networks_run_in_training_steps_only_and_evaluation_stays_float32(monkeypatch, caplog, choice):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)  # "auto" as on a CPU or GPU with bf16 hardware
    caplog.set_level(logging.INFO)
    model = VAE(2, 2, (8,), (8,))
    seen: dict[str, set] = {"training step": set(), "elsewhere": set()}  # the decoder net's output dtypes
    model.decoder.net.register_forward_hook(lambda net, args, out: seen[where[-1]].add(out.dtype))
    where = ["elsewhere"]
    module = LVMModule(model, ImportanceSampling(3), eval_num_samples=4, networks_bf16=choice)
    losses = module._losses

    def training_losses(x):
        where.append("training step")
        try:
            return losses(x)
        finally:
            where.pop()

    module._losses = training_losses
    data = GaussianMixtureData(num_clusters=2, num_train=64, num_val=32, num_test=32, batch_size=32)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, limit_test_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data)
    assert seen == {"training step": {torch.bfloat16}, "elsewhere": {torch.float32}}  # validation, test, standardization's probe
    assert not any(getattr(m, "bf16", False) for m in model.modules())  # left as float32 for whatever runs next
    assert all(p.dtype == torch.float32 for p in model.parameters())
    said = "networks_bf16: auto: the training steps' matrix products in bfloat16 on cpu"
    assert (said in caplog.text) == (choice == "auto")  # what auto chose is said; an explicit choice needs no note


def test_a_training_step_that_fails_leaves_the_networks_in_float32():
    model = VAE(2, 2, (8,), (8,))
    module = LVMModule(model, ImportanceSampling(3), networks_bf16=True)
    losses = module._losses

    def failing(x):
        losses(x)
        raise RuntimeError("a step that fails after the forward pass")

    module._losses = failing
    data = GaussianMixtureData(num_clusters=2, num_train=64, num_val=32, num_test=32, batch_size=32)
    with pytest.raises(RuntimeError, match="fails after the forward pass"):
        quiet_trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False).fit(module, datamodule=data)
    assert not any(getattr(m, "bf16", False) for m in model.modules())


def test_the_module_owns_the_networks_precision_outside_its_training_steps():
    model = VAE(2, 2, (8,), (8,))
    model.networks_in_bf16()  # set on the model by hand before the module takes it
    dtypes = set()
    model.decoder.net.register_forward_hook(lambda net, args, out: dtypes.add(out.dtype))
    module = LVMModule(model, ImportanceSampling(3), eval_num_samples=4, networks_bf16=False)
    data = GaussianMixtureData(num_clusters=2, num_train=64, num_val=32, num_test=32, batch_size=32)
    quiet_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False).fit(module, datamodule=data)
    assert dtypes == {torch.float32}


def test_auto_without_bf16_hardware_trains_in_float32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    model = VAE(2, 2, (8,), (8,))
    dtypes = set()
    model.decoder.net.register_forward_hook(lambda net, args, out: dtypes.add(out.dtype))
    module = LVMModule(model, ImportanceSampling(3), networks_bf16="auto")
    data = GaussianMixtureData(num_clusters=2, num_train=64, num_val=32, num_test=32, batch_size=32)
    quiet_trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False).fit(module, datamodule=data)
    assert dtypes == {torch.float32}


@pytest.mark.parametrize("value", ["yes", "true", "AUTO", 1, 0, 1.0, np.True_, None])
def test_networks_bf16_takes_only_true_false_or_auto(value):
    # 1 == True and np.True_ == True: an equality test would let them through, to be refused by the checkpoint's checks later.
    with pytest.raises(UsageError, match="true, false or auto"):
        LVMModule(VAE(4, 2, (8,), (8,)), ImportanceSampling(3), networks_bf16=value)
