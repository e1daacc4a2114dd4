"""``lvm-evaluate --devices N``: a split's estimates shared among N processes started by Lightning Fabric (ddp_spawn: gloo on
the CPU, NCCL on GPUs), each taking the batches ``dealing.deal`` gives its rank, gathered in order on rank 0."""

import multiprocessing
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import Tensor

from lvm_lightning.distributed import destroy_process_group_at_exit, quiet_process_group_setup
from lvm_lightning.estimates import PerPoint, estimate_batches
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator
from lvm_lightning.timing import timed

Batches = list[dict[str, PerPoint]]  # estimate_all's results, one entry per batch of the data in order

if multiprocessing.current_process().name != "MainProcess":
    # A worker imports this module as it unpickles its function, before Fabric joins the process group (a spawned process is
    # named before it imports): Fabric's lines on that, once per rank, would stand among the caller's.
    quiet_process_group_setup()


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak memory so far: bytes allocated on a GPU since the last reset, or the process's peak resident size on the CPU."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_of": "CUDA tensors"}
    import resource  # Unix: ru_maxrss in kilobytes on Linux

    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_of": "the process (resident)"}


def _to_cpu(result: PerPoint) -> PerPoint:
    return PerPoint(result.log_px.cpu(), {key: value.cpu() for key, value in result.diagnostics.items()}, result.num_samples)


def _estimate_shard(fabric: Fabric, model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int, output: Path) -> None:
    """One rank's part of ``sharded_estimates``: its batches, gathered with the others' on every rank; rank 0 pickles to ``output``
    every batch in order, the seconds from the ranks' common start to the gather, and its peak memory."""
    destroy_process_group_at_exit()
    torch.set_flush_denormal(True)  # tiny importance weights: see LVMModule.setup (a spawned process starts without it)
    model, x = model.to(fabric.device).eval(), x.to(fabric.device)
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
    fabric.barrier()  # every rank set up: the seconds are the estimates' alone

    def estimate_and_gather() -> list[dict[int, dict[str, PerPoint]]]:
        mine = estimate_batches(model, x, estimators, batch_size, seed, fabric.global_rank, fabric.world_size)
        on_cpu = {index: {name: _to_cpu(result) for name, result in batch.items()} for index, batch in mine.items()}
        gathered: list[Any] = [None] * fabric.world_size
        torch.distributed.all_gather_object(gathered, on_cpu)
        return gathered

    gathered, seconds = timed(estimate_and_gather, x.device)
    merged = {index: batch for part in gathered for index, batch in part.items()}
    memory = peak_memory(x.device)
    memory["peak_memory_of"] += " of rank 0"
    if fabric.global_rank == 0:
        # A file, not Fabric's return queue: that pipe is read only once the processes have ended, so a result larger than
        # its buffer (64 KiB) would never be written.
        output.write_bytes(pickle.dumps(([merged[index] for index in sorted(merged)], seconds, memory)))


def sharded_estimates(
    model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int, devices: int, accelerator: str
) -> tuple[Batches, float, dict[str, Any]]:
    """``estimate_batches`` over all of ``x`` on ``devices`` processes, batch i on rank i mod N: (every batch in order, the seconds
    the estimates took, rank 0's peak memory)."""
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp_spawn")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "estimates.pickle"
        fabric.launch(_estimate_shard, model.cpu(), x.cpu(), estimators, batch_size, seed, output)
        return pickle.loads(output.read_bytes())  # written by our own process, a moment ago


def local_estimates(model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int) -> tuple[Batches, float, dict[str, Any]]:
    """``estimate_batches`` over all of ``x`` in this process: the same triple as ``sharded_estimates``."""
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
    by_index, seconds = timed(lambda: estimate_batches(model, x, estimators, batch_size, seed), x.device)
    return [by_index[index] for index in sorted(by_index)], seconds, peak_memory(x.device)
