"""Files written whole or not at all: a kill at any instant leaves the old file or the new one, never part of one."""

import io
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lvm_lightning.checkpoints import read_file
from lvm_lightning.errors import UsageError


def write_atomically(path: Union[str, Path], data: bytes) -> None:
    """Writes ``data`` to a hidden file beside ``path``, flushes it to the disk, then renames it to ``path`` (atomic within a folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, not in /tmp: a rename across file systems is a copy, which a kill can cut short.
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def check_writable(path: Union[str, Path], option: str) -> None:
    """Raises UsageError naming ``option`` unless ``path`` can be written by ``write_atomically``: checked before a command's minutes of work, not after."""
    resolved = Path(path).resolve()
    if resolved.is_dir():
        raise UsageError(f"{option} {path} is a folder: pass a file name, e.g. {Path(path) / 'report.json'}")
    if not resolved.parent.is_dir():
        raise UsageError(f"{option} {path}: its folder does not exist; create it first")
    probe = resolved.with_name(f".{resolved.name}.partial")  # what write_atomically will create; os.access says yes to root even in /proc
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{option} {path} cannot be written ({error.strerror}): pass a path in a folder you can write") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save checkpoints, written by ``write_atomically`` (Lightning's own writer renames from /tmp, which copies across
    file systems), and read for a resume by ``checkpoints.read_file``, as every other reader of a checkpoint does."""

    def load_checkpoint(self, path: Union[str, Path], map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        if "://" in str(path):  # remote storage: the user's own choice of file, read by Lightning's loader (weights only)
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_file(path, weights_alone=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Union[str, Path], storage_options: Optional[Any] = None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote storage: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getvalue())
