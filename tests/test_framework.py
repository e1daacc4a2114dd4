"""lvm_lightning as a framework: a user's own decoder and estimator from a folder outside the repository, safe
checkpoints against both kinds of malicious file, the installed console commands, and no global side effects."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lvm_lightning import LVMModule
from lvm_lightning.cli import main
from lvm_lightning.errors import UsageError
from lvm_lightning.models import LatentVariableModel

from conftest import ROOT, run_tool, undocumented_options

QUICK = ["--trainer.enable_progress_bar", "false", "--data.num_train", "500", "--data.num_val", "200", "--data.num_test", "200",
         "--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0"]  # fmt: skip

USER_MODULE = '''
"""A user's own parts: a Student-t decoder and a Renyi-bound estimator."""
import math

from torch import Tensor, nn
from torch.distributions import Distribution, Independent, StudentT

from lvm_lightning.objectives import ImportanceSampling


class StudentTDecoder(nn.Module):
    """p(x|z) = prod_d StudentT(df; mu_d(z), sigma_d(z))."""

    def __init__(self, latent_dim: int = 2, data_dim: int = 2, hidden: int = 32, df: float = 4.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * data_dim))
        self.df = df

    def forward(self, z: Tensor) -> Distribution:
        loc, log_scale = self.net(z).chunk(2, dim=-1)
        return Independent(StudentT(self.df, loc, log_scale.exp()), 1)


class RenyiBound(ImportanceSampling):
    """L_alpha = 1/(1 - alpha) log (1/K) sum_k w_k^(1 - alpha): alpha = 0 is the IWAE bound, alpha -> 1 the ELBO."""

    name = "renyi"

    def __init__(self, num_samples: int = 5, alpha: float = 0.5) -> None:
        super().__init__(num_samples)
        self.alpha = alpha

    def reduce(self, log_weights: Tensor) -> Tensor:
        scaled = (1 - self.alpha) * log_weights
        return (scaled.logsumexp(0) - math.log(len(log_weights))) / (1 - self.alpha)
'''

USER_CONFIG = """
trainer:
  max_epochs: 2
model:
  lvm:
    class_path: lvm_lightning.models.LatentVariableModel
    init_args:
      prior: {class_path: lvm_lightning.models.StandardNormalPrior, init_args: {latent_dim: 2}}
      decoder: {class_path: my_models.StudentTDecoder, init_args: {latent_dim: 2, data_dim: 2}}
      encoder:
        class_path: lvm_lightning.models.Conditional
        init_args:
          net: {class_path: torch.nn.Linear, init_args: {in_features: 2, out_features: 4}}
          family: {class_path: lvm_lightning.models.DiagonalGaussian, init_args: {dim: 2}}
  estimator: {class_path: my_models.RenyiBound, init_args: {num_samples: 5, alpha: 0.5}}
"""


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> Path:
    """A folder outside the repository with the user's file and config, trained there in a fresh process; returns the folder."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_models.py").write_text(USER_MODULE)
    (folder / "student_t.yaml").write_text(USER_CONFIG)
    result = run_tool([str(ROOT / "train.py"), "fit", "--config", "student_t.yaml", "--trainer.log_every_n_steps", "1", *QUICK], folder)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("ImageGrids is off for this run: the data are not images") == 1  # said once, not skipped silently
    return folder


def test_users_own_decoder_and_estimator_train_and_evaluate_in_a_fresh_process(user_run):
    run = user_run / "runs" / "default" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    assert "train/log_px/renyi" in events.Tags()["scalars"]  # the user's estimator is the training objective
    checkpoint = run / "checkpoints" / "last.ckpt"
    result = run_tool(["-m", "lvm_lightning.evaluate", str(checkpoint), "--trust", "my_models", "--num_samples", "100", "--gap_points", "8",
                       "--gap.max_steps", "50", "--output", "report.json"], user_run)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((user_run / "report.json").read_text())
    estimates = report["estimates"]
    # The user's training estimator is evaluated beside the built-ins, as it trained (its own K).
    assert set(estimates) == {"prior_sampling", "importance_sampling", "elbo", "renyi"} and estimates["importance_sampling"]["num_points"] == 200
    assert estimates["renyi"]["num_samples"] == 5 and estimates["renyi"]["num_points"] == 200
    assert estimates["elbo"]["mean"] < estimates["importance_sampling"]["mean"]
    assert report["gaps"]["num_points"] == 8 and report["true_log_px"]["num_points"] == 200
    # The user's classes are rebuilt from the checkpoint alone (no config file), in a fresh process.
    code = ("from lvm_lightning import LVMModule; m = LVMModule.load_from_checkpoint('runs/default/version_0/checkpoints/last.ckpt', trusted=['my_models']);"
            "print(type(m.lvm.decoder).__name__, type(m.estimator).__name__, m.estimator.alpha)")  # fmt: skip
    loaded = run_tool(["-c", code], user_run)
    assert loaded.returncode == 0 and loaded.stdout.split()[-3:] == ["StudentTDecoder", "RenyiBound", "0.5"], loaded.stderr[-2000:]


def test_estimators_by_class_path_include_the_users_own(user_run, monkeypatch):
    """--estimators takes a trusted module's Estimator by class path, built at --num_samples, beside a built-in name."""
    from lvm_lightning.evaluate import evaluate_checkpoint

    monkeypatch.chdir(user_run)
    monkeypatch.syspath_prepend(str(user_run))
    checkpoint = "runs/default/version_0/checkpoints/last.ckpt"
    try:
        report = evaluate_checkpoint(checkpoint, num_samples=8, gap_points=0, trust=["my_models"], estimators=["my_models.RenyiBound", "elbo"])
    finally:
        sys.modules.pop("my_models", None)  # the user's module, not left to the tests after
    assert list(report["estimates"]) == ["renyi", "elbo"] and report["estimates"]["renyi"]["num_samples"] == 8


def test_a_class_the_user_does_not_trust_is_refused_in_one_line(user_run):
    result = run_tool(["-m", "lvm_lightning.evaluate", "runs/default/version_0/checkpoints/last.ckpt"], user_run)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "'my_models.StudentTDecoder'" in line and "--trust my_models" in line


@pytest.mark.parametrize("trust, said", [([], "--trust stranger"), (["--trust", "stranger"], "Estimator")])
def test_an_estimator_class_path_from_an_untrusted_module_or_of_another_kind_is_refused(real_checkpoint, tmp_path, monkeypatch, capsys, trust, said):
    """--estimators resolves a class path as a checkpoint's are: an untrusted module is never imported, a class of another kind is refused."""
    from lvm_lightning import evaluate

    marker = tmp_path / "IMPORTED"
    (tmp_path / "stranger.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Stranger:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main([str(real_checkpoint), "--gap_points", "0", "--estimators", "stranger.Stranger", *trust])
    finally:
        sys.modules.pop("stranger", None)  # a trusted import, not left to the tests after
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "--estimators" in line and said in line
    assert marker.exists() == bool(trust)  # imported only once trusted


def test_every_lvm_evaluate_option_has_help():
    from lvm_lightning import evaluate

    assert undocumented_options(evaluate.parser()) == []


class Payload:
    """Unpickling this object runs a shell command: what a malicious checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def real_checkpoint(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    main(["--trainer.max_epochs", "1", *QUICK])
    return tmp_path / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"


def planted(real_checkpoint: Path, kind: str, marker: Path) -> Path:
    """A checkpoint that would create ``marker`` if anything in it ran."""
    command = f"touch {marker}"
    if kind == "pickle":
        checkpoint = {"state_dict": {}, "payload": Payload(command)}
    else:  # plain data only: a class path to a function, with its arguments
        checkpoint = torch.load(real_checkpoint, weights_only=True)
        hostile = {"class_path": "os.system", "init_args": {"command": command}}
        if kind == "module":
            checkpoint["hyper_parameters"]["lvm"] = hostile
        else:
            checkpoint["datamodule_hyper_parameters"] = {"_class_path": "os.system", "command": command}
    path = marker.parent / f"{kind}.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("kind, message", [("pickle", "holds the Python object posix.system"), ("module", "names 'os.system'"), ("data", "names 'os.system'")])
def test_malicious_checkpoints_run_nothing(real_checkpoint, tmp_path, capsys, kind, message):
    marker = tmp_path / "PWNED"
    path = planted(real_checkpoint, kind, marker)
    with pytest.raises(SystemExit) as exit_info:
        from lvm_lightning import evaluate

        evaluate.main([str(path), "--gap_points", "0"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    with pytest.raises(UsageError, match=message.split()[-1]):
        LVMModule.load_from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["part as a string", "part as inline YAML", "decoder as a string"])
def test_strings_where_a_class_is_expected_import_nothing(real_checkpoint, tmp_path, monkeypatch, where):
    """jsonargparse would read such strings as class paths (or YAML naming one) and import them; the loader imports only a class_path, once allowed."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evilmod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = torch.load(real_checkpoint, weights_only=True)
    if where == "part as a string":
        checkpoint["hyper_parameters"]["lvm"] = "evilmod.Evil"
    elif where == "part as inline YAML":
        checkpoint["hyper_parameters"]["estimator"] = "{class_path: evilmod.Evil}"
    else:
        checkpoint["hyper_parameters"]["lvm"]["init_args"]["decoder_hidden"] = "evilmod.Evil"
    path = tmp_path / "strings.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UsageError):
        LVMModule.load_from_checkpoint(path)
    assert not marker.exists()


def test_training_without_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false", *QUICK])
    run = tmp_path / "runs" / "default" / "version_0"
    assert (run / "config.yaml").is_file() and not (run / "checkpoints").exists()


def test_importing_the_package_leaves_matplotlibs_backend_alone():
    code = "import matplotlib; matplotlib.use('pdf'); import lvm_lightning.callbacks, lvm_lightning.cli; print(matplotlib.get_backend())"
    result = run_tool(["-c", code], ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "pdf", result.stderr[-2000:]


def test_pip_install_gives_console_commands_that_work_from_any_folder(tmp_path):
    """`pip install .` into a fresh venv (its dependencies borrowed from this environment, so nothing is downloaded), then lvm-train and lvm-evaluate outside the repository."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True)
    here = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True)
    # This environment's packages (torch, Lightning, pip, setuptools) after the venv's own, as a read-only fallback.
    (Path(site.stdout.strip()) / "borrowed.pth").write_text(here.stdout.strip() + "\n")
    source = tmp_path / "source"  # a copy: setuptools builds in the source tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", "tests"))
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source)],
                             capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import importlib.metadata as m, lvm_lightning; print(lvm_lightning.__file__); print(m.requires('lvm_lightning'))"],
                           capture_output=True, text=True, cwd=work, env=env)  # fmt: skip
    assert str(venv) in where.stdout.splitlines()[0], where.stdout + where.stderr  # the installed copy, not the repository's
    assert "torch>=2.6" in where.stdout and "pytorch-lightning>=2.4" in where.stdout and 'pytest>=7.4; extra == "test"' in where.stdout
    train = subprocess.run([str(venv / "bin" / "lvm-train"), "--trainer.max_epochs", "1", *QUICK], capture_output=True, text=True, cwd=work, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = work / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    evaluate = subprocess.run([str(venv / "bin" / "lvm-evaluate"), str(checkpoint), "--num_samples", "20", "--gap_points", "0"],
                              capture_output=True, text=True, cwd=work, env=env)  # fmt: skip
    assert evaluate.returncode == 0 and "importance_sampling" in evaluate.stdout, evaluate.stderr[-3000:]
    shipped = subprocess.run(
        [str(venv / "bin" / "lvm-train"), "fit", "--config", "mixture_vae", "--print_config"], capture_output=True, text=True, cwd=work, env=env
    )
    assert shipped.returncode == 0 and "class_path: lvm_lightning.models.VAE" in shipped.stdout, shipped.stderr[-3000:]  # a shipped config by name
    module = subprocess.run([str(python), "-m", "lvm_lightning.evaluate", "--help"], capture_output=True, text=True, cwd=work, env=env)
    assert module.returncode == 0 and "--gap.max_steps" in module.stdout


def test_a_module_built_in_python_reloads_with_its_parts_passed_again(tmp_path):
    import pytorch_lightning as pl

    from lvm_lightning.data import GaussianMixtureData
    from lvm_lightning.models import VAE
    from lvm_lightning.objectives import ImportanceSampling

    module = LVMModule(VAE(2, 2, encoder_hidden=(8,), decoder_hidden=(8,)), ImportanceSampling(3))
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(module, datamodule=GaussianMixtureData(num_train=100, num_val=20, num_test=20, batch_size=50))
    path = tmp_path / "python.ckpt"
    trainer.save_checkpoint(path)
    assert "lvm" not in torch.load(path, weights_only=True)["hyper_parameters"]  # objects stay out of the checkpoint
    with pytest.raises(UsageError, match="built in Python"):
        LVMModule.load_from_checkpoint(path)
    again = LVMModule.load_from_checkpoint(path, lvm=VAE(2, 2, encoder_hidden=(8,), decoder_hidden=(8,)), estimator=ImportanceSampling(3))
    for (name, value), loaded in zip(module.state_dict().items(), again.state_dict().values()):
        assert torch.equal(value, loaded), name


def test_a_decoder_that_does_not_match_the_data_is_one_line():
    from lvm_lightning.models import Conditional, DiagonalGaussian, LatentVariableModel, StandardNormalPrior

    decoder = Conditional(torch.nn.Linear(2, 6), DiagonalGaussian(3))
    encoder = Conditional(torch.nn.Linear(4, 4), DiagonalGaussian(2))
    with pytest.raises(UsageError, match=r"rows of shape \(3,\) but the data have 4 columns"):
        LatentVariableModel(StandardNormalPrior(2), decoder, encoder, data_dim=4)


def test_the_compiled_training_loss_equals_the_eager_one(monkeypatch):
    """``compile=True``: torch.compile'd losses, with the eager random draws (inductor's fallback_random), give the same loss and gradient."""
    import torch._inductor.config

    from lvm_lightning.models import VAE
    from lvm_lightning.objectives import ImportanceSampling

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    module = LVMModule(VAE(20, 4, encoder_hidden=[32], decoder_hidden=[32]), ImportanceSampling(5), compile=True)
    x = torch.randn(16, 20)

    def step(losses):
        torch.manual_seed(3)
        module.zero_grad()
        loss, log_px = losses(x)
        loss.backward()
        return loss.detach(), log_px.detach(), [p.grad.clone() for p in module.parameters()]

    eager, compiled = step(module.losses), step(module._losses)
    assert module._losses is not module.losses
    for a, b in zip(eager[:2] + tuple(eager[2]), compiled[:2] + tuple(compiled[2])):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_a_run_of_the_users_own_classes_resumes_with_trust(user_run):
    """Resuming names the user's classes from the checkpoint: refused by name without --trust, resumed with it."""
    checkpoint = user_run / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    resume = [str(ROOT / "train.py"), "fit", "--config", "student_t.yaml", *QUICK, "--trainer.max_epochs", "3", "--ckpt_path", str(checkpoint)]
    refused = run_tool(resume, user_run)
    assert refused.returncode == 2 and "my_models.StudentTDecoder" in refused.stderr and "--trust my_models" in refused.stderr, refused.stderr[-2000:]
    resumed = run_tool([*resume, "--trust", "my_models"], user_run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2


class _Prior(torch.nn.Module):
    def forward(self):
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)


class _Net(torch.nn.Module):
    """A linear map whose output ``wrap`` turns into what the part returns."""

    def __init__(self, inputs: int, outputs: int, wrap) -> None:
        super().__init__()
        self.linear, self.wrap = torch.nn.Linear(inputs, outputs), wrap

    def forward(self, value):
        return self.wrap(self.linear(value))


def _gaussian(mean):
    return torch.distributions.Independent(torch.distributions.Normal(mean, 1.0), 1)


def _fails(mean):
    raise ValueError("a bug in the user's encoder")


@pytest.mark.parametrize(
    "decoder, encoder, part, says",
    [
        (lambda m: m.sum(-1), _gaussian, "decoder", "must return a torch.distributions.Distribution"),
        (lambda m: torch.distributions.Normal(m, 1.0), _gaussian, "decoder", "Independent"),
        (_gaussian, _fails, "encoder", "ValueError"),
        (_gaussian, lambda m: torch.distributions.Normal(m, 1.0), "encoder", "event shape"),
    ],
)
def test_a_part_that_breaks_its_contract_is_named_in_one_line_at_construction(decoder, encoder, part, says):
    with pytest.raises(UsageError) as error:
        LatentVariableModel(_Prior(), _Net(2, 5, decoder), _Net(5, 2, encoder), data_dim=5)
    message = str(error.value)
    assert message.startswith(f"the {part}") and says in message and "\n" not in message


def test_parts_that_keep_their_contracts_build_a_model_without_touching_the_random_stream_beyond_one_prior_draw():
    decoder, encoder = _Net(2, 5, _gaussian), _Net(5, 2, _gaussian)
    torch.manual_seed(0)
    LatentVariableModel(_Prior(), decoder, encoder, data_dim=5)
    after_model = torch.rand(1)
    torch.manual_seed(0)
    _Prior()().sample((1,))
    assert torch.equal(torch.rand(1), after_model)
