"""Seconds per training epoch on Fashion-MNIST: our Lightning path against a plain PyTorch loop of the same model, in one process.

    flock /tmp/lvm_bench.lock .venv/bin/python benchmarks/images_epoch.py [--steps 300] [--ks 1 50]

Both train the model of configs/fashion_mnist_iwae.yaml (IWAE paper's MLP) on the same tensor on the
same device with the same batch size, dynamic binarization on the device, Adam. Each times ``steps``
steady-state steps after ``warmup`` and scales to one epoch (train split / batch size steps);
validation is off in both. The best of ``repeats`` alternating runs is kept, against load from
other processes. Lightning runs as train.py does (TensorBoard logger, metrics every 10 steps) but
without checkpointing or progress bar. The plain loop runs twice: as a user writes it (torch.bernoulli,
torch's default Adam) and with the binarization and fused Adam that LVMModule uses, which leaves
Lightning's own cost per step as the difference (LVMModule flushes denormal floats to zero: see its setup).
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvm_lightning.cli import build_module  # noqa: E402
from lvm_lightning.data import FashionMNISTData  # noqa: E402
from lvm_lightning.data.images import dynamic_binarize  # noqa: E402
from lvm_lightning.models.lvm import LatentVariableModel  # noqa: E402
from lvm_lightning.timing import synchronize  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_iwae.yaml"


class StepTimer(pl.Callback):
    """Wall time from the start of batch ``warmup`` to the end of batch ``warmup + steps − 1``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.seconds = warmup, steps, math.nan

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.warmup + self.steps:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start


def with_k(model_section: dict, k: int) -> dict:
    """The config's model section with the estimator's K set to ``k``."""
    estimator = dict(model_section["estimator"])
    estimator["init_args"] = {**estimator.get("init_args", {}), "num_samples": k}
    return {**model_section, "estimator": estimator}


def lightning_seconds(model_args: dict, data: FashionMNISTData, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` training steps of LVMModule under pl.Trainer."""
    torch.manual_seed(0)
    timer = StepTimer(warmup, steps)
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(
            accelerator=device.type, devices=1, max_steps=warmup + steps, limit_val_batches=0, callbacks=[timer],
            logger=TensorBoardLogger(logs), log_every_n_steps=10, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(build_module(model_args, 784), datamodule=data)
    return timer.seconds


def iwae_loss(model: LatentVariableModel, x: Tensor, k: int) -> Tensor:
    """−mean_x log (1/K) Σ_k p(z_k) p(x|z_k) / q(z_k|x), z_k ~ q(z|x) reparameterized: written out, not through our estimators."""
    q = model.encoder(x)
    z = q.rsample((k,))
    log_weights = model.prior().log_prob(z) + model.decoder(z).log_prob(x) - q.log_prob(z)
    return -(log_weights.logsumexp(0) - math.log(k)).mean()


def plain_seconds(model_args: dict, train: Tensor, batch_size: int, device: torch.device, warmup: int, steps: int, our_kernels: bool = False) -> float:
    """Seconds for ``steps`` steps of a hand-written loop: index a permutation, binarize on the device, Adam; torch.bernoulli
    and torch's default Adam as a user writes it, or with ``our_kernels`` the binarization, fused Adam and flushed denormals of LVMModule."""
    torch.manual_seed(0)
    torch.set_flush_denormal(our_kernels)  # LVMModule's setup and teardown set and unset it for its own runs
    model = build_module(model_args, 784).lvm.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=model_args["optimizer"]["init_args"]["lr"], fused=our_kernels)
    binarize = dynamic_binarize if our_kernels else torch.bernoulli
    batches = torch.randperm(len(train), device=device).split(batch_size)
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        x = binarize(train[batches[step % len(batches)]])
        loss = iwae_loss(model, x, model_args["estimator"]["init_args"]["num_samples"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST folder (flat .gz files or torchvision's layout)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 50], help="numbers of importance samples K")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each path; the fastest counts")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch (default: torch's own choice)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_args = yaml.safe_load(CONFIG.read_text())["model"]
    data = FashionMNISTData(root=args.root, batch_size=args.batch_size)
    data.setup()
    train = data.splits["train"].to(device)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, {steps_per_epoch} steps/epoch, "
          f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}; load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    rows = []
    for k in args.ks:
        run_args = with_k(model_args, k)
        ours, plain, kernels = math.inf, math.inf, math.inf
        for _ in range(args.repeats):
            plain = min(plain, plain_seconds(run_args, train, args.batch_size, device, args.warmup, args.steps))
            kernels = min(kernels, plain_seconds(run_args, train, args.batch_size, device, args.warmup, args.steps, our_kernels=True))
            ours = min(ours, lightning_seconds(run_args, data, device, args.warmup, args.steps))
        rows.append((k, *(seconds * steps_per_epoch / args.steps for seconds in (ours, plain, kernels))))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"{'K':>4}  {'lightning s/epoch':>17}  {'plain loop s/epoch':>18}  {'ratio':>6}  {'plain loop, our kernels':>23}  {'ratio':>6}")
    for k, ours, plain, kernels in rows:
        print(f"{k:>4}  {ours:>17.2f}  {plain:>18.2f}  {ours / plain:>6.3f}  {kernels:>23.2f}  {ours / kernels:>6.3f}")


if __name__ == "__main__":
    main()
