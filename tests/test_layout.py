"""What TensorBoard shows of a run through the command line: a run per estimator under shared tags, the CUSTOM SCALARS layout over them, HPARAMS."""

import re
from pathlib import Path

import pytest
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginEventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from lvm_lightning.callbacks import ScalarLayout
from lvm_lightning.cli import main
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.models import MixtureModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact

from conftest import ROOT, quiet_trainer, run_tool

TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--data.num_train",
    "500",
    "--data.num_val",
    "200",
    "--data.num_test",
    "200",
    "--density_plot.every_n_epochs",
    "0",
    "--amortization_gap.every_n_epochs",
    "1",
    "--amortization_gap.num_points",
    "32",
]


def read_run(run_dir: Path) -> tuple[list[layout_pb2.Layout], list[str]]:
    """(every layout written to the run's event files, the scalar tags logged), read back as TensorBoard reads them."""
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    tensors = accumulator.Tags()["tensors"]
    events = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG) if metadata.CONFIG_SUMMARY_TAG in tensors else []
    return [layout_pb2.Layout.FromString(event.tensor_proto.string_val[0]) for event in events], accumulator.Tags()["scalars"]


def fit(cwd: Path, *extra: str) -> Path:
    """A one-epoch default run (the Gaussian mixture, exact objective) in a fresh process; its run folder."""
    result = run_tool([str(ROOT / "train.py"), "fit", *TINY, *extra], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "runs" / "default" / "version_0"


def estimator_runs(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """{estimator: {tag: values}} of the per-estimator TensorBoard runs inside a run folder."""
    runs = {}
    for folder in sorted((run_dir / "estimators").iterdir()):
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        runs[folder.name] = {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    return runs


def test_each_estimator_is_a_run_of_its_own_under_shared_tags_and_the_layout_charts_them(tmp_path):
    run_dir = fit(tmp_path)
    layouts, tags = read_run(run_dir)
    runs = estimator_runs(run_dir)
    # One run per estimator and one for the true density: TensorBoard gives each its own colour on the shared tags.
    assert sorted(runs) == sorted(("elbo", "exact", "importance_sampling", "prior_sampling", "true"))
    for name in ("elbo", "exact", "importance_sampling", "true"):
        assert runs[name]["estimators/val/log_px"] == pytest.approx([read_scalar(run_dir, f"val/log_px/{name}")])
    # Prior sampling sits far below: its own tag, so that it does not squash the others' axis.
    assert "estimators/val/log_px" not in runs["prior_sampling"] and len(runs["prior_sampling"]["estimators/val/log_px_from_prior"]) == 1
    assert sorted(name for name, run in runs.items() if "estimators/val/ess_fraction" in run) == ["importance_sampling", "prior_sampling"]
    assert len(layouts) == 1
    charts = {chart.title: chart for category in layouts[0].category for chart in category.chart}
    estimator_tags = {tag for run in runs.values() for tag in run}
    multiline = {title: chart.multiline.tag for title, chart in charts.items() if chart.HasField("multiline")}
    matched = {title: sorted(tag for tag in estimator_tags if any(re.match(regex, tag) for regex in regexes)) for title, regexes in multiline.items()}
    assert sorted(matched.values()) == [["estimators/val/ess_fraction"], ["estimators/val/log_px"], ["estimators/val/log_px_from_prior"]]
    assert all("nats per point" in title for title in charts if "log p(x)" in title or "gap" in title)
    # The gaps: value and band ± one paired standard error, each a tag of the run.
    margins = [series for chart in charts.values() if chart.HasField("margin") for series in chart.margin.series]
    assert sorted(series.value for series in margins) == ["gap/amortization_gap", "gap/approximation_gap"]
    for series in margins:
        assert {series.value, series.lower, series.upper} <= set(tags)
        lower, value, upper = (read_scalar(run_dir, tag) for tag in (series.lower, series.value, series.upper))
        assert lower < value < upper and read_scalar(run_dir, f"{series.value}/stderr") == pytest.approx(upper - value, rel=1e-4)
    assert not [tag for tag in tags if tag.startswith("gap/refined_elbo")]  # the refinement curve is the figure gap/refinement


def read_scalar(run_dir: Path, tag: str) -> float:
    """The last value of ``tag`` in the run folder's own event files."""
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return accumulator.Scalars(tag)[-1].value


def hparams_of(run_dir: Path) -> tuple[dict[str, object], list[str]]:
    """(the HPARAMS entry's settings, its result columns) as TensorBoard's HPARAMS tab reads them."""
    accumulator = PluginEventAccumulator(str(run_dir))
    accumulator.Reload()
    content = lambda tag: plugin_data_pb2.HParamsPluginData.FromString(accumulator.SummaryMetadata(tag).plugin_data.content)  # noqa: E731
    start = content(hparams_metadata.SESSION_START_INFO_TAG).session_start_info.hparams
    settings = {name: value.string_value or value.number_value for name, value in start.items()}
    return settings, [info.name.tag for info in content(hparams_metadata.EXPERIMENT_TAG).experiment.metric_infos]


def test_hparams_name_estimator_model_and_k_with_no_placeholder_metric(tmp_path):
    run_dir = fit(tmp_path, "--model.estimator", "lvm_lightning.objectives.ImportanceSampling", "--model.estimator.num_samples", "5",
                  "--trainer.limit_val_batches", "0")  # fmt: skip
    settings, results = hparams_of(run_dir)
    assert settings["estimator"] == "ImportanceSampling" and settings["model"] == "MixtureModel" and settings["K"] == 5
    assert settings["optimizer"] == "Adam" and settings["lr"] == pytest.approx(0.01) and settings["lr_scheduler"] == "none"
    assert not [name for name in settings if name.startswith("_")]  # no _instantiator
    assert results[0] == "val/log_px" and "hp_metric" not in results
    _, tags = read_run(run_dir)
    assert "hp_metric" not in tags and "val/log_px" not in tags  # no validation ran: no value at all, not a −1 that sorts first


@pytest.mark.parametrize(
    "extra, tensorboard",
    [
        (["--scalar_layout.enabled", "false"], True),
        (["--trainer.logger", "{class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: logs}}"], False),
    ],
)
def test_the_layout_is_off_when_asked_or_without_tensorboard(tmp_path, monkeypatch, extra, tensorboard):
    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY, *extra])  # in this process: the option's effect, not a fresh start, is under test
    event_files = list(tmp_path.rglob("events.out.tfevents.*"))
    if tensorboard:  # TensorBoard logged the run's scalars, but no layout
        assert event_files and all(read_run(path.parent)[0] == [] for path in event_files)
    else:  # the CSV logger logged it, and no TensorBoard file was written for a layout
        assert list(tmp_path.rglob("metrics.csv")) and not event_files


def test_each_estimators_run_shows_each_epoch_once_after_a_resume(tmp_path, monkeypatch):
    """Killed when epochs 1 and 2 were logged but only epoch 0's checkpoint survived: resumed, every estimator's run has each point once."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", *TINY[:-4], "--amortization_gap.every_n_epochs", "0", "--trainer.max_epochs", "3", "--checkpoint.save_top_k", "-1"]
    main(args)
    folder = tmp_path / "runs" / "default" / "version_0"
    before = estimator_runs(folder)
    (epoch_0,) = (folder / "checkpoints").glob("epoch=0-*.ckpt")
    for later in [*(folder / "checkpoints").glob("epoch=[12]-*.ckpt"), folder / "checkpoints" / "last.ckpt"]:
        later.unlink()
    main([*args, "--ckpt_path", str(epoch_0)])
    after = estimator_runs(folder)
    assert len(after["exact"]["estimators/val/log_px"]) == 3 and after == before
    accumulator = PluginEventAccumulator(str(folder))
    accumulator.Reload()
    assert len(accumulator.Tensors(hparams_metadata.SESSION_START_INFO_TAG)) == 1  # the entry of the first start, not written again


@pytest.mark.parametrize("default_hp_metric", [False, True])
def test_one_hparams_entry_a_run_whatever_the_loggers_default_hp_metric(tmp_path, default_hp_metric):
    """A logger built in Python keeps Lightning's default (an entry with hp_metric = −1): ScalarLayout adds no second entry to it."""
    logger = TensorBoardLogger(str(tmp_path), name="python", default_hp_metric=default_hp_metric)
    trainer = quiet_trainer(max_epochs=1, logger=logger, callbacks=[ScalarLayout()], enable_checkpointing=False, limit_train_batches=1)
    trainer.fit(LVMModule(MixtureModel(), Exact()), datamodule=GaussianMixtureData(num_train=100, num_val=50, num_test=50))
    accumulator = PluginEventAccumulator(logger.log_dir)
    accumulator.Reload()
    assert len(accumulator.Tensors(hparams_metadata.SESSION_START_INFO_TAG)) == 1
    settings, results = hparams_of(Path(logger.log_dir))
    assert ("estimator" in settings, "hp_metric" in results) == (not default_hp_metric, default_hp_metric)
