"""How evaluation work is shared among W processes: items (batches, or points) dealt round-robin, rank r taking r, r + W, r + 2W, ….

Validation's loaders, ``lvm-evaluate --devices`` and the amortization-gap callback all deal this way, so an item's place in the
one-process sequence, and with it the seed of its draws, is known on every rank.
"""

from typing import TypeVar

Items = TypeVar("Items")  # anything sliced by [start::step]: a tuple of batches, a tensor of points


def deal(items: Items, rank: int, world_size: int) -> Items:
    """Rank ``rank``'s share of ``items`` (a tuple of batches, a tensor of points): items rank, rank + W, rank + 2W, … of W = ``world_size``."""
    return items[rank::world_size]


def dealt_count(count: int, rank: int, world_size: int) -> int:
    """How many of ``count`` items ``deal`` gives rank ``rank``."""
    return len(range(rank, count, world_size))


def dealt_index(position: int, rank: int, world_size: int) -> int:
    """The index in the one-process sequence of the ``position``-th item that ``deal`` gave rank ``rank``."""
    return position * world_size + rank
