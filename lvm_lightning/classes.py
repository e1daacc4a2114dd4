"""The classes a checkpoint names, resolved and checked before anything is built (docs/security.md).

LightningCLI stores each part of a run as ``{'class_path': …, 'init_args': …}``. Here a stored class path is
resolved to the class it names, then checked for where that class really lives (``__module__`` under
lvm_lightning, torch.nn's layers, or a module the user trusts by name) and for the kind of object the slot it
fills expects, read from the annotation of the parameter it is passed to: a ``LatentVariableModel`` where the
module takes its model, an ``Estimator`` where it takes an estimator, a ``GradientEstimator`` where an estimator
takes its gradient, an ``nn.Module`` for a part, a data module for the data. Every other argument is checked against
its annotation too (a number where a number belongs, a mapping naming a class where a class belongs, nothing else),
and only then is anything built. No other string is ever read as a class, a module or a file.
"""

import collections.abc
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import pytorch_lightning as pl
from torch import nn, optim

from lvm_lightning.errors import UsageError
from lvm_lightning.objectives.estimators import Estimator
from lvm_lightning.objectives.gradients import GradientEstimator

NAMES = ("lvm_lightning", "torch.nn", "torch.optim")  # what a stored class path may start with
# Where the class it names must be defined (torch.nn re-exports its layers from torch.nn.modules).
HOMES = ("lvm_lightning", "torch.nn.modules", "torch.optim")
# The kinds a slot can expect: a parameter annotated with a subclass of one of these takes a class; nothing else does.
KINDS: tuple[type, ...] = (nn.Module, Estimator, GradientEstimator, pl.LightningDataModule)
# The kinds a factory slot (Callable[..., kind], as LightningCLI's OptimizerCallable) can expect: it takes the class and its arguments, called later.
# nn.Module: a model's posterior and likelihood families (models.families.FamilyFactory), made for the dimension the model supplies.
FACTORY_KINDS: tuple[type, ...] = (optim.Optimizer, optim.lr_scheduler.LRScheduler, optim.lr_scheduler.ReduceLROnPlateau, nn.Module)
# Never built from a checkpoint, whatever slot names them: a LightningModule is an nn.Module, but not a part.
NEVER: tuple[type, ...] = (pl.LightningModule,)
ANY = inspect.Parameter.empty  # an unannotated parameter: plain values, or a part (nn.Module)
CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
CLASS_KEYS = {"class_path", "init_args"}


def under(name: str, modules: Sequence[str]) -> bool:
    """Whether the dotted ``name`` is one of ``modules`` or inside one."""
    return any(name == module or name.startswith(f"{module}.") for module in modules)


def describe(kinds: Sequence[type]) -> str:
    """'a LatentVariableModel', 'an Estimator or a Module': the kinds a slot takes, in words."""
    return " or ".join(f"{'an' if kind.__name__[0] in 'AEIOU' else 'a'} {kind.__name__}" for kind in kinds)


def resolve(class_path: Any, kinds: Sequence[type], where: str, trusted: Sequence[str] = (), source: str = "the checkpoint") -> type:
    """The class at ``class_path`` if it is defined under lvm_lightning, torch.nn's layers or a trusted module and is one of
    ``kinds`` (never a LightningModule); else UsageError, naming ``source`` (a checkpoint, or an option). A module outside those is never imported."""
    if not isinstance(class_path, str) or not CLASS_PATH.fullmatch(class_path):
        raise UsageError(f"{source} names {str(class_path)[:80]!r} as a class ({where}), which is not a dotted class path: do not load it")
    module, _, name = class_path.rpartition(".")
    if not under(class_path, (*NAMES, *trusted)):
        raise UsageError(
            f"{source} names {class_path!r} ({where}), which is neither lvm_lightning's nor trusted: "
            f"if you trust its author and have the code, pass --trust {module}"
        )
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{source} names {class_path!r} ({where}), which cannot be imported here ({error})") from None
    if not isinstance(found, type):
        raise UsageError(f"{source} names {class_path!r} ({where}), which is not a class: do not load it")
    home = f"{found.__module__}.{found.__qualname__}"
    if not under(found.__module__, (*HOMES, *trusted)) and not under(home, trusted):
        raise UsageError(f"{source} names {class_path!r} ({where}), which is {home}, defined outside lvm_lightning and the modules you trust: do not load it")
    if not any(issubclass(found, kind) for kind in kinds) or issubclass(found, NEVER):
        raise UsageError(f"{source} names {class_path!r} ({where}), {describe([found])}, where {describe(kinds)} belongs: do not load it")
    return found


@dataclass
class Recipe:
    """A checked class and its checked arguments (plain values, recipes, or lists of them): ``build`` makes the object."""

    cls: type
    args: dict[str, Any]
    where: str
    factory: bool = False  # a factory slot takes partial(cls, **args): called later with what it is made from (an optimizer's parameters)

    def build(self) -> Any:
        """cls(**args) (partial(cls, **args) for a factory slot), the nested recipes built first; an argument the class refuses is a UsageError naming it."""
        args = {key: build(value) for key, value in self.args.items()}
        if self.factory:
            return functools.partial(self.cls, **args)
        try:
            return self.cls(**args)
        except UsageError:
            raise
        except Exception as error:
            raise UsageError(f"the checkpoint's {self.cls.__name__} ({self.where}) cannot be rebuilt here: {type(error).__name__}: {error}") from None


def build(value: Any) -> Any:
    """``value`` with every Recipe in it built."""
    if isinstance(value, Recipe):
        return value.build()
    if isinstance(value, list):
        return [build(item) for item in value]
    if isinstance(value, dict):
        return {key: build(item) for key, item in value.items()}
    return value


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a Union / Optional annotation, or the annotation itself."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [member for alternative in typing.get_args(annotation) for member in _members(alternative)]
    return [annotation]


def _factory_kinds(annotation: Any) -> list[type]:
    """The classes a factory annotation (``Callable[..., T]``) admits: those among T's alternatives that are ``FACTORY_KINDS``."""
    made = [typing.get_args(m)[-1] for m in _members(annotation) if typing.get_origin(m) is collections.abc.Callable and typing.get_args(m)]
    return [kind for result in made for kind in _members(result) if isinstance(kind, type) and issubclass(kind, FACTORY_KINDS)]


def _kinds(annotation: Any) -> list[type]:
    """The classes among the annotation's alternatives that a checkpoint may build (subclasses of ``KINDS``)."""
    if annotation is ANY or annotation is Any:
        return [nn.Module]
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, KINDS)]


def _element(annotation: Any) -> Any:
    """The annotation of a sequence's items where the annotation admits a list or tuple; None where it does not."""
    if annotation is ANY or annotation is Any:
        return ANY
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, (str, bytes)):
            args = [arg for arg in typing.get_args(member) if arg is not Ellipsis]
            return Union[tuple(args)] if args else ANY
    return None


def _plain(value: Any, annotation: Any) -> bool:
    """Whether the plain value (a number, string, bool or None) fits the annotation."""
    if annotation is ANY or annotation is Any:
        return True
    for member in _members(annotation):
        if member is type(None) or member is None:
            if value is None:
                return True
        elif typing.get_origin(member) is Literal:
            if any(value == option and type(value) is type(option) for option in typing.get_args(member)):
                return True
        elif member is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif member is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif member in (str, bool):
            if isinstance(value, member):
                return True
        elif not (isinstance(member, type) and issubclass(member, KINDS)) and _element(member) is None and typing.get_origin(member) is None:
            # An annotation this checker does not know (a type of the user's own): a plain value is passed as it is.
            return not isinstance(member, type) or isinstance(value, member)
    return False


def conform(value: Any, annotation: Any, where: str, trusted: Sequence[str] = ()) -> Any:
    """``value`` checked against ``annotation``, each ``{class_path, init_args}`` in it turned into a checked Recipe; else UsageError."""
    factories = _factory_kinds(annotation)
    kinds = factories or _kinds(annotation)
    if isinstance(value, Mapping) and "class_path" in value:
        if not kinds:
            raise UsageError(f"the checkpoint's {where} names a class where a plain value belongs: do not load it")
        made = recipe(value, kinds, where, trusted)
        made.factory = bool(factories)
        return made
    if isinstance(value, (list, tuple)):
        element = _element(annotation)
        if element is None:
            raise UsageError(f"the checkpoint's {where} is a list where {_expected(annotation)} belongs: do not load it")
        return [conform(item, element, f"{where}[{i}]", trusted) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if annotation is not ANY and not any(typing.get_origin(m) in (dict, Mapping) or m in (dict, Mapping) for m in _members(annotation)):
            raise UsageError(f"the checkpoint's {where} is a mapping where {_expected(annotation)} belongs: do not load it")
        if not all(isinstance(key, str) for key in value):
            raise UsageError(f"the checkpoint's {where} has keys that are not strings: do not load it")
        return {key: conform(item, ANY if annotation is ANY else Any, f"{where}.{key}", trusted) for key, item in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        if _plain(value, annotation):
            return value
        if kinds and value is not None:
            raise UsageError(
                f"the checkpoint's {where} must name {describe(kinds)} by a {{class_path, init_args}} mapping, not {type(value).__name__}: do not load it"
            )
        raise UsageError(f"the checkpoint's {where} is {_shown(value)} where {_expected(annotation)} belongs: do not load it")
    raise UsageError(f"the checkpoint's {where} holds a {type(value).__name__} where {_expected(annotation)} belongs: do not load it")


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40] + "…")


def _expected(annotation: Any) -> str:
    """The annotation in words, for messages."""
    if annotation is ANY:
        return "a plain value"
    return re.sub(r"\btyping\.|\b[\w.]+\.(?=[A-Z])", "", str(annotation) if not isinstance(annotation, type) else annotation.__name__)


def hints(cls: type) -> tuple[inspect.Signature, dict[str, Any]]:
    """The signature of ``cls``'s constructor and its parameters' annotations (ANY where none can be read)."""
    signature = inspect.signature(cls)
    try:
        annotations = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations naming what cannot be imported here: plain values only, parts as nn.Module
        annotations = {}
    return signature, {name: annotations.get(name, ANY) for name in signature.parameters}


def arguments(cls: type, init_args: Any, where: str, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """``init_args`` checked against ``cls``'s constructor: known parameter names, each value conforming to its annotation."""
    if init_args is None:
        init_args = {}
    if not isinstance(init_args, Mapping):
        raise UsageError(f"the checkpoint's {where}.init_args is a {type(init_args).__name__}, not a mapping of arguments: do not load it")
    signature, annotations = hints(cls)
    parameters = signature.parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = {name for name, p in parameters.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    out = {}
    for key, value in init_args.items():
        if not isinstance(key, str) or not (key in named or open_ended and key.isidentifier() and not key.startswith("_")):
            raise UsageError(f"the checkpoint gives {cls.__name__} ({where}) an argument {str(key)[:40]!r} it does not take: do not load it")
        out[key] = conform(value, annotations.get(key, ANY), f"{where}.{key}", trusted)
    return out


def recipe(config: Mapping[str, Any], kinds: Sequence[type], where: str, trusted: Sequence[str] = ()) -> Recipe:
    """The Recipe of a stored ``{class_path, init_args}``: its class resolved for ``kinds``, its arguments checked."""
    extra = set(config) - CLASS_KEYS
    if extra:
        raise UsageError(f"the checkpoint's {where} has keys {sorted(map(str, extra))[:3]} beside class_path and init_args: do not load it")
    cls = resolve(config["class_path"], kinds, where, trusted)
    return Recipe(cls, arguments(cls, config.get("init_args"), where, trusted), where)


def import_trusted(trusted: Sequence[str]) -> None:
    """Imports each module the user trusts (a module, or the module of a class path), so that its classes can be found."""
    for name in trusted:
        module = name
        while module:
            try:
                importlib.import_module(module)
                break
            except ModuleNotFoundError as error:
                if error.name is None or not under(module, [error.name]):  # the trusted module's own import failed
                    raise UsageError(f"importing {name!r} named by --trust failed: {error}") from None
                module = module.rpartition(".")[0]
            except Exception as error:
                raise UsageError(f"importing {name!r} named by --trust failed ({type(error).__name__}: {error})") from None
        else:
            raise UsageError(f"cannot import {name!r} named by --trust: put its module on the Python path (or in the working folder)")
