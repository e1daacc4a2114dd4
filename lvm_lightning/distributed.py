"""Process groups: clean-up for DDP on CPU (gloo), and quiet set-up for the workers of lvm-evaluate --devices."""

import atexit
import logging

import torch


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """At exit, destroys torch.distributed's default process group if one is open (registered once per process).

    Lightning does this for NCCL only. A gloo group left to interpreter shutdown sometimes aborts the
    process after a finished run ("terminate called without an active exception", SIGABRT), which
    turns a successful ``train.py`` or ``ddp_spawn`` worker into a crash.
    """
    atexit.unregister(_destroy_process_group)
    atexit.register(_destroy_process_group)


def quiet_process_group_setup() -> None:
    """Hides Lightning Fabric's info lines in this process ("Initializing distributed: …" from every rank, the backend's banner); warnings stay."""
    # The banner goes to the rank-zero logger of whichever of lightning_fabric and pytorch_lightning was imported last.
    for name in ("lightning_fabric.utilities.distributed", "lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
