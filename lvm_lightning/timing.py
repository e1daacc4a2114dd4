"""Wall-clock timing that counts queued GPU work: the seconds per point of each kind of inference, and the benchmarks."""

import time
from typing import Callable, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on ``device`` (a no-op on the CPU, where calls return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """fn() and its wall-clock seconds, waiting for queued GPU work on both ends."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a size × size matrix product in ``dtype`` (2 size³ operations), the best of ``repeats``: the device's practical peak."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: kernels chosen, memory touched
    best = min(timed(lambda: a @ b, device)[1] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def counted_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of the matrix products (and convolutions) that one call of ``fn`` performs, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
