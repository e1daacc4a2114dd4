"""Reading a checkpoint that someone else wrote without running their code, exhausting memory or reaching a path of
its choosing (docs/security.md).

The file's archive is checked before it is unpickled (its size, no compressed entries), then unpickled with
``weights_only=True`` (tensors and plain containers only), then checked as a tree (depth, size, the types of
the entries this package and Lightning read). The parts it describes are checked by ``classes.conform`` (each
class where it lives and for the slot it fills, each argument against its annotation), built once on the meta
device to compare their declared shapes with the stored weights, and only then built for real.
"""

import io
import pickle
import re
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lvm_lightning.classes import Recipe, build, conform, hints, import_trusted, recipe
from lvm_lightning.data.protocol import REQUIRED
from lvm_lightning.errors import UsageError
from lvm_lightning.memory import check_fits

MIN_TORCH = (2, 6)  # torch.load(weights_only=True) before 2.6 can be made to run code (CVE-2025-32434)
MAX_DEPTH = 64  # nesting of a genuine checkpoint: under 10
MAX_NODES = 2_000_000  # containers and values besides tensors: a genuine checkpoint has thousands
PLAIN = (str, int, float, bool, type(None), complex, bytes, torch.Size, torch.dtype, torch.device)
PRIVATE = ("_instantiator",)  # LightningCLI's record of how it built the part: never used
# What this package and Lightning read from a checkpoint, and the type each must have.
SCHEMA: dict[str, type] = {
    "state_dict": dict,
    "epoch": int,
    "global_step": int,
    "hyper_parameters": dict,
    "datamodule_hyper_parameters": dict,
    "rng_state": dict,
    "callbacks": dict,
    "optimizer_states": list,
    "lr_schedulers": list,
    "loops": dict,
}


def check_torch(version: str = torch.__version__) -> None:
    """Raises UsageError when torch is older than 2.6, whose safe loader can be bypassed."""
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < MIN_TORCH:
        raise UsageError(
            f"torch {version} is older than 2.6, whose weights_only loader can be made to run code (CVE-2025-32434): "
            "upgrade torch (pip install 'torch>=2.6') before loading a checkpoint"
        )


def checkpoint_bytes(path: Union[str, Path]) -> bytes:
    """The bytes of the checkpoint file at ``path``; UsageError when there is no such regular file, or it is too large to read."""
    file = Path(path)
    if not file.is_file():  # a folder, a device or a pipe is not a checkpoint either
        raise UsageError(f"checkpoint {str(path)!r} not found: pass the path of a .ckpt file (runs/NAME/version_N/checkpoints/last.ckpt)")
    check_fits(file.stat().st_size, f"reading {str(path)!r}", "it is not a checkpoint of this machine's size")
    return file.read_bytes()


def _check_archive(data: bytes, source: str) -> None:
    """Refuses an archive that would unpack to more than ``budget()`` bytes, or whose entries are compressed (torch.save stores them plain)."""
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise UsageError(
            f"{source!r} is not an lvm_lightning checkpoint (not a torch.save archive; damaged or truncated?): pass a .ckpt written by lvm-train"
        ) from None
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
        raise UsageError(f"{source!r} has compressed entries, which torch.save never writes: do not load it")
    check_fits(sum(entry.file_size for entry in entries), f"unpacking {source!r}", "do not load it")


def _check_tree(tree: Any, source: str) -> None:
    """Refuses nesting deeper than MAX_DEPTH, more than MAX_NODES values, or values other than tensors and plain ones, without recursion."""
    stack, nodes = [(tree, 0)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            what = f"is nested deeper than {MAX_DEPTH} levels" if depth > MAX_DEPTH else f"holds more than {MAX_NODES:,} values"
            raise UsageError(f"{source!r} {what}, which no lvm_lightning checkpoint does: do not load it")
        if isinstance(value, Mapping):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((item, depth + 1) for item in value)
        elif not isinstance(value, (Tensor, *PLAIN)):
            raise UsageError(f"{source!r} holds a {type(value).__name__}, which no lvm_lightning checkpoint does: do not load it")


def _check_weights(weights: dict[Any, Any], source: str) -> None:
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in weights.items()):
        raise UsageError(f"{source!r} has a state_dict that is not a mapping of names to tensors: do not load it")


def read_checkpoint(data: bytes, source: str, weights_alone: bool = False) -> dict[str, Any]:
    """The checkpoint in ``data``: its archive checked, unpickled safely, its tree and top-level entries checked (``source`` names it in
    messages). ``weights_alone``: a bare state dict (names to tensors, as Lightning's ddp_spawn hands back to its main process) is accepted too."""
    check_torch()
    _check_archive(data, source)
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
    _check_tree(checkpoint, source)
    if weights_alone and isinstance(checkpoint, dict) and "state_dict" not in checkpoint:
        _check_weights(checkpoint, source)
        return checkpoint
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UsageError(f"{source!r} is not an lvm_lightning checkpoint (no state_dict): pass a .ckpt written by lvm-train")
    for key, kind in SCHEMA.items():
        if key in checkpoint and not (isinstance(checkpoint[key], kind) and not isinstance(checkpoint[key], bool)):
            raise UsageError(f"{source!r} has a {type(checkpoint[key]).__name__} as its {key!r}, where a {kind.__name__} belongs: do not load it")
    _check_weights(checkpoint["state_dict"], source)
    for key in ("hyper_parameters", "datamodule_hyper_parameters", "callbacks", "rng_state"):
        if not all(isinstance(name, str) for name in checkpoint.get(key, {})):
            raise UsageError(f"{source!r} has keys in its {key!r} that are not strings: do not load it")
    return checkpoint


def read_file(path: Union[str, Path], weights_alone: bool = False) -> dict[str, Any]:
    """``read_checkpoint`` of the file at ``path``."""
    return read_checkpoint(checkpoint_bytes(path), str(path), weights_alone)


def stored_arguments(checkpoint: dict[str, Any], cls: type, source: str, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """The constructor arguments of ``cls`` that the checkpoint stores (LightningCLI's hyper_parameters), each checked against
    ``cls``'s annotations by ``classes.conform``: classes as Recipes. UsageError for anything else."""
    stored = {key: value for key, value in checkpoint.get("hyper_parameters", {}).items() if key not in PRIVATE}
    with naming(source):
        if "_class_path" in stored:  # a module of the user's own, stored by LightningCLI's subclass mode
            found = recipe({"class_path": stored.pop("_class_path"), "init_args": stored}, [cls], "model", trusted)
            return {"__class__": found.cls, **found.args}
        _, annotations = hints(cls)
        unknown = [key for key in stored if key not in annotations]
        if unknown:
            raise UsageError(f"the checkpoint stores {cls.__name__} arguments it does not take ({', '.join(map(repr, unknown[:3]))}): do not load it")
        return {key: conform(value, annotations[key], key, trusted) for key, value in stored.items()}


@contextmanager
def naming(source: str) -> Iterator[None]:
    """Inside: a UsageError about the checkpoint's contents gets the file's name in front."""
    try:
        yield
    except UsageError as error:
        raise UsageError(f"{source}: {error}") from None


def as_config(value: Any) -> Any:
    """Checked arguments as LightningCLI's config again, each class named by where it is defined (not by the stored string)."""
    if isinstance(value, Recipe):
        return {"class_path": f"{value.cls.__module__}.{value.cls.__qualname__}", "init_args": as_config(value.args)}
    if isinstance(value, dict):
        return {key: as_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_config(item) for item in value]
    return value


def check_weights(model: nn.Module, stored: dict[str, Tensor], source: str, strict: bool = True) -> None:
    """Raises UsageError unless the stored weights fit ``model`` (names, shapes and dtypes; every one of them when ``strict``)."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in stored]
    unexpected = [name for name in stored if name not in expected]
    if strict and (missing or unexpected):
        which = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model has not"
        raise UsageError(f"{source!r} holds weights that do not fit the model it describes (it {which}): do not load it")
    for name, tensor in stored.items():
        if name in expected and (tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype):
            want = f"{tuple(expected[name].shape)} {expected[name].dtype}"
            raise UsageError(f"{source!r} holds {name!r} as {tuple(tensor.shape)} {tensor.dtype} where the model it describes has {want}: do not load it")


def check_declared(cls: type, arguments: dict[str, Any], checkpoint: dict[str, Any], source: str, strict: bool = True, **kwargs: Any) -> None:
    """Builds ``cls`` from checked ``arguments`` on the meta device (nothing allocated) and raises UsageError unless what it declares fits
    in memory and matches the stored weights: a checkpoint's arguments cannot make the real build take the machine down."""
    with torch.device("meta"):
        shell = cls(**build(arguments), **kwargs)
    declared = sum(t.numel() * t.element_size() for t in shell.state_dict().values())
    check_fits(declared, f"the model {source!r} describes", "do not load it")
    check_weights(shell, checkpoint["state_dict"], source, strict)


def load_module(
    cls: type[pl.LightningModule],
    checkpoint: dict[str, Any],
    source: str,
    map_location: Any = None,
    strict: bool = True,
    trusted: Sequence[str] = (),
    **kwargs: Any,
) -> pl.LightningModule:
    """The module a checkpoint (read by ``read_checkpoint``) holds: ``cls`` built from its checked arguments (``kwargs`` replace
    stored ones, parts included, as objects), first on the meta device to check the declared sizes against the weights."""
    import_trusted(trusted)
    arguments = {key: value for key, value in stored_arguments(checkpoint, cls, source, trusted).items() if key not in kwargs}
    data_recipe(checkpoint, source, trusted)  # the whole checkpoint is checked, the data module's class too, though only the module is built
    cls = arguments.pop("__class__", cls)
    _, annotations = hints(cls)
    parts = [
        name
        for name, annotation in annotations.items()
        if name not in arguments and name not in kwargs and isinstance(annotation, type) and issubclass(annotation, nn.Module)
    ]
    if parts:
        raise UsageError(
            f"{source!r} was written by an {cls.__name__} built in Python, whose parts are objects kept out of the checkpoint: "
            f"pass them again, {cls.__name__}.load_from_checkpoint(path, {'=…, '.join(parts)}=…), or train with lvm-train"
        )
    check_declared(cls, arguments, checkpoint, source, strict, **kwargs)
    module = cls(**build(arguments), **kwargs)
    # Stored as class paths again, so that a checkpoint of the loaded module rebuilds it too.
    module.hparams.update(as_config({key: value for key, value in arguments.items() if isinstance(value, (Recipe, list))}))
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=strict)
    return module.to(map_location) if map_location is not None else module


def data_recipe(checkpoint: dict[str, Any], source: str, trusted: Sequence[str] = ()) -> Optional[Recipe]:
    """The checked Recipe of the run's data module (LightningCLI's datamodule_hyper_parameters), or None where none is stored."""
    stored = {key: value for key, value in checkpoint.get("datamodule_hyper_parameters", {}).items() if key not in PRIVATE}
    if "_class_path" not in stored:
        return None
    import_trusted(trusted)
    with naming(source):
        return recipe({"class_path": stored.pop("_class_path"), "init_args": stored}, [pl.LightningDataModule], "datamodule", trusted)


def load_data(checkpoint: dict[str, Any], source: str, trusted: Sequence[str] = (), local: Optional[dict[str, Any]] = None) -> pl.LightningDataModule:
    """The run's data module, rebuilt from its checked class and arguments, with its splits loaded. The arguments its class
    declares as this machine's (``machine_arguments``: folders, files, downloads) take ``local``'s values or the class's
    own defaults, never the stored ones: a shared checkpoint does not choose what evaluation reads, writes or fetches."""
    found = data_recipe(checkpoint, source, trusted)
    if found is None:
        raise UsageError("this checkpoint does not record its data module's class: pass --data_path FILE.npy to evaluate on your own data")
    local = local or {}
    for name in getattr(found.cls, "machine_arguments", {}):
        if name in local:
            found.args[name] = local[name]
            continue
        default = found.cls.machine_arguments[name]
        if default is REQUIRED:
            where = stored_file(checkpoint, found.cls, name) or found.args.get(name)
            raise UsageError(
                f"this run's {found.cls.__name__} read {name} {where!r} on the machine that trained it, which evaluation "
                f"does not open on a checkpoint's word: pass --data_{name} (the same file to score its test split, or another)"
            )
        found.args[name] = default
    datamodule = found.build()
    datamodule.setup("test")
    return datamodule


def stored_file(checkpoint: dict[str, Any], cls: type, name: str, key: str = "path") -> Optional[str]:
    """What the data module's checkpointed state says of the file it read as argument ``name`` ('path': where, resolved; 'sha256': its rows)."""
    state = checkpoint.get(cls.__qualname__)
    files = state.get("files") if isinstance(state, dict) else None
    entry = files.get(name) if isinstance(files, dict) else None
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def check_training_state(checkpoint: dict[str, Any], module: pl.LightningModule, source: str) -> None:
    """Raises UsageError unless what Lightning restores on resume fits ``module``: its weights, its optimizer's state (a tensor
    the shape of each parameter), the random-number states and the loops' progress counters (the structure a fresh trainer has)."""
    check_weights(module, checkpoint["state_dict"], source)
    parameters = list(module.parameters())
    for state in checkpoint.get("optimizer_states", []):
        groups = state.get("param_groups") if isinstance(state, dict) else None
        per_param = state.get("state") if isinstance(state, dict) else None
        if (
            not isinstance(groups, list)
            or not isinstance(per_param, dict)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
        ):
            raise UsageError(f"{source!r} has an optimizer state that is not Adam's (param_groups, state): do not resume from it")
        indices = [index for group in groups for index in group["params"]]
        if sorted(indices) != list(range(len(parameters))) or not set(per_param) <= set(indices):
            raise UsageError(f"{source!r} has an optimizer state for {len(indices)} parameters, the model has {len(parameters)}: do not resume from it")
        for index, entry in per_param.items():
            tensors = entry.values() if isinstance(entry, dict) else [None]
            if any(not isinstance(t, Tensor) or t.dim() and t.shape != parameters[index].shape for t in tensors):
                raise UsageError(f"{source!r} has an optimizer state whose shapes do not fit parameter {index}: do not resume from it")
    for name, state in checkpoint.get("rng_state", {}).items():
        size = torch.get_rng_state().numel() if name == "cpu" else None
        if name not in ("cpu", "cuda") or state.dtype != torch.uint8 or state.dim() not in (1, 2) or size is not None and state.shape[-1] != size:
            raise UsageError(f"{source!r} has a random-number state {name!r} that is not torch's: do not resume from it")
    trainer = module.trainer
    loops = {"fit_loop": trainer.fit_loop, "validate_loop": trainer.validate_loop, "test_loop": trainer.test_loop, "predict_loop": trainer.predict_loop}
    for name, loop in loops.items():
        stored = checkpoint.get("loops", {}).get(name)
        if stored is not None and not _same_structure(stored, loop.state_dict()):
            raise UsageError(f"{source!r} has a {name} state that is not Lightning's (progress counters): do not resume from it")


def _same_structure(stored: Any, fresh: Any) -> bool:
    """Whether ``stored`` has ``fresh``'s keys, nesting and kinds of value (numbers where numbers are, booleans where booleans are)."""
    if isinstance(fresh, dict):
        return isinstance(stored, dict) and stored.keys() == fresh.keys() and all(_same_structure(stored[key], fresh[key]) for key in fresh)
    if isinstance(fresh, bool) or isinstance(stored, bool):
        return isinstance(stored, bool) and isinstance(fresh, bool)
    if isinstance(fresh, (int, float)):
        return isinstance(stored, (int, float))
    return fresh is None or type(stored) is type(fresh)
