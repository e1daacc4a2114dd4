"""Opening a run someone trained, perhaps someone else: its module and its data, each rebuilt by the safe loader (checkpoints.py)."""

from typing import Any, Optional, Sequence

from torch import Tensor

from lvm_lightning.checkpoints import data_recipe, load_data, load_module, read_file, stored_file
from lvm_lightning.data.numpy_file import fingerprint, load_array
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.errors import UsageError
from lvm_lightning.module import LVMModule


def load_run(path: str, trusted: Sequence[str] = (), map_location: Any = None) -> tuple[LVMModule, dict[str, Any]]:
    """(the module a checkpoint holds, the checkpoint as ``read_checkpoint`` reads it), the file read once, only checked classes built."""
    checkpoint = read_file(path)
    return load_module(LVMModule, checkpoint, path, map_location, trusted=trusted), checkpoint


def file_rows(checkpoint: dict[str, Any], source: str, path: str, trusted: Sequence[str] = ()) -> tuple[Tensor, dict[str, Any]]:
    """The rows of the .npy file ``path`` to evaluate, and what they are: the run's own test split where the file holds the very rows
    the run split (wherever it lies now), else every row."""
    rows = load_array(path)
    found = data_recipe(checkpoint, source, trusted)
    if (
        found is not None
        and stored_file(checkpoint, found.cls, "path", "sha256") == fingerprint(rows)
        and stored_file(checkpoint, found.cls, "test_path") is None
    ):
        return load_data(checkpoint, source, trusted, {"path": path}).splits["test"], {"path": path, "split": "test", "the_runs_file": True}
    return rows, {"path": path, "split": "all rows", "the_runs_file": False}


def run_data(checkpoint: dict[str, Any], source: str, trusted: Sequence[str] = (), data_root: Optional[str] = None) -> SplitData:
    """The training run's data module with its splits loaded, rebuilt from the class and arguments the checkpoint stores; its
    folders, files and downloads are this machine's (``data_root``, or the class's defaults), never the checkpoint's."""
    datamodule = load_data(checkpoint, source, trusted, {} if data_root is None else {"root": data_root})
    if not isinstance(datamodule, SplitData):
        raise UsageError(f"{type(datamodule).__name__} is not a lvm_lightning.data.SplitData: pass --data_path FILE.npy")
    return datamodule
