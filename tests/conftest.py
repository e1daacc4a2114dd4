"""Shared helpers: the repository root, and running the command-line tools as a new user would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def run_tool(args: list[str], cwd: Path, timeout: float = 300, warnings: str = "ignore") -> subprocess.CompletedProcess:
    """Runs ``python ARGS`` in a fresh process from ``cwd`` with the repository importable, Python's warnings filtered by ``warnings``
    (PYTHONWARNINGS; "default" shows them as a user sees them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": warnings}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread: the models are tiny, so a second thread only adds synchronization."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    """Double precision by default (oracle comparisons to 1e-9, exact zeros), restored afterwards so other tests keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def quiet_trainer(**options) -> "pl.Trainer":  # noqa: F821
    """A one-device CPU Trainer without progress bar or model summary; ``options`` add to or replace those."""
    import pytorch_lightning as pl

    return pl.Trainer(**{"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1, **options})


def module_from_config(config: Path, data_dim: int) -> "LVMModule":  # noqa: F821
    """The LVMModule that a shipped config describes."""
    import yaml

    from lvm_lightning.cli import build_module

    return build_module(yaml.safe_load(config.read_text())["model"], data_dim)


FAST = ["--trainer.enable_progress_bar", "false", "--data.num_train", "1000", "--data.num_val", "500", "--data.num_test", "500"]
QUIET = ["--amortization_gap.every_n_epochs", "0"]


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar a TensorBoard run folder holds, by tag, in step order."""
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def gap_callback():
    """A small, fast amortization-gap callback: every epoch, 32 points, 30 steps of q*."""
    from lvm_lightning.callbacks import AmortizationGap
    from lvm_lightning.inference import LocalOptimizer

    return AmortizationGap(
        every_n_epochs=1, num_points=32, optimizer=LocalOptimizer(max_steps=30), refine_steps=(0, 10, 30), elbo_samples=10, log_px_samples=50
    )


def undocumented_options(parser: "argparse.ArgumentParser") -> list[str]:  # noqa: F821
    """The options and positionals, of ``parser`` and of its subcommands' parsers, that have no help text (--help aside)."""
    import argparse

    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not (action.help or "").strip():
            missing.append(", ".join(action.option_strings) or action.dest)
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"{name} {option}" for name, sub in action.choices.items() for option in undocumented_options(sub)]
    return missing
