"""Seeded forks of torch's random stream, for evaluation that must neither disturb training nor vary between calls."""

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def seeded_fork(device: torch.device, seed: int) -> Iterator[None]:
    """Inside: torch's CPU stream (and ``device``'s, for a GPU) seeded with ``seed``; outside: the streams as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a run seeded by ``seed``: seed·2³² + index, distinct for every pair (index < 2³²), and index itself for seed 0."""
    return seed * 2**32 + index
