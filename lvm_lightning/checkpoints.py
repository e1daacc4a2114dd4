"""Reading a checkpoint that someone else wrote without running their code.

A checkpoint is unpickled with ``weights_only=True`` (tensors and plain containers only, no
arbitrary objects), and every class it names (the ``class_path`` entries that LightningCLI stores
for each part, and Lightning's instantiator) must be lvm_lightning's own, torch.nn's, or under a
module the user trusts by name. Only then is anything imported or called.
"""

import importlib
import io
import pickle
import re
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch

from lvm_lightning.errors import UsageError

OWN = ("lvm_lightning", "torch.nn")
INSTANTIATORS = ("pytorch_lightning.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module")
CLASS_KEYS = ("class_path", "_class_path")


def named_classes(tree: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(location, name) for every class path and instantiator in nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            here = f"{where}.{key}" if where else str(key)
            if key in CLASS_KEYS or key == "_instantiator":
                yield here, value
            else:
                yield from named_classes(value, here)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from named_classes(value, f"{where}[{i}]")


def _under(name: str, modules: Sequence[str]) -> bool:
    return any(name == module or name.startswith(f"{module}.") for module in modules)


def import_trusted(trusted: Sequence[str]) -> None:
    """Imports each module the user trusts (a module, or the module of a class path), so that its classes can be found."""
    for name in trusted:
        module = name
        while module:
            try:
                importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module = module.rpartition(".")[0]
        else:
            raise UsageError(f"cannot import {name!r} named by --trust: put its module on the Python path (or in the working folder)")


def read_checkpoint(data: bytes, source: str, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint in ``data``, unpickled safely, once every class it names is checked (``source`` names it in messages)."""
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"unsupported (?:global:? )?GLOBAL (\S+)", str(error), re.IGNORECASE)
        what = f"the Python object {found.group(1)}" if found else "Python objects"
        raise UsageError(
            f"{source!r} holds {what}, which a safe load refuses: lvm_lightning checkpoints hold only tensors and plain values; do not load it"
        ) from None
    except Exception as error:  # a damaged file makes the unpickler raise almost anything (KeyError, EOFError, RuntimeError, …)
        raise UsageError(f"{source!r} is not an lvm_lightning checkpoint ({type(error).__name__}): pass a .ckpt written by lvm-train") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UsageError(f"{source!r} is not an lvm_lightning checkpoint (no state_dict): pass a .ckpt written by lvm-train")
    for where, name in named_classes({k: checkpoint.get(k) for k in ("hyper_parameters", "datamodule_hyper_parameters")}):
        if where.endswith("_instantiator"):
            if name not in INSTANTIATORS:
                raise UsageError(f"{source!r} names the instantiator {name!r} ({where}), which is not Lightning's: do not load it")
        elif not isinstance(name, str) or not _under(name, (*OWN, *trusted)):
            module = str(name).rpartition(".")[0] or str(name)
            raise UsageError(
                f"{source!r} names {name!r} ({where}), which is neither lvm_lightning's nor trusted: "
                f"if you trust its author and have the code, pass --trust {module}"
            )
    return checkpoint


def checkpoint_bytes(path: Union[str, Path]) -> bytes:
    """The bytes of the checkpoint file at ``path``; UsageError when there is none."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"checkpoint {str(path)!r} not found: pass the path of a .ckpt file (runs/NAME/version_N/checkpoints/last.ckpt)")
    return file.read_bytes()
