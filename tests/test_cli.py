"""End to end as a user runs it: train.py, TensorBoard read back, evaluation in a fresh process, clear errors, resume."""

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lvm_lightning import LVMModule, evaluate
from lvm_lightning.cli import LVMCLI, main
from lvm_lightning.data import NumpyData
from lvm_lightning.models import LinearGaussian, MixtureModel
from lvm_lightning.objectives import Exact

from conftest import FAST, QUIET, ROOT, run_tool, scalars


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A short default run (mixture, categorical z, exact objective) in a fresh process, as a user starts it."""
    cwd = tmp_path_factory.mktemp("run")
    args = [str(ROOT / "train.py"), "fit", "--trainer.max_epochs", "3", "--density_plot.every_n_epochs", "2", *FAST, *QUIET]
    result = run_tool(args, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run folder (TensorBoard logs and checkpoints): runs/default/version_0" in result.stdout
    return cwd / "runs" / "default" / "version_0"


def test_tensorboard_has_every_estimator_side_by_side(trained_run):
    logged = scalars(trained_run)
    for name in ("exact", "prior_sampling", "importance_sampling", "elbo", "true"):
        assert len(logged[f"val/log_px/{name}"]) == 3, name
    for name in ("prior_sampling", "importance_sampling"):
        assert all(0 < v <= 1 for v in logged[f"val/ess_fraction/{name}"])
        assert all(v >= 0 for v in logged[f"val/log_px_stderr/{name}"])
    exact, elbo, true = (logged[f"val/log_px/{n}"][-1] for n in ("exact", "elbo", "true"))
    assert elbo <= exact + 1e-3 and exact < true + 0.05  # an ELBO bounds log p(x); a fitted model does not beat the truth by much
    assert logged["val/log_px/exact"][-1] > logged["val/log_px/exact"][0]  # it learns
    accumulator = EventAccumulator(str(trained_run))
    accumulator.Reload()
    assert "density" in accumulator.Tags()["images"]
    assert (trained_run / "hparams.yaml").read_text().count("class_path: lvm_lightning.objectives.Exact") == 1
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()


def test_checkpoint_evaluated_in_a_fresh_process(trained_run, tmp_path):
    output = tmp_path / "report.json"
    result = run_tool(
        ["-m", "lvm_lightning.evaluate", str(trained_run / "checkpoints" / "last.ckpt"), "--num_samples", "200", "--output", str(output)], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    estimates = report["estimates"]
    assert set(estimates) >= {"exact", "prior_sampling", "importance_sampling", "elbo"}
    for name, entry in estimates.items():
        assert entry["num_points"] == 500 and entry["stderr"] > 0 and np.isfinite(entry["mean"]), name
    assert estimates["importance_sampling"]["num_samples"] == 200
    assert abs(estimates["importance_sampling"]["mean"] - estimates["exact"]["mean"]) < 0.05
    assert estimates["elbo"]["mean"] <= estimates["exact"]["mean"] + 1e-3
    assert report["true_log_px"]["num_points"] == 500
    assert "importance_sampling" in result.stdout and "true density" in result.stdout


def test_evaluation_on_a_user_npy_file(trained_run, tmp_path):
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(64, 2)))
    result = run_tool(
        [
            "-m",
            "lvm_lightning.evaluate",
            str(trained_run / "checkpoints" / "last.ckpt"),
            "--data_path",
            "points.npy",
            "--num_samples",
            "50",
            "--output",
            "r.json",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["estimates"]["exact"]["num_points"] == 64 and "true_log_px" not in report


def test_evaluation_runs_the_chosen_estimators_and_reports_its_cost(trained_run):
    report = evaluate.evaluate_checkpoint(
        str(trained_run / "checkpoints" / "last.ckpt"), num_samples=20, gap_points=0, estimators=["importance_sampling", "elbo"]
    )
    assert list(report["estimates"]) == ["importance_sampling", "elbo"]
    cost = report["cost"]
    assert cost["seconds"] > 0 and cost["seconds_per_point"] == cost["seconds"] / 500 and cost["peak_memory_bytes"] > 0


def test_load_from_checkpoint_needs_no_config(trained_run):

    module = LVMModule.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert isinstance(module.estimator, Exact) and isinstance(module.lvm, MixtureModel) and module.lvm.enumerable


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.py", "fit", "--model.lvm", "lvm_lightning.models.VAE"], "needs an enumerable latent"),
        (["train.py", "fit", "--model.estimator", "lvm_lightning.objectives.ImportanceSampling", "--model.estimator.num_samples", "0"], "num_samples >= 1"),
        (["train.py", "fit", "--config", "CONFIGS/numpy_file.yaml", "--data.path", "missing.npy"], "not found"),
        (["train.py", "fit", "--config", "CONFIGS/numpy_file.yaml", "--data.path", "wrong_shape.npy"], "expected N×D"),
        (["train.py", "fit", "--config", "CONFIGS/numpy_file.yaml", "--data.path", "with_nan.npy"], "NaN"),
        (["train.py", "fit", "--config", "CONFIGS/numpy_file.yaml", "--data.path", "huge.npy", "--data.standardize", "false"], "standardize the data"),
        (["-m", "lvm_lightning.evaluate", "no/such.ckpt"], "not found"),
        (["-m", "lvm_lightning.evaluate", "not_a_checkpoint.ckpt"], "not an lvm_lightning checkpoint"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, args, message):
    np.save(tmp_path / "wrong_shape.npy", np.ones((4, 3, 2)))
    np.save(tmp_path / "with_nan.npy", np.array([[1.0, np.nan]] * 5))
    np.save(tmp_path / "huge.npy", np.full((20, 2), 1e30, dtype=np.float32))
    (tmp_path / "not_a_checkpoint.ckpt").write_text("hello")
    args = [str(ROOT / a) if a == "train.py" else a.replace("CONFIGS", str(ROOT / "configs")) for a in args]
    result = run_tool(args, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.batch_size", "0"], "batch sizes must be >= 1"),
        (["--model.optimizer.init_args.lr", "-1"], "lr must be >= 0"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "real.npy", "--model.lvm.likelihood", "bernoulli"], "needs binary values"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "huge.npy"], "beyond float32"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "huge32.npy", "--data.standardize", "false"], "values up to |x| = 1e+30, beyond the 1e+06"),
        (["--amortization_gap.split", "train"], "amortization_gap.split"),
        (["--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "arrays.npz"], "is a .npz archive (arrays: a, b)"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "text.npy"], "is not a .npy file of numbers"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "no_rows.npy"], "needs at least one row"),
        (["--config", "CONFIGS/numpy_file.yaml", "--data.path", "empty_file.npy"], "is not a .npy file of numbers"),
        (["--config", "binary.npy"], "is binary: pass a YAML config"),
        (["--model.lvm.encoder_hidden", "[-5]"], "layer widths must be >= 1"),
        (["--trainer.accelerator", "tpu"], "a package this run needs is missing"),
        (["--config", "CONFIGS/numpy_file.yaml"], "missing --data.path"),
        (["--config", "empty.yaml"], "the config file is empty"),
        (["--config", "no_such_config"], "mixture_vae"),  # neither a file nor a shipped config: the shipped ones are listed
        (["--ckpt_path", "truncated.ckpt"], "damaged or truncated"),
        (["--ckpt_path", "old/last.ckpt"], "not found"),
    ],
)
def test_bad_training_input_is_one_line_before_a_run_folder(tmp_path, monkeypatch, capsys, args, message):
    """The same path as the subprocess cases above, in-process to stay fast: one 'error:' line, exit code 2, no run folder."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "real.npy", np.random.default_rng(0).normal(size=(50, 3)))
    np.save(tmp_path / "huge.npy", np.full((50, 3), 1e300))
    np.save(tmp_path / "huge32.npy", np.where(np.arange(150).reshape(50, 3) % 7, 1.0, 1e30).astype(np.float32))  # finite in float32
    np.savez(tmp_path / "arrays.npz", a=np.ones((5, 2)), b=np.ones(3))
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    np.save(tmp_path / "no_rows.npy", np.zeros((0, 3)))
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "empty_file.npy").write_bytes(b"")
    np.save(tmp_path / "binary.npy", np.ones((3, 2)))
    (tmp_path / "truncated.ckpt").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(a.replace("CONFIGS", str(ROOT / "configs")) for a in args)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def bernoulli_checkpoint(tmp_path_factory) -> Path:
    """A one-step Bernoulli model on 4 binary columns, trained through the CLI."""
    folder = tmp_path_factory.mktemp("bernoulli")
    np.save(folder / "bits.npy", np.random.default_rng(0).integers(0, 2, size=(60, 4)).astype(np.float32))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        main(["fit", "--config", str(ROOT / "configs" / "numpy_file.yaml"), "--data.path", "bits.npy", "--model.lvm.likelihood", "bernoulli",
              "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0"])  # fmt: skip
    return folder / "runs" / "numpy_file" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "0"], "must be >= 1"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--data_path", "grey.npy"], "needs binary values"),
        (["--output", "missing_folder/report.json"], "its folder does not exist"),
        (["--output", "."], "is a folder: pass a file name"),
        (["--output", "/proc/report.json"], "cannot be written"),
        (["--gap_points", "-1"], "--gap_points and --bdmc must be >= 0"),
        (["--bdmc", "-2"], "--gap_points and --bdmc must be >= 0"),
        (["--data_path", "bits.npy", "--estimators", "ais", "--ais.num_steps", "0"], "AIS needs num_steps"),
        (["--data_path", "bits.npy", "--estimators", "ais", "--ais.init", "posterior"], "ais.init"),
        (
            ["--data_path", "bits.npy", "--estimators", "exact"],
            "unknown or inapplicable estimators ['exact']: choose among prior_sampling, importance_sampling, elbo, ais",
        ),
        (["--data_path", "empty.npy"], "is not a .npy file of numbers"),
    ],
)
def test_bad_evaluation_input_is_one_line(bernoulli_checkpoint, tmp_path, capsys, args, message):
    np.save(tmp_path / "grey.npy", np.random.default_rng(0).uniform(size=(20, 4)))
    np.save(tmp_path / "bits.npy", np.ones((3, 4), dtype=np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(bernoulli_checkpoint), *(str(tmp_path / a) if a.endswith(".npy") else a for a in args)])
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0]


def test_evaluation_runs_ais_bdmc_and_gaps_with_ais(bernoulli_checkpoint, tmp_path, capsys):
    """--estimators ais gives the JSON key 'ais' with its schedule and HMC diagnostics, --bdmc the sandwich on simulated points,
    --gap_log_px ais the gaps' log p(x) by AIS from q*, --gap_family local_flow a second decomposition; the stdout table names them."""
    np.save(tmp_path / "bits.npy", np.random.default_rng(1).integers(0, 2, size=(12, 4)).astype(np.float32))
    schedule = ["--ais.num_steps", "30", "--ais.num_chains", "4", "--ais.leapfrog_steps", "2"]
    evaluate.main([str(bernoulli_checkpoint), "--data_path", str(tmp_path / "bits.npy"), "--estimators", "importance_sampling,ais", *schedule,
                   "--bdmc", "8", "--gap_points", "4", "--gap.max_steps", "20", "--gap_log_px", "ais", "--gap_family", "local_flow",
                   "--output", str(tmp_path / "r.json")])  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    ais = report["estimates"]["ais"]
    assert list(report["estimates"]) == ["importance_sampling", "ais"] and ais["num_points"] == 12 and ais["num_samples"] == 4
    assert ais["settings"]["num_steps"] == 30 and 0 < ais["acceptance_rate"] <= 1 and ais["step_size"] > 0
    # Four binary columns: log p(x) lies in (−4 log 2 − a few nats, 0), and AIS agrees with importance sampling within a nat.
    assert -8 < ais["mean"] < 0 and abs(ais["mean"] - report["estimates"]["importance_sampling"]["mean"]) < 1
    sandwich = report["bdmc"]
    assert sandwich["lower"]["num_points"] == 8 and sandwich["width"]["mean"] == pytest.approx(sandwich["upper"]["mean"] - sandwich["lower"]["mean"], abs=1e-5)
    assert report["gaps"]["log_px_method"] == "AIS from q*, T=30 (sigmoid), 4 chains, 2 leapfrog steps"
    second = report["gaps_in_family"]  # the same decoder with a flow per point as q*, started from the same q_φ
    assert second["family"] == "local_flow" and second["num_points"] == 4
    assert second["elbo_amortized"] == pytest.approx(report["gaps"]["elbo_amortized"], abs=0.5)  # one q_φ, other ELBO draws
    out = capsys.readouterr().out
    assert "BDMC on 8 simulated points" in out and "q* local_flow" in out


def test_a_loss_gone_nan_stops_the_run_at_that_step_with_one_line(tmp_path, monkeypatch, capsys):
    """A learning rate of 1e30 throws the weights to ±1e30 at the first step: the next step's loss overflows, and the run stops there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.optimizer.init_args.lr", "1e30", "--trainer.max_epochs", "3", *FAST, *QUIET])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "the training loss became NaN or infinite (" in line and "log p(x|z) non-finite) at step 1 (epoch 0)" in line, line
    assert "last good checkpoint: none yet" in line and line.endswith("(--model.optimizer.init_args.lr)")  # data of scale 5: the step size is at fault
    assert not list(tmp_path.glob("runs/default/version_0/checkpoints/*.ckpt"))  # no NaN model saved


def test_lvm_debug_shows_the_traceback_instead(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LVM_DEBUG", "1")
    with pytest.raises(Exception, match="batch sizes must be >= 1"):
        main(["fit", "--data.batch_size", "0"])


@pytest.mark.parametrize("every, logged", [(0, 0), (3, 13)])  # 40 steps: written at steps 3, 6, …, 39
def test_training_metrics_are_logged_on_lightnings_steps_only(tmp_path, monkeypatch, every, logged):
    monkeypatch.chdir(tmp_path)
    main(["--trainer.max_epochs", "1", "--trainer.log_every_n_steps", str(every), "--trainer.enable_progress_bar", "false", *QUIET])
    run = tmp_path / "runs" / "default" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(scalars(run).get("train/loss", [])) == logged


def test_the_default_run_is_the_mixture_exact_config(capsys):
    """``python train.py`` and ``--config configs/mixture_exact.yaml`` differ only in the run folder's name."""

    def printed(args: list[str]) -> str:
        with pytest.raises(SystemExit):
            main(["fit", *args, "--print_config"])
        return capsys.readouterr().out

    default, config = printed([]), printed(["--config", str(ROOT / "configs" / "mixture_exact.yaml")])
    assert "name: default" in default and default.replace("name: default", "name: mixture_exact") == config


def test_output_to_a_file_is_one_line_per_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["--trainer.max_epochs", "2", *FAST[2:], *QUIET, "--density_plot.every_n_epochs", "0"])  # the progress bar as shipped
    out = capsys.readouterr()  # captured: stdout is no terminal, as in a log file
    lines = [line for line in out.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "val log p(x): elbo" in lines[1]
    assert "\r" not in out.out + out.err


def test_no_subcommand_means_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["--trainer.max_epochs", "1", *FAST, *QUIET, "--density_plot.every_n_epochs", "0"])
    assert "run folder" in capsys.readouterr().out
    assert (tmp_path / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_runs(config, tmp_path, monkeypatch):
    if config.startswith(("mnist", "fashion")):
        pytest.skip("image configs are exercised by the image tests")
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / config),
        "--trainer.fast_dev_run",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    if config.startswith("numpy_"):
        np.save(tmp_path / "mine.npy", np.random.default_rng(0).normal(size=(2000, 4)))  # two batches at least
        args += ["--data.path", "mine.npy"]
    seen = {}
    monkeypatch.setattr(LVMCLI, "after_fit", lambda cli: seen.update(trainer=cli.trainer, model=cli.model))
    main(args)
    stated = yaml.safe_load((ROOT / "configs" / config).read_text())["model"]
    trainer, model = seen["trainer"], seen["model"]
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss"]))  # two finite training steps
    for part in ("lvm", "estimator"):  # the config's own classes, not the defaults'
        assert f"{type(getattr(model, part)).__module__}.{type(getattr(model, part)).__name__}".endswith(stated[part]["class_path"].rpartition(".")[2])


def test_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path, monkeypatch):
    """4 epochs straight vs 2 epochs, then resumed from last.ckpt to 4: the same weights to the last bit."""
    monkeypatch.chdir(tmp_path)
    common = [
        "--model.estimator",
        "lvm_lightning.objectives.ImportanceSampling",
        "--model.estimator.num_samples",
        "3",
        *FAST,
        *QUIET,
        "--density_plot.every_n_epochs",
        "0",
    ]
    main(["fit", "--trainer.max_epochs", "4", "--trainer.logger.init_args.name", "straight", *common])
    main(["fit", "--trainer.max_epochs", "2", "--trainer.logger.init_args.name", "interrupted", *common])
    last = tmp_path / "runs" / "interrupted" / "version_0" / "checkpoints" / "last.ckpt"
    main(
        [
            "fit",
            "--trainer.max_epochs",
            "4",
            "--trainer.logger.init_args.name",
            "interrupted",
            "--trainer.logger.init_args.version",
            "0",
            "--ckpt_path",
            str(last),
            *common,
        ]
    )
    straight = torch.load(tmp_path / "runs" / "straight" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(last, weights_only=False)
    assert straight["epoch"] == resumed["epoch"] == 3
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


def test_ddp_on_two_cpu_processes(tmp_path):
    """Lightning's DDP (gloo, 2 processes): each rank trains on its shard; validation metrics are reduced across ranks."""
    args = [
        str(ROOT / "train.py"),
        "fit",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "2",
        *FAST,
        "--amortization_gap.every_n_epochs",
        "1",
        "--amortization_gap.optimizer.max_steps",
        "50",
    ]
    result = run_tool(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder") == 1
    logged = scalars(tmp_path / "runs" / "default" / "version_0")
    assert len(logged["val/log_px/exact"]) == 2 and len(logged["gap/amortization_gap"]) == 2
    assert logged["val/log_px/elbo"][-1] <= logged["val/log_px/exact"][-1] + 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_accelerator_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.accelerator", "gpu", *FAST])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "there is no GPU here: use --trainer.accelerator cpu" in line
    assert not (tmp_path / "runs").exists()


def test_evaluation_errors_are_one_line_with_warnings_shown(trained_run, tmp_path):
    """As a user runs it, Python's warnings on: nothing but the error line on stderr."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    args = [sys.executable, "-m", "lvm_lightning.evaluate", str(trained_run / "checkpoints" / "last.ckpt"), "--num_samples", "0"]
    result = subprocess.run(args, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: --num_samples")


@pytest.mark.skipif((os.cpu_count() or 1) > 4, reason="starts one process more than the machine has cores")
def test_more_processes_than_cores_is_warned(tmp_path):
    devices = (os.cpu_count() or 1) + 1
    args = [str(ROOT / "train.py"), "fit", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", str(devices)]
    result = run_tool([*args, "--trainer.fast_dev_run", "1", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: {devices} processes on {os.cpu_count()} CPU cores: each step waits for the slowest; pass --trainer.devices" in result.stderr


def test_a_class_given_in_a_config_takes_its_own_defaults_not_the_default_classs(tmp_path, monkeypatch, capsys):
    """LinearGaussian's linear encoder and NumpyData's batch size, not MixtureModel's MLP and GaussianMixtureData's (jsonargparse carries them)."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(50, 3)))
    (tmp_path / "own.yaml").write_text(
        "model: {lvm: {class_path: lvm_lightning.models.LinearGaussian, init_args: {latent_dim: 2}}}\n"
        "data: {class_path: lvm_lightning.data.NumpyData, init_args: {path: x.npy}}\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", "own.yaml", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    own = {cls: inspect.signature(cls).parameters for cls in (LinearGaussian, NumpyData)}
    assert config["model"]["lvm"]["init_args"]["encoder_hidden"] == list(own[LinearGaussian]["encoder_hidden"].default)
    assert config["data"]["init_args"]["eval_batch_size"] == own[NumpyData]["eval_batch_size"].default
    assert config["model"]["estimator"]["class_path"] == "lvm_lightning.objectives.Exact"  # a default where none is named


def test_a_shipped_config_name_is_not_hidden_by_a_folder_of_that_name(tmp_path, monkeypatch):
    from lvm_lightning import shipped

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mixture_vae").mkdir()  # e.g. the run folder of a run logged into this folder
    assert shipped.with_shipped_configs(["fit", "--config", "mixture_vae"]) == ["fit", "--config", str(shipped.FOLDER / "mixture_vae.yaml")]
    (tmp_path / "mixture_exact").write_text("model: {}\n")  # a file of that name is the user's own config
    assert shipped.with_shipped_configs(["--config=mixture_exact"]) == ["--config=mixture_exact"]
