"""Lightning's own cost per training step: train.py's step against a bare loop of the same module, on a model so small that a
step is almost all overhead, and where that cost goes (logger, progress bar, callbacks).

    flock /tmp/lvm_cpu.lock .venv/bin/python benchmarks/step_cost.py [--repo OLDER_CHECKOUT] [--device cuda]

Each case runs in a fresh process, ``--repeats`` times, alternating; a case's figure is its mean step (between the starts of
its 101st and last training batches, so that steps which log or redraw the bar count), the smallest over its repeats. The model is the
Fashion-MNIST VAE config with 1 latent unit and hidden layers of 2 (batch 10), so the matrix products take microseconds and
the step is Python: torch's dispatch, our estimator and Lightning. Cases: ``bare``, the module's losses, zero_grad, backward
and its own optimizer (``LVMModule.configure_optimizers``) in a plain loop over the same batches; ``train.py`` as shipped
(validation and the gap off); the same without its logger, without its progress bar, and with neither. ``train.py − bare``
is what Lightning costs a step. Its floor, what no module can go below: ``Lightning floor``, a module with one scalar
parameter and nothing to compute, trained by a Trainer with every optional part off (logger, progress bar, checkpoints,
summary), and ``Lightning manual``, the same by Lightning's manual optimization, against ``bare floor``, the same step
in a plain loop.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

HERE = Path(__file__).resolve().parents[1]
# float32 networks, as in the bare loop: bf16's autocast would add its own per-operation cost to one side only.
TINY = ["--model.lvm.init_args.latent_dim", "1", "--model.lvm.init_args.encoder_hidden", "[2]", "--model.lvm.init_args.decoder_hidden", "[2]",
        "--model.networks_bf16", "false"]  # fmt: skip
CASES = {
    "train.py": [],
    "no logger": ["--trainer.logger", "false"],
    "no progress bar": ["--trainer.enable_progress_bar", "false"],
    "neither": ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"],
}
FLOOR = ["bare floor", "Lightning floor", "Lightning manual"]
SKIP = 100  # steps left out: the first allocations, the first logged step


class Scalar(pl.LightningModule):
    """One parameter p and the loss p²: a training step with nothing to compute, so that what it costs is the loop's;
    ``manual``: Lightning's manual optimization (the step calls backward and the optimizer itself)."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.ones(()))
        self.automatic_optimization = not manual

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.p.square()
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class Batches:
    """``steps`` one-element batches: one loader (a list would be taken by Lightning as a list of loaders)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.batch = steps, torch.zeros(1)

    def __iter__(self) -> Any:
        return iter([self.batch] * self.steps)

    def __len__(self) -> int:
        return self.steps


def floor(case: str, steps: int, recorder: "StepStamps", device: str) -> None:
    """``steps`` of Scalar on one-element batches, by a bare Trainer (``case``: automatic or manual optimization) or by a plain loop."""
    module, batches = Scalar(manual=case == "Lightning manual"), Batches(steps)
    if case != "bare floor":
        off = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
        accelerator = "gpu" if device == "cuda" else "cpu"
        pl.Trainer(max_steps=steps, accelerator=accelerator, devices=1, callbacks=[recorder], **off).fit(module, train_dataloaders=batches)
        return
    module.to(device)
    optimizer = module.configure_optimizers()
    for index, batch in enumerate(batches):
        batch = batch.to(device)
        recorder.on_train_batch_start()
        loss = module.training_step(batch, index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    recorder.on_train_end()


class StepStamps(pl.Callback):
    """Writes the wall clock at the start of every training batch to ``path`` when training ends."""

    def __init__(self, path: str) -> None:
        self.path, self.stamps = path, []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        Path(self.path).write_text(json.dumps(self.stamps))


def mean_step(stamps: list[float]) -> float:
    """The mean time between consecutive batch starts after the first SKIP (the steps that log or redraw the bar included)."""
    return (stamps[-1] - stamps[SKIP]) / (len(stamps) - 1 - SKIP)


def train_arguments(root: str, steps: int, device: str, work: str) -> list[str]:
    """train.py's arguments for the tiny model: the shipped config, validation and the gap off, logs under ``work``."""
    return ["fit", "--config", str(HERE / "configs" / "fashion_mnist_vae.yaml"), *TINY, "--data.root", root, "--data.batch_size", "10",
            "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--amortization_gap.every_n_epochs", "0",
            "--trainer.logger.init_args.save_dir", work, "--trainer.accelerator", "gpu" if device == "cuda" else "cpu"]  # fmt: skip


def run_case(repo: Path, case: str, root: str, steps: int, device: str) -> float:
    """One fresh process of ``case`` under ``repo``'s code: its mean step in seconds."""
    with tempfile.TemporaryDirectory() as work:
        stamps = Path(work) / "stamps.json"
        paths = ["--repo", str(repo.resolve()), "--root", str(Path(root).resolve())]  # the case runs in the scratch folder
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", case, *paths, "--steps", str(steps), "--device", device]
        # In the scratch folder: without a logger, Lightning writes the run's config.yaml into the working folder.
        subprocess.run([*command, "--stamps", str(stamps), "--work", work], cwd=work, check=True, capture_output=True, text=True)
        return mean_step(json.loads(stamps.read_text()))


def worker(args: argparse.Namespace) -> None:
    """Runs one case in this process and writes its batch stamps to ``args.stamps``."""
    sys.path.insert(0, str(args.repo))
    if args.worker in FLOOR:
        floor(args.worker, args.steps, StepStamps(args.stamps), args.device)
        return
    if args.worker != "bare":
        from lvm_lightning.cli import main

        callback = json.dumps({"class_path": "step_cost.StepStamps", "init_args": {"path": args.stamps}})
        main([*train_arguments(args.root, args.steps, args.device, args.work), *CASES[args.worker], f"--trainer.callbacks+={callback}"])
        return
    import yaml

    from lvm_lightning.cli import build_module
    from lvm_lightning.data import FashionMNISTData

    config = yaml.safe_load((args.repo / "configs" / "fashion_mnist_vae.yaml").read_text())
    section = config["model"]
    section["lvm"]["init_args"].update(latent_dim=1, encoder_hidden=[2], decoder_hidden=[2])
    torch.manual_seed(0)
    module = build_module(section, 784).to(args.device)
    data = FashionMNISTData(root=args.root, batch_size=10)
    data.setup("fit")
    batches = iter(data.train_dataloader())
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    torch.set_flush_denormal(True)  # as LVMModule.setup does
    recorder = StepStamps(args.stamps)
    for _ in range(args.steps):
        recorder.on_train_batch_start()
        x = next(batches).to(args.device)
        loss = module.losses(x)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    recorder.on_train_end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose code runs (e.g. an older commit's worktree)")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each run (fewer than an epoch of 5,000)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes of each case; the smallest mean counts")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--stamps", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"repo {args.repo}, device {args.device}, {args.steps} steps, {args.repeats} repeats; load average {os.getloadavg()[0]:.2f}", flush=True)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for case in ["bare", *CASES, *FLOOR]:
            best[case] = min(best.get(case, float("inf")), run_case(args.repo, case, args.root, args.steps, args.device))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"{'case':<16} {'ms a step':>9} {'− bare (its own)':>16}")
    for case, seconds in best.items():
        reference = best["bare floor" if case in FLOOR else "bare"]
        print(f"{case:<16} {1e3 * seconds:>9.3f} {1e3 * (seconds - reference):>16.3f}")


if __name__ == "__main__":
    main()
