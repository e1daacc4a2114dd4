"""What a second DDP process costs per training step: 2 processes against 1, and the gradient all-reduce on its own.

    flock /tmp/lvm_bench.lock .venv/bin/python benchmarks/ddp_overhead.py [--configs fashion_mnist_vae fashion_mnist_iwae] [--steps 200]
    on a GPU machine:  python benchmarks/ddp_overhead.py --accelerator gpu --devices 1 2   (as many GPUs as it has)

Each run trains the model of a shipped image config through pl.Trainer as train.py does (LVMModule built from the YAML,
the config's batch size per process, dynamic binarization on the device, fused Adam, TensorBoard logging every 10 steps),
validation off, on 1 process and on N (strategy ddp_spawn; on the CPU gloo with one thread per process). The time of
``steps`` steps after ``warmup`` is rank 0's; the best of ``repeats`` runs counts. Per-process batch fixed: N processes
train on N times the points per step. The all-reduce is timed apart: the gradient's bytes (parameters × 4) summed across
the N processes, as DDP does once per step. Real Fashion-MNIST from ``--root``, or random images of its shape without it.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric import Fabric
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvm_lightning.cli import build_module  # noqa: E402
from lvm_lightning.data import FashionMNISTData, InMemoryDataModule  # noqa: E402
from lvm_lightning.data.images import dynamic_binarize  # noqa: E402
from lvm_lightning.distributed import destroy_process_group_at_exit  # noqa: E402
from lvm_lightning.timing import synchronize  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class StepTimer(pl.Callback):
    """Rank 0's wall time from the start of step ``warmup`` to the end of step ``warmup + steps − 1``, written to ``output``."""

    def __init__(self, warmup: int, steps: int, output: Path) -> None:
        self.warmup, self.steps, self.output = warmup, steps, output

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.warmup + self.steps and trainer.is_global_zero:
            synchronize(pl_module.device)
            self.output.write_text(str(time.perf_counter() - self.start))


class RandomImages(InMemoryDataModule):
    """Stand-in when Fashion-MNIST is not at hand: 60,000 uniform grey images of 28 × 28, dynamically binarized like it."""

    image_shape = (1, 28, 28)

    @property
    def data_dim(self) -> int:
        """D = 784."""
        return 784

    def load_splits(self) -> dict[str, torch.Tensor]:
        """Uniform grey levels in [0, 1], seeded."""
        images = torch.rand(60_000, 784, generator=torch.Generator().manual_seed(0))
        return {"train": images[:50_000], "val": images[50_000:], "test": images[50_000:]}

    def transform(self, split: str) -> Any:
        """Dynamic binarization, as the image configs' data."""
        return dynamic_binarize


def data_module(root: Optional[str], batch_size: int) -> InMemoryDataModule:
    """Fashion-MNIST from ``root`` (dynamic binarization, as the configs), or random images of its shape when ``root`` is None."""
    if root is None:
        return RandomImages(batch_size=batch_size)
    return FashionMNISTData(root=root, batch_size=batch_size, binarization="dynamic", num_val=10_000)


def step_seconds(config: dict, root: Optional[str], accelerator: str, devices: int, warmup: int, steps: int) -> float:
    """Seconds per training step (rank 0's) of ``config``'s model on ``devices`` processes."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "seconds"
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=warmup + steps,
            limit_val_batches=0, callbacks=[StepTimer(warmup, steps, output)], logger=TensorBoardLogger(folder), log_every_n_steps=10,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        torch.manual_seed(0)
        trainer.fit(build_module(config["model"], 784), datamodule=data_module(root, config["data"]["init_args"]["batch_size"]))
        return float(output.read_text()) / steps


def _time_all_reduce(fabric: Fabric, numel: int, repeats: int, output: Path) -> None:
    destroy_process_group_at_exit()
    tensor = torch.ones(numel, device=fabric.device)
    for _ in range(5):  # the first calls set up the connections
        torch.distributed.all_reduce(tensor)
    synchronize(fabric.device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.distributed.all_reduce(tensor)
    synchronize(fabric.device)
    if fabric.global_rank == 0:
        output.write_text(str((time.perf_counter() - start) / repeats))


def all_reduce_seconds(numel: int, accelerator: str, devices: int, repeats: int = 50) -> float:
    """Seconds of one sum all-reduce of ``numel`` float32 values across ``devices`` processes (gloo on the CPU, NCCL on GPUs)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "seconds"
        Fabric(accelerator=accelerator, devices=devices, strategy="ddp_spawn").launch(_time_all_reduce, numel, repeats, output)
        return float(output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["fashion_mnist_vae", "fashion_mnist_iwae"], help="shipped image configs")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST folder; random images of its shape if absent")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="process counts to compare, the first the baseline")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    args = parser.parse_args()
    if args.accelerator == "cpu":
        os.environ["OMP_NUM_THREADS"] = "1"  # one thread per process: spawned processes read it (Lightning sets no fewer)
        torch.set_num_threads(1)
    root = args.root if Path(args.root).is_dir() else None
    print(f"{args.accelerator}, data: {root or 'random images 28x28 (no Fashion-MNIST here)'}; {args.steps} steps after {args.warmup}, "
          f"best of {args.repeats}; load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    print(f"{'config':<20} {'processes':>9} {'ms/step':>8} {'points/s':>9} {'vs 1':>6} {'grad bytes':>11} {'all-reduce ms':>13}")
    for name in args.configs:
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        batch = config["data"]["init_args"]["batch_size"]
        numel = sum(p.numel() for p in build_module(config["model"], 784).parameters())
        baseline = None
        for devices in args.devices:
            seconds = min(step_seconds(config, root, args.accelerator, devices, args.warmup, args.steps) for _ in range(args.repeats))
            reduce_ms = "-" if devices == 1 else f"{all_reduce_seconds(numel, args.accelerator, devices) * 1e3:.3f}"
            throughput = devices * batch / seconds
            baseline = baseline or throughput
            print(
                f"{name:<20} {devices:>9} {seconds * 1e3:>8.2f} {throughput:>9.0f} {throughput / baseline:>6.2f} {numel * 4:>11,} {reduce_ms:>13}", flush=True
            )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
