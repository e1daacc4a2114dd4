"""The user's own data: an N×D float array in a .npy file, split deterministically or given per split."""

import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from lvm_lightning.data.in_memory import InMemoryDataModule
from lvm_lightning.data.protocol import REQUIRED
from lvm_lightning.errors import UsageError


def fingerprint(rows: Tensor) -> str:
    """SHA-256 of an array's shape and float32 values: the same rows give the same string wherever the file lies."""
    digest = hashlib.sha256(str(tuple(rows.shape)).encode())
    digest.update(rows.contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_array(path: str) -> Tensor:
    """The N×D float32 tensor stored in ``path``; a UsageError saying what to fix otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"data file {str(file)!r} not found: give the path of an existing .npy file holding an N×D array")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError):  # numpy's own message would suggest loading it unsafely; an empty file is EOFError
        raise UsageError(f"{str(file)!r} is not a .npy file of numbers: save an N×D float array with numpy.save(path, array)") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        names = ", ".join(array.files)
        array.close()
        raise UsageError(f"{str(file)!r} is a .npz archive (arrays: {names}): save the one N×D array with numpy.save(path, array)")
    if array.ndim != 2:
        raise UsageError(f"{str(file)!r} holds an array of shape {array.shape}: expected N×D (2-D, one row per datapoint); reshape it")
    if min(array.shape) < 1:
        raise UsageError(f"{str(file)!r} holds an empty array of shape {array.shape}: it needs at least one row and one column")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UsageError(f"{str(file)!r} holds {array.dtype} values: expected real numbers")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)  # checked after the cast: 1e300 in float64 is infinite in float32
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise UsageError(
            f"{str(file)!r} has NaN or infinite values (or values beyond float32's ±3.4e38) in {len(rows)} rows (first: {rows[0]}): remove, impute or rescale them"
        )
    return torch.from_numpy(array)


class NumpyData(InMemoryDataModule):
    """Rows of ``path`` split at random (seeded) into train/val/test, unless val_path and test_path are given.

    ``standardize`` (None: unless every value is in [0, 1]): the model works in standard units, the map fitted to the training
    split and kept in the checkpoint, and reports every log p(x) in the file's own units (models/units.py)."""

    machine_arguments = {"path": REQUIRED, "val_path": None, "test_path": None}

    def __init__(
        self,
        path: str,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        seed: int = 0,
        standardize: Optional[bool] = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, standardize=standardize)
        self.save_hyperparameters()
        if (val_path is None) != (test_path is None):
            raise UsageError("give both --data.val_path and --data.test_path, or neither to split --data.path")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise UsageError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
        self.arrays = {"train": load_array(path)}
        if val_path is not None:
            self.arrays.update(val=load_array(val_path), test=load_array(test_path))
            widths = {name: a.shape[1] for name, a in self.arrays.items()}
            if len(set(widths.values())) > 1:
                raise UsageError(f"the split files have different numbers of columns {widths}: they must share D")
        elif len(self.arrays["train"]) < 3:
            raise UsageError(f"{path!r} has {len(self.arrays['train'])} rows: at least 3 are needed to split train/val/test")
        given = {"path": (path, "train"), "val_path": (val_path, "val"), "test_path": (test_path, "test")}
        # Kept in the checkpoint: where each file was, resolved, and what it held, so that evaluation can tell the run's own file.
        self.files = {
            name: {"path": str(Path(file).expanduser().resolve()), "sha256": fingerprint(self.arrays[split])} for name, (file, split) in given.items() if file
        }

    def state_dict(self) -> dict[str, Any]:
        """The files the run read: {argument: {'path': resolved, 'sha256': ``fingerprint`` of its rows}}."""
        return {"files": self.files}

    @property
    def data_dim(self) -> int:
        return self.arrays["train"].shape[1]

    def load_splits(self) -> dict[str, Tensor]:
        if len(self.arrays) == 3:
            return dict(self.arrays)
        data = self.arrays["train"]
        n = len(data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        num_val = max(1, round(n * self.hparams.val_fraction))
        num_test = max(1, round(n * self.hparams.test_fraction))
        test, val, train = order.split([num_test, num_val, n - num_val - num_test])
        return {"train": data[train], "val": data[val], "test": data[test]}
