"""Reading a checkpoint that someone else wrote without running their code.

A checkpoint is unpickled with ``weights_only=True`` (tensors and plain containers only, no
arbitrary objects). Its parts are then built from the class paths that LightningCLI stored
(``{'class_path': …, 'init_args': …}``) by ``instantiate`` below, not by jsonargparse: jsonargparse
would also read any other string where a class is expected as a class path (or as YAML naming
one) and import it. Here only a ``class_path`` is ever imported, and only one that is
lvm_lightning's, torch.nn's, or under a module the user trusts by name; every other value is
passed on as the plain value it is.
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
            except ModuleNotFoundError as error:
                if error.name is None or not _under(module, [error.name]):  # the trusted module's own import failed
                    raise UsageError(f"importing {name!r} named by --trust failed: {error}") from None
                module = module.rpartition(".")[0]
            except Exception as error:
                raise UsageError(f"importing {name!r} named by --trust failed ({type(error).__name__}: {error})") from None
        else:
            raise UsageError(f"cannot import {name!r} named by --trust: put its module on the Python path (or in the working folder)")


def resolve(class_path: Any, where: str, trusted: Sequence[str]) -> type:
    """The class at ``class_path`` if lvm_lightning's, torch.nn's or under a trusted module, else UsageError; nothing else is imported."""
    if not isinstance(class_path, str) or not _under(class_path, (*OWN, *trusted)):
        module = str(class_path).rpartition(".")[0] or str(class_path)
        raise UsageError(
            f"the checkpoint names {class_path!r} ({where}), which is neither lvm_lightning's nor trusted: "
            f"if you trust its author and have the code, pass --trust {module}"
        )
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"the checkpoint names {class_path!r} ({where}), which cannot be imported here ({error})") from None
    if not isinstance(found, type):
        raise UsageError(f"the checkpoint names {class_path!r} ({where}), which is not a class: do not load it")
    return found


def instantiate(config: Any, trusted: Sequence[str], where: str = "") -> Any:
    """The object that a nested ``{'class_path', 'init_args'}`` config describes, its parts built first; any other value as it is."""
    if isinstance(config, dict) and "class_path" in config:
        cls = resolve(config["class_path"], where or "class_path", trusted)
        init_args = {key: instantiate(value, trusted, f"{where}.{key}") for key, value in (config.get("init_args") or {}).items()}
        try:
            return cls(**init_args)
        except UsageError:
            raise
        except Exception as error:  # arguments that the class of this version refuses
            raise UsageError(f"the checkpoint's {cls.__name__}({where}) cannot be rebuilt here: {type(error).__name__}: {error}") from None
    if isinstance(config, list):
        return [instantiate(value, trusted, f"{where}[{i}]") for i, value in enumerate(config)]
    return config


def class_paths(tree: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(location, class path) for every ``class_path`` (or LightningCLI's flat ``_class_path``) in nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("class_path", "_class_path"):
                yield here, value
            else:
                yield from class_paths(value, here)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from class_paths(value, f"{where}[{i}]")


def read_checkpoint(data: bytes, source: str, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint in ``data``, unpickled safely, refused whole if it names any class that ``resolve`` would refuse (``source`` names it in messages)."""
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"unsupported (?:global:? )?GLOBAL (\S+)", str(error), re.IGNORECASE)
        what = f"the Python object {found.group(1)}" if found else "Python objects"
        raise UsageError(
            f"{source!r} holds {what}, which a safe load refuses: lvm_lightning checkpoints hold only tensors and plain values; do not load it"
        ) from None
    except Exception as error:  # a damaged file makes the unpickler raise almost anything (KeyError, EOFError, RuntimeError, …)
        raise UsageError(
            f"{source!r} is not an lvm_lightning checkpoint ({type(error).__name__}; damaged or truncated?): pass a .ckpt written by lvm-train"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UsageError(f"{source!r} is not an lvm_lightning checkpoint (no state_dict): pass a .ckpt written by lvm-train")
    for where, name in class_paths({key: checkpoint.get(key) for key in ("hyper_parameters", "datamodule_hyper_parameters")}):
        if not isinstance(name, str) or not _under(name, (*OWN, *trusted)):
            resolve(name, where, trusted)  # raises: the message names the class and the --trust that would admit it
    return checkpoint


def checkpoint_bytes(path: Union[str, Path]) -> bytes:
    """The bytes of the checkpoint file at ``path``; UsageError when there is none."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"checkpoint {str(path)!r} not found: pass the path of a .ckpt file (runs/NAME/version_N/checkpoints/last.ckpt)")
    return file.read_bytes()
