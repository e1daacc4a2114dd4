"""A shared run folder runs no code: hostile checkpoints against every route that reads one (lvm-evaluate, load_from_checkpoint,
lvm-study --checkpoint, resume with --ckpt_path), each ending in one line, with no marker file, no import, no download, no
traceback, in seconds and bounded memory; and a walk of every class reachable from lvm_lightning and torch.nn."""

import copy
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

import lvm_lightning
from lvm_lightning import LVMModule
from lvm_lightning.checkpoints import check_torch, load_module
from lvm_lightning.classes import HOMES, KINDS, NEVER, resolve
from lvm_lightning.cli import build_module
from lvm_lightning.errors import UsageError
from lvm_lightning.objectives import Estimator

from conftest import ROOT

QUICK = ["--trainer.enable_progress_bar", "false", "--data.num_train", "300", "--data.num_val", "100", "--data.num_test", "100",
         "--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0"]  # fmt: skip
EVIL_MODULE = "import pathlib\npathlib.Path({marker!r}).touch()\nclass Evil:\n    pass\n"


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict[str, Any]:
    """A genuine checkpoint of the default run, as a dict."""
    folder = tmp_path_factory.mktemp("genuine")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--trainer.max_epochs", "1", *QUICK], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(folder / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """The victim's working folder, holding an attacker's module (which marks MARKER if ever imported) and second files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "evilmod.py").write_text(EVIL_MODULE.format(marker=str(tmp_path / "MARKER")))
    (tmp_path / "evil.yaml").write_text("class_path: evilmod.Evil\n")
    return tmp_path


NESTED = "NESTED-HERE"  # a value that ``save`` replaces by a list nested ``depth`` deep


def save(checkpoint: dict[str, Any], path: Path, depth: int = 100_000) -> Path:
    """torch.save, with the pickled string NESTED replaced by a list nested ``depth`` levels deep: torch.save's pickler cannot nest
    that deep, a hand-written pickle can (EMPTY_LIST depth + 1 times, then APPEND depth times), and torch.load(weights_only=True) reads it."""
    torch.save(checkpoint, path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    string = NESTED.encode()
    opcode = b"X" + len(string).to_bytes(4, "little") + string  # BINUNICODE, as protocol 2 writes it
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                data = data.replace(opcode, b"]" * (depth + 1) + b"a" * depth)
            archive.writestr(info, data)
    return path


def hostile(genuine: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    checkpoint = copy.deepcopy(genuine)
    change(checkpoint)
    return checkpoint


def lightning_cli(checkpoint: dict[str, Any]) -> None:
    """The attack of the issue: the module's model is lvm_lightning.cli.LightningCLI (a re-export), told to train and resume from a second file."""
    checkpoint["hyper_parameters"]["lvm"] = {
        "class_path": "lvm_lightning.cli.LightningCLI",
        "init_args": {"args": ["fit", "--ckpt_path", "file://second.ckpt", "--trainer.default_root_dir", "written"]},
    }


def own_cli(checkpoint: dict[str, Any]) -> None:
    checkpoint["datamodule_hyper_parameters"] = {"_class_path": "lvm_lightning.cli.LVMCLI", "args": ["fit"]}


def set_lvm(value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda checkpoint: checkpoint["hyper_parameters"].__setitem__("lvm", value)


def set_lvm_arg(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(checkpoint: dict[str, Any]) -> None:
        lvm = checkpoint["hyper_parameters"]["lvm"]
        checkpoint["hyper_parameters"]["lvm"] = {**lvm, "init_args": {**lvm["init_args"], name: value}}

    return change


def set_data(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda checkpoint: checkpoint["datamodule_hyper_parameters"].update(values)


def mnist(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda checkpoint: checkpoint.__setitem__("datamodule_hyper_parameters", {"_class_path": "lvm_lightning.data.MNISTData", **values})


ATTACKS = {
    "LightningCLI re-exported under lvm_lightning, resuming from a second file": lightning_cli,
    "lvm_lightning's own LightningCLI as the data module": own_cli,
    "a module in the working folder as a bare string": set_lvm("evilmod.Evil"),
    "the name of a YAML file as a bare string": set_lvm("evil.yaml"),
    "a class inside a tuple": lambda c: c["hyper_parameters"].__setitem__("validation_estimators", ({"class_path": "evilmod.Evil"},)),
    "a part inside a tuple": set_lvm_arg("encoder_hidden", ({"class_path": "evilmod.Evil"},)),
    "a torch.nn class that is not where torch.nn keeps its layers": set_lvm({"class_path": "torch.nn.parallel.DistributedDataParallel", "init_args": {}}),
    "a layer where an estimator belongs": lambda c: c["hyper_parameters"].__setitem__("estimator", {"class_path": "torch.nn.Linear", "init_args": {}}),
    "extra keys beside class_path": set_lvm({**{"class_path": "lvm_lightning.models.VAE"}, "__path__": "evil.yaml"}),
    "an MNIST download into a folder of its choosing": mnist(root="chosen", download=True, cache_dir="chosen"),
    "MNIST with no download key": mnist(root="chosen"),
    "layers of 20,000 units on 85 KB of weights": set_lvm_arg("encoder_hidden", [20000, 20000]),
    "layers of 10^7 units": set_lvm_arg("encoder_hidden", [10**7, 10**7]),
    "10^12 synthetic points": set_data(num_train=10**12),
    "100,000-deep nesting": set_lvm_arg("encoder_hidden", NESTED),
    "a list where a mapping belongs": lambda c: c.__setitem__("hyper_parameters", [1, 2]),
    "a list where the model belongs": set_lvm([1, 2]),
    "a string where a number belongs": lambda c: c["hyper_parameters"].__setitem__("eval_num_samples", "ten"),
    "a string where layer widths belong": set_lvm_arg("encoder_hidden", "64"),
    "a tensor where a number belongs": lambda c: c["hyper_parameters"]["optimizer"]["init_args"].__setitem__("lr", torch.ones(3)),
    "a model where the optimizer belongs": lambda c: c["hyper_parameters"].__setitem__("optimizer", {"class_path": "lvm_lightning.models.VAE"}),
    "a foreign module's class as the optimizer": lambda c: c["hyper_parameters"].__setitem__("optimizer", {"class_path": "evilmod.Optimizer"}),
    "an optimizer where the schedule belongs": lambda c: c["hyper_parameters"].__setitem__("lr_scheduler", {"class_path": "torch.optim.SGD"}),
    "a bare string as the optimizer": lambda c: c["hyper_parameters"].__setitem__("optimizer", "torch.optim.SGD"),
    "an argument the class does not take": set_lvm_arg("__init__", 1),
    "weights that do not fit the model": lambda c: c.__setitem__("state_dict", {**c["state_dict"], "lvm.prior.logits": torch.zeros(5)}),
    "state_dict of strings": lambda c: c.__setitem__("state_dict", {"a": "b"}),
}


class Payload:
    """Unpickling this object runs a shell command: the second file of the folder that a CLI class would be told to resume from."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def assert_one_line(capsys, exit_info, marker: Path) -> str:
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert not marker.exists()
    return lines[0]


def attack(folder: Path, genuine: dict[str, Any], name: str) -> Path:
    torch.save({"state_dict": {}, "payload": Payload(f"touch {folder / 'MARKER'}")}, folder / "second.ckpt")
    path = folder / "checkpoints" / "hostile.ckpt"
    path.parent.mkdir(exist_ok=True)
    return save(hostile(genuine, ATTACKS[name]), path)


def assert_untouched(folder: Path) -> None:
    """Nothing written or fetched on the checkpoint's behalf: only what the test put there."""
    assert not (folder / "MARKER").exists() and not (folder / "chosen").exists() and not (folder / "written").exists()
    assert "evilmod" not in sys.modules


@pytest.mark.parametrize("name", list(ATTACKS))
def test_lvm_evaluate_refuses_in_one_line(folder, genuine, capsys, name):
    from lvm_lightning import evaluate

    path = attack(folder, genuine, name)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(path), "--gap_points", "0", "--num_samples", "2"])
    assert_one_line(capsys, exit_info, folder / "MARKER")
    assert_untouched(folder)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_load_from_checkpoint_refuses(folder, genuine, name):
    if "synthetic points" in name or "MNIST" in name:
        pytest.skip("load_from_checkpoint builds the module alone, never the data module (whose class is still checked)")
    path = attack(folder, genuine, name)
    with pytest.raises(UsageError):
        LVMModule.load_from_checkpoint(path)
    assert_untouched(folder)


@pytest.mark.parametrize("name", ["LightningCLI re-exported under lvm_lightning, resuming from a second file", "a module in the working folder as a bare string",
                                  "layers of 10^7 units", "100,000-deep nesting", "MNIST with no download key"])  # fmt: skip
def test_lvm_study_refuses_in_one_line(folder, genuine, capsys, name):
    from lvm_lightning import study

    path = attack(folder, genuine, name)
    with pytest.raises(SystemExit) as exit_info:
        study.main(["estimators", "--checkpoint", str(path), "--num_samples", "1", "--repeats", "1"])
    assert_one_line(capsys, exit_info, folder / "MARKER")
    assert_untouched(folder)


@pytest.mark.parametrize("name", [name for name in ATTACKS if "synthetic" not in name and "MNIST" not in name])
def test_resume_refuses_in_one_line(folder, genuine, capsys, name):
    """``lvm-train fit --ckpt_path``: LightningCLI would hand the stored arguments to jsonargparse, which imports what they name."""
    from lvm_lightning.cli import main

    path = attack(folder, genuine, name)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--ckpt_path", str(path), "--trainer.max_epochs", "2", *QUICK])
    assert_one_line(capsys, exit_info, folder / "MARKER")
    assert_untouched(folder)
    assert not (folder / "runs").exists()  # refused before a run folder was made


TRAINING_STATE = {
    "an optimizer state of the wrong shapes": lambda c: c["optimizer_states"][0]["state"][0].__setitem__("exp_avg", torch.zeros(3, 3)),
    "an optimizer state for other parameters": lambda c: c["optimizer_states"][0]["param_groups"][0].__setitem__("params", [0]),
    "loops with a string counter": lambda c: c["loops"]["fit_loop"]["epoch_progress"]["current"].__setitem__("completed", "0"),
    "a random state that is not torch's": lambda c: c.__setitem__("rng_state", {"cpu": torch.zeros(2, 3, dtype=torch.uint8)}),
    "checkpoint paths outside the run folder": lambda c: next(v for k, v in c["callbacks"].items() if k.startswith("ModelCheckpoint")).update(
        last_model_path="/etc/passwd", best_model_path="s3://bucket/x.ckpt"
    ),
}


@pytest.mark.parametrize("name", list(TRAINING_STATE))
def test_resume_checks_what_lightning_restores(folder, genuine, capsys, name):
    """Only training (not evaluation) reads the optimizer, loops and RNG states: each malformed one is one line; paths outside the run are dropped."""
    from lvm_lightning.cli import main

    checkpoint = hostile(genuine, TRAINING_STATE[name])
    path = folder / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    if name == "checkpoint paths outside the run folder":
        main(["fit", "--ckpt_path", str(path), "--trainer.max_epochs", "2", *QUICK])
        assert torch.load(path, weights_only=True)["epoch"] == 1  # resumed and trained; nothing outside the run was read or removed
        return
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--ckpt_path", str(path), "--trainer.max_epochs", "2", *QUICK])
    assert_one_line(capsys, exit_info, folder / "MARKER")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak resident size from Linux's /proc")
def test_a_large_declared_model_is_refused_in_seconds_and_bounded_memory(folder, genuine):
    """The issue's 85 KB checkpoint declaring layers of 20,000 units took 2.5 GB and 11 s; now the shapes are compared on the meta device.
    The peak is the process's own (VmHWM; ru_maxrss would count the forking test process's)."""
    path = attack(folder, genuine, "layers of 10^7 units")
    code = (
        "import re, sys, time; from pathlib import Path; from lvm_lightning import evaluate; t = time.time()\n"
        "try:\n    evaluate.main([sys.argv[1], '--gap_points', '0'])\n"
        "except SystemExit: print(time.time() - t, re.search(r'VmHWM:\\s*(\\d+)', Path('/proc/self/status').read_text()).group(1))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=folder, timeout=120)
    seconds, peak_kib = map(float, result.stdout.split())
    assert "error: " in result.stderr and seconds < 10 and peak_kib < 1.5 * 2**20, (seconds, peak_kib, result.stderr[-500:])


def test_a_checkpoint_bigger_than_half_the_memory_is_refused_before_reading(monkeypatch, tmp_path):
    from lvm_lightning import memory
    from lvm_lightning.checkpoints import read_file

    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.setattr(memory, "physical_memory", lambda: 2000)
    with pytest.raises(UsageError, match="more than half of this machine's memory"):
        read_file(path)


def test_torch_older_than_2_6_is_refused():
    with pytest.raises(UsageError, match="CVE-2025-32434"):
        check_torch("2.5.1+cpu")
    check_torch("2.6.0")


def test_a_compressed_archive_is_refused(tmp_path):
    """torch.save writes its entries stored, never compressed: a compressed one could unpack to far more than the file."""
    import zipfile

    from lvm_lightning.checkpoints import read_file

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    packed = tmp_path / "packed.ckpt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    with pytest.raises(UsageError, match="compressed entries"):
        read_file(packed)


def reachable_classes() -> dict[str, type]:
    """Every class reachable by a dotted name from lvm_lightning's modules and from torch.nn's, by the name a checkpoint would give."""
    modules = [lvm_lightning, nn]
    for package in (lvm_lightning, nn):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:  # an optional backend torch.nn cannot import here: nothing of it is reachable either
                continue
    found = {}
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, type) and not name.startswith("__"):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_reachable_class_is_accepted_only_by_the_slots_of_its_kind():
    """A class path resolves in a slot iff the class is of the slot's kind, is defined under lvm_lightning or torch.nn's layers, and is
    not a LightningModule: the CLI, parser, Trainer, Fabric, loader and checkpoint classes re-exported there fail in every slot."""
    classes = reachable_classes()
    assert len(classes) > 500
    accepted: dict[type, list[str]] = {kind: [] for kind in KINDS}
    for path, cls in classes.items():
        for kind in KINDS:
            try:
                resolve(path, [kind], "test")
            except UsageError:
                continue
            accepted[kind].append(path)
            assert issubclass(cls, kind) and not issubclass(cls, NEVER)
            assert any(cls.__module__ == home or cls.__module__.startswith(f"{home}.") for home in HOMES), path
    # Re-exported here and there; each refused by every slot.
    never = ["lvm_lightning.cli.LightningCLI", "lvm_lightning.cli.LVMCLI", "lvm_lightning.cli.ArgumentParser", "lvm_lightning.sharded.Fabric",
             "lvm_lightning.files.AtomicCheckpointIO", "lvm_lightning.module.LVMModule", "lvm_lightning.data.in_memory.DataLoader",
             "lvm_lightning.callbacks.RunCheckpoint", "torch.nn.parallel.DistributedDataParallel", "torch.nn.DataParallel",
             "lvm_lightning.objectives.estimators.Distribution", "torch.nn.Parameter"]  # fmt: skip
    for path in never:
        assert path in classes, path
        for kind in KINDS:
            with pytest.raises(UsageError):
                resolve(path, [kind], "test")
    assert "torch.nn.Linear" in accepted[nn.Module] and "lvm_lightning.objectives.ImportanceSampling" in accepted[Estimator]
    assert "lvm_lightning.data.MNISTData" in accepted[pl.LightningDataModule]
    assert not any(issubclass(classes[path], (pl.Trainer, pl.LightningModule)) for kind in KINDS for path in accepted[kind])


def stored_hyperparameters(model: dict[str, Any], data_dim: int) -> dict[str, Any]:
    """What LightningCLI stores for a config's model section: each part's class path and arguments, data_dim linked in."""
    section = yaml.safe_load(yaml.safe_dump(model))
    section["lvm"].setdefault("init_args", {})["data_dim"] = data_dim
    return section


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_reloads_through_the_checks(config):
    """The meta-device pass and the annotation checks accept every shipped model: the reloaded weights equal the saved ones."""
    model = yaml.safe_load((ROOT / "configs" / config).read_text())["model"]
    data_dim = 784 if "mnist" in config else 10 if "linear" in config else 2
    module = build_module(model, data_dim)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": stored_hyperparameters(model, data_dim)}
    loaded = load_module(LVMModule, checkpoint, config)
    for (name, value), again in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(value, again), name
    assert type(loaded.lvm) is type(module.lvm) and type(loaded.estimator) is type(module.estimator)


MODELS = {
    "VAE, full-covariance q": {"class_path": "lvm_lightning.models.VAE", "init_args": {"latent_dim": 3, "posterior": "full"}},
    "VAE, coupling flow q": {"class_path": "lvm_lightning.models.VAE", "init_args": {"latent_dim": 3, "posterior": "flow"}},
    "VAE, local flow q": {"class_path": "lvm_lightning.models.VAE", "init_args": {"latent_dim": 3, "posterior": "local_flow"}},
    "convolutional VAE": {"class_path": "lvm_lightning.models.VAE",
                          "init_args": {"latent_dim": 4, "network": "conv", "image_shape": [1, 8, 8], "encoder_hidden": [4], "decoder_hidden": [4]}},
    "CategoricalVAE": {"class_path": "lvm_lightning.models.CategoricalVAE", "init_args": {"num_variables": 2, "num_categories": 3}},
    "LinearGaussian, full q": {"class_path": "lvm_lightning.models.LinearGaussian", "init_args": {"latent_dim": 2, "posterior": "full"}},
    "the user's parts": {"class_path": "lvm_lightning.models.LatentVariableModel", "init_args": {
        "prior": {"class_path": "lvm_lightning.models.StandardNormalPrior", "init_args": {"latent_dim": 2}},
        "decoder": {"class_path": "lvm_lightning.models.Conditional", "init_args": {
            "net": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 128}},
            "family": {"class_path": "lvm_lightning.models.DiagonalGaussian", "init_args": {"dim": 64}}}},
        "encoder": {"class_path": "lvm_lightning.models.Conditional", "init_args": {
            "net": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 64, "out_features": 4}},
            "family": {"class_path": "lvm_lightning.models.DiagonalGaussian", "init_args": {"dim": 2}}}}}},
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_family_reloads_through_the_checks(name):
    """Flows, convolutions, categorical latents and parts given one by one pass the meta-device pass too."""
    lvm = copy.deepcopy(MODELS[name])
    lvm["init_args"].setdefault("data_dim", 64)
    model = {"lvm": lvm, "estimator": {"class_path": "lvm_lightning.objectives.ImportanceSampling", "init_args": {"num_samples": 2}}}
    module = build_module(model, 64)
    loaded = load_module(LVMModule, {"state_dict": module.state_dict(), "hyper_parameters": stored_hyperparameters(model, 64)}, name)
    for (key, value), again in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(value, again), key


def test_evaluation_reads_image_data_from_this_machine_only(folder, genuine, capsys):
    """The stored root is never read: evaluation looks where --data_root says (or ./data, or the system's copy)."""
    from lvm_lightning import evaluate

    path = attack(folder, genuine, "MNIST with no download key")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(path), "--gap_points", "0", "--data_root", str(folder / "empty")])
    line = assert_one_line(capsys, exit_info, folder / "MARKER")
    assert "empty" in line and "download is off" in line and not (folder / "empty").exists()


def test_a_numpy_run_needs_the_users_data_path(tmp_path, monkeypatch, capsys):
    """A run on a file stores the file's path; evaluation names it but opens only what the user passes."""
    from lvm_lightning import evaluate
    from lvm_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32))
    main(["fit", "--config", str(ROOT / "configs" / "numpy_file.yaml"), "--data.path", "points.npy", "--trainer.max_epochs", "1",
          "--trainer.enable_progress_bar", "false", "--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0"])  # fmt: skip
    checkpoint = tmp_path / "runs" / "numpy_file" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(checkpoint), "--gap_points", "0"])
    line = assert_one_line(capsys, exit_info, tmp_path / "MARKER")
    assert "points.npy" in line and "--data_path" in line


def test_the_loader_is_what_resume_uses(genuine, tmp_path):
    """Lightning's own resume reads through AtomicCheckpointIO.load_checkpoint, which is checkpoints.read_file."""
    from lvm_lightning.files import AtomicCheckpointIO

    path = save({**genuine, "loops": NESTED}, tmp_path / "deep.ckpt", depth=1000)
    with pytest.raises(UsageError, match="nested deeper"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert inspect.signature(AtomicCheckpointIO.load_checkpoint).parameters.keys() >= {"path", "map_location"}


def with_gradient(gradient: Any) -> dict[str, Any]:
    """A stored VAE run whose importance-sampled estimator names ``gradient`` as its gradient estimator."""
    estimator = {"class_path": "lvm_lightning.objectives.ImportanceSampling", "init_args": {"num_samples": 2, "gradient": gradient}}
    return {"lvm": {"class_path": "lvm_lightning.models.VAE", "init_args": {"latent_dim": 2, "data_dim": 8}}, "estimator": estimator}


@pytest.mark.parametrize("class_path", ["lvm_lightning.objectives.DReG", "lvm_lightning.objectives.gradients.VIMCO"])
def test_a_stored_gradient_estimator_reloads(class_path):
    """The gradient slot takes a GradientEstimator by class path: the reloaded estimator composes the one stored."""
    model = with_gradient({"class_path": class_path})
    module = build_module(copy.deepcopy(model), 8)
    loaded = load_module(LVMModule, {"state_dict": module.state_dict(), "hyper_parameters": model}, "gradient")
    assert type(loaded.estimator.gradient).__name__ == class_path.rpartition(".")[2]


GRADIENT_ATTACKS = {
    "a module in the working folder": {"class_path": "evilmod.Evil"},
    "a layer": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 1, "out_features": 1}},
    "an estimator": {"class_path": "lvm_lightning.objectives.ELBO"},
    "a bare name": "DReG",
}


@pytest.mark.parametrize("name", list(GRADIENT_ATTACKS))
def test_the_gradient_slot_refuses_what_is_not_a_gradient_estimator(folder, name):
    """A foreign class, a layer, an estimator or a bare string where the gradient estimator belongs: refused, nothing imported."""
    model = with_gradient(GRADIENT_ATTACKS[name])
    genuine = build_module(with_gradient({"class_path": "lvm_lightning.objectives.DReG"}), 8)
    with pytest.raises(UsageError, match="gradient"):
        load_module(LVMModule, {"state_dict": genuine.state_dict(), "hyper_parameters": model}, "hostile")
    assert_untouched(folder)
