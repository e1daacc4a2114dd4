"""The one exception type that the command-line entry points turn into a one-line message."""

import os
import sys
from contextlib import contextmanager
from typing import Iterator


class UsageError(ValueError):
    """Bad configuration or input that the user can fix; its message says how."""


def find_usage_error(error: BaseException) -> "UsageError | None":
    """The UsageError behind ``error``, following the chain of causes (jsonargparse wraps errors raised while instantiating)."""
    seen: set[int] = set()
    current: "BaseException | None" = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UsageError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def explain(error: BaseException) -> "str | None":
    """One line for a mistake the user can fix (ours, Lightning's MisconfigurationException, jsonargparse's), or None for a bug."""
    import re

    from lightning_fabric.utilities.exceptions import MisconfigurationException

    usage_error = find_usage_error(error)
    if usage_error is not None:
        return " ".join(str(usage_error).split())
    message = " ".join(str(error).split())
    if isinstance(error, UnicodeDecodeError):
        return "a file read as text (a --config YAML?) is binary: pass a YAML config, e.g. one from configs/"
    if isinstance(error, ModuleNotFoundError):
        return f"a package this run needs is missing: {message}"
    if isinstance(error, MisconfigurationException):
        hint = "there is no GPU here: use --trainer.accelerator cpu" if "gpu" in message.lower() else "a Trainer setting: lvm-train fit --help lists them"
        return f"{message} ({hint})"
    if type(error).__name__ == "ArgumentError":
        required = re.search(r'Parser key "([\w.]+)".*?the following arguments are required: ([\w, ]+)', message)
        if required:
            key, names = required.groups()
            return (
                f"missing {', '.join(f'--{key}.{name.strip()}' for name in names.split(','))}: it has no default, give it in the config or on the command line"
            )
        if message.startswith("Unexpected config"):
            return "the config file is empty or not a mapping of options: start from one in configs/ (lvm-train fit --print_config prints a full one)"
        return f"{message} (lvm-train fit --help lists every option)"
    return None


@contextmanager
def one_line_errors(command: str) -> Iterator[None]:
    """Inside a command's entry point: a mistake the user can fix (``explain``) ends the process with one line ``error: …`` on
    stderr, its help pointing at ``command --help``, and exit code 2; a bug, or LVM_DEBUG=1, raises with the full traceback."""
    try:
        yield
    except Exception as error:
        message = explain(error)
        if message is None or os.environ.get("LVM_DEBUG"):
            raise
        print(f"error: {message.replace('lvm-train fit --help', f'{command} --help')}", file=sys.stderr)
        sys.exit(2)
