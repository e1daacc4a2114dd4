"""Sizes checked before memory is spent: what a checkpoint or a setting declares must fit in this machine."""

import os

from lvm_lightning.errors import UsageError

GiB = 2**30


def physical_memory() -> int:
    """This machine's physical memory in bytes (POSIX sysconf), or 0 where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def budget() -> int:
    """The most bytes one declared object may take: half this machine's memory (16 GiB where it cannot be read)."""
    memory = physical_memory()
    return memory // 2 if memory > 0 else 16 * GiB


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Raises UsageError, ending with ``fix``, when ``what`` would take more than ``budget()`` bytes."""
    limit = budget()
    if nbytes > limit:
        raise UsageError(f"{what} would take {nbytes / GiB:.3g} GiB, more than half of this machine's memory ({2 * limit / GiB:.3g} GiB): {fix}")
