"""Every rank's random streams saved in each checkpoint and taken back on resume, so that a resumed run draws what an uninterrupted one would."""

from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

KEY = "rng_state"  # the checkpoint's entry: {"cpu": [W, n] uint8, "cuda": [W, n] uint8 (GPU runs)}, one row per rank


class RandomState(pl.Callback):
    """Saves torch's CPU (and CUDA) RNG state of every rank into the checkpoint and restores each rank's own row when a run resumes.

    Lightning restores weights, optimizer and loops but not torch's RNG: without this a resumed run would draw other samples.
    A fresh start gives rank r > 0 the stream of seed + r, so that DDP ranks do not draw rank 0's samples and noise.
    """

    def __init__(self) -> None:
        self._restore: Optional[dict[str, Tensor]] = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restore = checkpoint.get(KEY)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._restore = self._restore, None
        rank = trainer.global_rank
        if state is not None and (state["cpu"].dim() == 1 or rank < len(state["cpu"])):
            torch.set_rng_state(own_state(state["cpu"], rank))
            if "cuda" in state and pl_module.device.type == "cuda":
                torch.cuda.set_rng_state(own_state(state["cuda"], rank), pl_module.device)
        elif rank > 0:
            # The run's seed made every rank's stream the same (also a rank the checkpoint has no row for).
            torch.manual_seed((torch.initial_seed() + rank) % 2**64)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Runs on every rank (the file is rank 0's); gathered on the device because NCCL gathers nothing else.
        states = {"cpu": torch.get_rng_state()}
        if pl_module.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        gather = trainer.strategy.all_gather
        checkpoint[KEY] = {name: gather(state.to(pl_module.device)).reshape(-1, state.numel()).cpu() for name, state in states.items()}


def own_state(states: Tensor, rank: int) -> Tensor:
    """Rank ``rank``'s row of a checkpoint's per-rank RNG states [W, n]; a single state [n] is every rank's."""
    # A copy: torch.set_rng_state misreads a row that is a view at an offset into the [W, n] tensor.
    return states if states.dim() == 1 else states[rank].clone()
