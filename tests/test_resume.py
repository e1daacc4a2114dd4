"""A run killed at any point resumes with the README's command and ends bit-identical, with one history in TensorBoard."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lvm_lightning.cli import main
from lvm_lightning.files import write_atomically

from conftest import FAST, QUIET, ROOT, scalars

COMMON = ["--model.estimator", "lvm_lightning.objectives.ImportanceSampling", "--model.estimator.num_samples", "3", *FAST, *QUIET]
COMMON += ["--density_plot.every_n_epochs", "0"]


def train(name: str, epochs: int, *extra: str) -> None:
    main(["fit", "--trainer.max_epochs", str(epochs), "--trainer.logger.init_args.name", name, *COMMON, *extra])


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first["epoch"] == second["epoch"] and first["global_step"] == second["global_step"]
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name


@pytest.fixture
def straight(tmp_path, monkeypatch) -> Path:
    """4 epochs uninterrupted: the run every resumed one must match."""
    monkeypatch.chdir(tmp_path)
    train("straight", 4)
    return tmp_path / "runs" / "straight" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_kill_between_the_two_checkpoint_writes_resumes_from_the_epochs_checkpoint(straight, tmp_path, capsys, damage):
    """Killed after epoch=1's checkpoint and before (or while) last.ckpt was written: the README's command takes epoch=1's."""
    train("killed", 2)
    checkpoints = tmp_path / "runs" / "killed" / "version_0" / "checkpoints"
    last = checkpoints / "last.ckpt"
    if damage == "missing":
        last.unlink()
    else:
        last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    train("killed", 4, "--ckpt_path", str(last))  # no --trainer.logger.init_args.version: the checkpoint's run folder is found
    said = capsys.readouterr().err
    assert "resuming from" in said and "epoch=1-step=" in said and ("missing" if damage == "missing" else "does not load") in said
    assert_same_weights(straight, last)
    assert [p.name for p in (tmp_path / "runs" / "killed").iterdir()] == ["version_0"]
    assert not [p.name for p in checkpoints.iterdir() if "-v" in p.name or p.name.startswith(".")]  # no -v1 copies, no partial files


def test_a_run_killed_before_its_first_checkpoint_starts_afresh_in_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train("straight", 2)
    folder = tmp_path / "runs" / "killed" / "version_0"
    folder.mkdir(parents=True)  # a kill during start-up or the first epoch leaves the folder, perhaps some events, and no checkpoint
    shutil.copy(next((tmp_path / "runs" / "straight" / "version_0").glob("events.*")), folder)
    train("killed", 2, "--ckpt_path", str(folder / "checkpoints" / "last.ckpt"))
    assert "has no checkpoint yet" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs" / "killed").iterdir()] == ["version_0"]
    assert_same_weights(tmp_path / "runs" / "straight" / "version_0" / "checkpoints" / "last.ckpt", folder / "checkpoints" / "last.ckpt")
    assert scalars(folder)["val/log_px/exact"] == scalars(tmp_path / "runs" / "straight" / "version_0")["val/log_px/exact"]  # the old events hidden


def test_tensorboard_shows_each_epoch_once_after_a_resume(tmp_path, monkeypatch):
    """Killed when epochs 1 and 2 were logged but only epoch 0's checkpoint survived: resumed, each epoch's point is there once."""
    monkeypatch.chdir(tmp_path)
    train("run", 3, "--checkpoint.save_top_k", "-1")
    folder = tmp_path / "runs" / "run" / "version_0"
    before = scalars(folder)
    (epoch_0,) = (folder / "checkpoints").glob("epoch=0-*.ckpt")
    for later in [*(folder / "checkpoints").glob("epoch=[12]-*.ckpt"), folder / "checkpoints" / "last.ckpt"]:
        later.unlink()
    train("run", 3, "--checkpoint.save_top_k", "-1", "--ckpt_path", str(epoch_0))
    after = scalars(folder)
    assert len(after["val/log_px/exact"]) == 3 and after == before  # the resumed run is bit-identical, so every curve is too


def test_a_damaged_checkpoint_with_nothing_to_fall_back_on_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "runs" / "x" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--ckpt_path", str(checkpoint), *FAST])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "damaged or truncated" in line


def test_json_written_atomically(tmp_path, monkeypatch):
    """A write cut short (here: the disk flush fails) leaves the previous report whole, and no partial file beside it."""
    report = tmp_path / "report.json"
    write_atomically(report, b'{"old": 1}')

    def fail(_: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError):
        write_atomically(report, b'{"new": 2}')
    assert report.read_bytes() == b'{"old": 1}'
    monkeypatch.undo()
    write_atomically(report, b'{"new": 2}')
    assert report.read_bytes() == b'{"new": 2}' and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_fault_drill_three_kills(tmp_path):
    """scripts/fault_drill.py, short: 3 SIGKILLs (start-up or training, a checkpoint write, …), resumed, bit-identical to the uninterrupted run."""
    args = ["--config", "mixture_exact", "--kills", "3", "--extra", "--trainer.max_epochs", "4", *FAST[2:], *QUIET]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_drill.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "kills: 3" in result.stdout and "0 of" in result.stdout


def test_no_fall_back_to_checkpoints_outside_a_run_folder(tmp_path, monkeypatch, capsys):
    """A damaged checkpoint among unrelated ones (not a run's checkpoints/ folder) is an error, not a resume from a stranger."""
    monkeypatch.chdir(tmp_path)
    train("other", 1)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shutil.copy(tmp_path / "runs" / "other" / "version_0" / "checkpoints" / "last.ckpt", shelf / "someone_elses.ckpt")
    (shelf / "mine.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--ckpt_path", str(shelf / "mine.ckpt"), *FAST])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "mine.ckpt" in line and "damaged or truncated" in line
