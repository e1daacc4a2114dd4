"""The CUSTOM SCALARS layout: written once by a run through the command line, its charts' regexes matching tags the run logged."""

import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from lvm_lightning.cli import main

from conftest import ROOT, run_tool

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


def test_a_run_writes_one_layout_whose_charts_hold_the_logged_tags(tmp_path):
    layouts, tags = read_run(fit(tmp_path))
    assert len(layouts) == 1
    charts = {chart.title: list(chart.multiline.tag) for category in layouts[0].category for chart in category.chart}
    assert len(charts) == 3
    matched = {title: sorted(tag for tag in tags if any(re.match(regex, tag) for regex in regexes)) for title, regexes in charts.items()}
    by_kind = {kind: next(found for title, found in matched.items() if title.startswith(kind)) for kind in ("log p(x)", "ESS", "gaps")}
    # What the run logs (tests/test_cli.py checks the estimators' tags): every estimator with the true density on one chart.
    assert by_kind["log p(x)"] == [f"val/log_px/{name}" for name in sorted(("elbo", "exact", "importance_sampling", "prior_sampling", "true"))]
    assert by_kind["ESS"] == ["val/ess_fraction/importance_sampling", "val/ess_fraction/prior_sampling"]
    assert by_kind["gaps"] == ["gap/amortization_gap", "gap/approximation_gap"]


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
