"""A quiet console: each command's output, warnings shown as a user sees them, has none of Lightning's advertisements, its
lines about absent hardware, torch's _pytree deprecation, or (on resume) the warning that the run's checkpoint folder is not empty."""

import logging
import warnings
from pathlib import Path

import pytest

from lvm_lightning.console import DROPPED_LINES, RANK_ZERO_LOGGERS, quiet_console

from conftest import ROOT, run_tool

NOISE = ("💡", "litlogger", "litmodels", "LeafSpec", "_pytree", "TPU available", "GPU available: False", "exists and is not empty")
TINY = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.num_train", "300", "--data.num_val", "100",
        "--data.num_test", "100", "--density_plot.every_n_epochs", "0", "--amortization_gap.every_n_epochs", "0"]  # fmt: skip


def noise(result) -> list[str]:
    """The lines of a finished command's stdout and stderr that carry one of the NOISE phrases; it must have succeeded."""
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in (result.stdout + result.stderr).splitlines() if any(phrase in line for phrase in NOISE)]


def test_train_resume_evaluate_and_study_print_no_advertisement_or_deprecation(tmp_path: Path) -> None:
    train = [str(ROOT / "train.py"), "fit", *TINY]
    assert noise(run_tool(train, tmp_path, warnings="default")) == []
    checkpoint = tmp_path / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_tool([*train, "--trainer.max_epochs", "2", "--ckpt_path", str(checkpoint)], tmp_path, warnings="default")
    assert noise(resumed) == []
    evaluate = ["-m", "lvm_lightning.evaluate", str(checkpoint), "--num_samples", "5", "--gap_points", "4", "--gap.max_steps", "20"]
    assert noise(run_tool(evaluate, tmp_path, warnings="default")) == []
    study = ["-m", "lvm_lightning.study", "estimators", "--num_samples", "1", "2", "--repeats", "2", "--num_points", "20"]
    assert noise(run_tool(study, tmp_path, warnings="default")) == []


def test_the_filters_are_narrow(caplog: pytest.LogCaptureFixture) -> None:
    """Only the named messages go: other info lines on the same logger, and other warnings of the same kinds, pass."""
    quiet_console(resuming=True)
    quiet_console(resuming=True)  # a second call adds no second filter
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        assert len([f for f in logger.filters if getattr(f, "pattern", None) is DROPPED_LINES]) == 1
        with caplog.at_level(logging.INFO, logger=name):
            logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
            logger.info("TPU available: False, using: 0 TPU cores")
            logger.info("GPU available: True (cuda), used: True")
            logger.info("ImageGrids is off for this run: the data are not images (no image_shape)")
        assert [record.getMessage() for record in caplog.records] == [
            "GPU available: True (cuda), used: True",
            "ImageGrids is off for this run: the data are not images (no image_shape)",
        ]
        caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console(resuming=True)  # its filters stand before "always"
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead.", FutureWarning)
        warnings.warn("Checkpoint directory runs/default/version_0/checkpoints exists and is not empty.", UserWarning)
        warnings.warn("some other deprecation", FutureWarning)
        warnings.warn("The number of training batches (2) is smaller than the logging interval", UserWarning)
    assert [str(w.message) for w in caught] == ["some other deprecation", "The number of training batches (2) is smaller than the logging interval"]
