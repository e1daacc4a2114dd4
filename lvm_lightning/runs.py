"""Opening a run someone trained, perhaps someone else: its module and its data, each rebuilt by the safe loader (checkpoints.py)."""

from typing import Any, Optional, Sequence

from lvm_lightning.checkpoints import load_data, load_module, read_file
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.errors import UsageError
from lvm_lightning.module import LVMModule


def load_run(path: str, trusted: Sequence[str] = (), map_location: Any = None) -> tuple[LVMModule, dict[str, Any]]:
    """(the module a checkpoint holds, the checkpoint as ``read_checkpoint`` reads it), the file read once, only checked classes built."""
    checkpoint = read_file(path)
    return load_module(LVMModule, checkpoint, path, map_location, trusted=trusted), checkpoint


def run_data(checkpoint: dict[str, Any], source: str, trusted: Sequence[str] = (), data_root: Optional[str] = None) -> SplitData:
    """The training run's data module with its splits loaded, rebuilt from the class and arguments the checkpoint stores; its
    folders, files and downloads are this machine's (``data_root``, or the class's defaults), never the checkpoint's."""
    datamodule = load_data(checkpoint, source, trusted, {} if data_root is None else {"root": data_root})
    if not isinstance(datamodule, SplitData):
        raise UsageError(f"{type(datamodule).__name__} is not a lvm_lightning.data.SplitData: pass --data_path FILE.npy")
    return datamodule
