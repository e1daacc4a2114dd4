"""docs/models.md's table: six Fashion-MNIST models trained at one budget (epochs, batch size, seed), scored on the same test images.

    OMP_NUM_THREADS=1 python benchmarks/models_table.py /tmp/models_table --epochs 10 [more train.py options, for every run]

Trains, one run at a time, the one- and two-stochastic-layer VAEs (K = 1 ELBO both, so only the depth differs), SA-VAE, the
VampPrior VAE and IWAE at K = 5 with one and two layers, from the shipped configs (OUT/runs/NAME; a run whose last.ckpt exists
is kept). Then each on the first ``--num_points`` test images (the data module's fixed test binarization, the same rows for
every model): log p(x) by IWAE-K (K = ``--num_samples``) and the ELBO from the same draws, AIS on the first ``--ais_points``,
the amortization gap ELBO(q*) − ELBO(q_φ) on the first ``--gap_points`` (``gap_decomposition``, q* by ``LocalOptimizer``;
SA-VAE's refined ELBO beside them), and the active units per layer (Cov_x(E_q[z_u]) > 0.01) on the scored images. Every
estimate's batch i draws from the stream seeded by i, as lvm-evaluate does. Per-point values go to OUT/NAME.pt, the table to
OUT/models.md, with each model's difference from the one-layer VAE paired over points (its standard error is the
differences' spread / √N).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from lvm_lightning.callbacks.images import active_units, mean_and_error
from lvm_lightning.estimates import estimate_batches
from lvm_lightning.inference import LocalOptimizer
from lvm_lightning.inference.gaps import gap_decomposition
from lvm_lightning.objectives import AIS, ELBO, ImportanceSampling
from lvm_lightning.rng import seeded_fork
from lvm_lightning.runs import load_run, run_data

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Model:
    """One row: its run name, its label, the shipped config it trains from and the options that differ from that config."""

    name: str
    label: str
    config: str
    options: tuple[str, ...] = ()


def models(savae_steps: int) -> list[Model]:
    """The table's rows, the one-layer VAE (the paired reference) first."""
    k1, k5 = ("--model.estimator.init_args.num_samples", "1"), ("--model.estimator.init_args.num_samples", "5")
    return [
        Model("vae", "VAE, 1 layer (K = 1)", "fashion_mnist_vae.yaml"),
        Model("vae_2layer", "VAE, 2 layers (K = 1)", "fashion_mnist_iwae_2layer.yaml", k1),
        Model("savae", f"SA-VAE, 1 layer ({savae_steps} steps)", "fashion_mnist_savae.yaml", ("--model.estimator.init_args.num_steps", str(savae_steps))),
        Model("vamp", "VampPrior VAE, 1 layer (K = 1)", "fashion_mnist_vamp.yaml"),
        Model("iwae5", "IWAE, 1 layer (K = 5)", "fashion_mnist_iwae.yaml", k5),
        Model("iwae5_2layer", "IWAE, 2 layers (K = 5)", "fashion_mnist_iwae_2layer.yaml", k5),
    ]


def checkpoint(out: Path, model: Model) -> Path:
    """Where the run's last checkpoint lies."""
    return out / "runs" / model.name / "version_0" / "checkpoints" / "last.ckpt"


def train(out: Path, model: Model, args: argparse.Namespace) -> float:
    """Trains ``model`` at the common budget (train.py in a child process, its log in OUT/train_NAME.log); the wall seconds."""
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / model.config)]
    command += ["--data.root", args.data_root, "--trainer.max_epochs", str(args.epochs), "--data.batch_size", str(args.batch_size)]
    command += ["--seed_everything", str(args.seed), "--trainer.enable_progress_bar", "false", "--amortization_gap.every_n_epochs", "0"]
    command += ["--trainer.logger.init_args.save_dir", str(out / "runs"), "--trainer.logger.init_args.name", model.name, *model.options, *args.train_options]
    start = time.perf_counter()
    with open(out / f"train_{model.name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=out)
    return time.perf_counter() - start


def summary(values: Tensor) -> dict[str, float]:
    """Mean and standard error (std / √N) over points."""
    return {"mean": values.mean().item(), "stderr": values.std().item() / math.sqrt(values.numel()), "num_points": values.numel()}


def score(path: Path, x: Tensor, args: argparse.Namespace) -> dict[str, Tensor]:
    """Per-point IWAE-K log p̂(x) and ELBO (one set of draws), AIS, ELBO(q_φ), ELBO(q*) (and SA-VAE's refined ELBO), and
    per layer the active units: tensors by name."""
    module, _ = load_run(str(path))
    module.eval()
    model = module.lvm
    chunk = module.hparams.get("chunk_size") or 2**14
    estimators = [ImportanceSampling(args.num_samples, chunk), ELBO(args.num_samples, chunk)]  # one set of draws for both
    by_batch = estimate_batches(model, x, estimators, args.batch_size_eval, args.seed)
    values = {name: torch.cat([by_batch[i][name].log_px for i in sorted(by_batch)]) for name in ("importance_sampling", "elbo")}
    ais = AIS(num_steps=args.ais_steps, chunk_size=chunk)
    if args.ais_points > 0:
        by_batch = estimate_batches(model, x[: args.ais_points], [ais], args.batch_size_eval, args.seed)
        values["ais"] = torch.cat([by_batch[i]["ais"].log_px for i in sorted(by_batch)])
    if args.gap_points > 0:
        with seeded_fork(x.device, args.seed):
            gaps = gap_decomposition(model, x[: args.gap_points], LocalOptimizer(), chunk_size=chunk, estimator=module.estimator)
        values.update(elbo_amortized=gaps.elbo_amortized, elbo_optimized=gaps.elbo_optimized, gap_log_px=gaps.log_px)
        if gaps.elbo_semi_amortized is not None:
            values["elbo_semi_amortized"] = gaps.elbo_semi_amortized
    with torch.no_grad():
        means, errors = zip(*(mean_and_error(model.posterior(batch), x.device) for batch in x.split(args.batch_size_eval)))
    means, error = torch.cat(means), torch.cat(errors)
    layers = model.latent_layers() or {"z": slice(None)}
    values["active_units"] = torch.stack([active_units(means[:, layer], 0.01, error[:, layer]) for layer in layers.values()])
    return values


def cell(values: dict[str, Tensor], reference: dict[str, Tensor], name: str, paired: bool) -> str:
    """'mean ± stderr', and where ``paired`` the difference from the reference's same points '(Δ ± stderr)'."""
    if name not in values:
        return "–"
    own = summary(values[name])
    text = f"{own['mean']:.2f} ± {own['stderr']:.2f}"
    if paired and name in reference:
        difference = summary(values[name] - reference[name])
        text += f" (Δ {difference['mean']:+.2f} ± {difference['stderr']:.2f})"
    return text


def table(rows: list[tuple[Model, dict[str, Tensor], float]], args: argparse.Namespace) -> str:
    """The markdown table; Δ: minus the first row (the one-layer VAE), paired over the same points."""
    reference = rows[0][1]
    head = (
        f"| model | test log p(x), IWAE-{args.num_samples} ({args.num_points} images) | AIS ({args.ais_points} images, {args.ais_steps} steps × 4 chains) "
        f"| ELBO(q_φ) | amortization gap ELBO(q*) − ELBO(q_φ) ({args.gap_points} images) | active units per layer | training (s, 1 thread) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for index, (model, values, seconds) in enumerate(rows):
        paired = index > 0
        gap = {"gap": values["elbo_optimized"] - values["elbo_amortized"]} if "elbo_optimized" in values else {}
        gap_cell = cell(gap, {}, "gap", False)
        if "elbo_semi_amortized" in values:  # how much of the gap SA-VAE's own refinement closes, on the same points
            closed = summary(values["elbo_semi_amortized"] - values["elbo_amortized"])
            gap_cell += f"; refinement closes {closed['mean']:.2f} ± {closed['stderr']:.2f}"
        units = " / ".join(str(int(n)) for n in values["active_units"])
        lines.append(
            f"| {model.label} | {cell(values, reference, 'importance_sampling', paired)} | {cell(values, reference, 'ais', paired)} "
            f"| {cell(values, reference, 'elbo', paired)} | {gap_cell} | {units} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def same_points_table(rows: list[tuple[Model, dict[str, Tensor], float]], args: argparse.Namespace) -> str:
    """IWAE-K and AIS on the AIS images alone, and AIS − IWAE paired over them: which bound is tighter, point by point."""
    lines = [
        f"| model | IWAE-{args.num_samples} ({args.ais_points} images) | AIS (the same {args.ais_points}) | AIS − IWAE, paired |",
        "|---|---|---|---|",
    ]
    reference = {name: values[: args.ais_points] for name, values in rows[0][1].items() if name in ("importance_sampling", "ais")}
    for index, (model, values, _) in enumerate(rows):
        if "ais" not in values:
            continue
        own = {"importance_sampling": values["importance_sampling"][: args.ais_points], "ais": values["ais"]}
        difference = {"difference": own["ais"] - own["importance_sampling"]}
        lines.append(
            f"| {model.label} | {cell(own, reference, 'importance_sampling', index > 0)} | {cell(own, reference, 'ais', index > 0)} "
            f"| {cell(difference, {}, 'difference', False)} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the runs, per-point values and the table")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--savae_steps", type=int, default=20, help="SA-VAE's refinement steps per training step")
    parser.add_argument("--data_root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--num_points", type=int, default=1000)
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--ais_points", type=int, default=200)
    parser.add_argument("--ais_steps", type=int, default=1000)
    parser.add_argument("--gap_points", type=int, default=100)
    parser.add_argument("--batch_size_eval", type=int, default=100)
    parser.add_argument("--only", nargs="+", help="train and score only these rows (names: vae, vae_2layer, savae, vamp, iwae5, iwae5_2layer)")
    args, args.train_options = parser.parse_known_args(argv)  # the rest: train.py options common to every run
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)  # tiny importance weights: see LVMModule.setup
    chosen = [m for m in models(args.savae_steps) if args.only is None or m.name in args.only]
    timings = json.loads((out / "train_seconds.json").read_text()) if (out / "train_seconds.json").exists() else {}
    x = None
    rows = []
    for model in chosen:
        if not checkpoint(out, model).exists():
            timings[model.name] = train(out, model, args)
            (out / "train_seconds.json").write_text(json.dumps(timings, indent=1))
            print(f"trained {model.name} in {timings[model.name]:.0f} s", flush=True)
        scored = out / f"{model.name}.pt"
        if not scored.exists():
            if x is None:  # the test split of the first run, binarized as the data module fixes it: the same images for every row
                module_checkpoint = load_run(str(checkpoint(out, model)))[1]
                x = run_data(module_checkpoint, str(checkpoint(out, model)), data_root=args.data_root).splits["test"][: args.num_points]
            start = time.perf_counter()
            torch.save(score(checkpoint(out, model), x, args), scored)
            print(f"scored {model.name} in {time.perf_counter() - start:.0f} s", flush=True)
        rows.append((model, torch.load(scored), timings.get(model.name, float("nan"))))
    text = table(rows, args) + "\n\n" + same_points_table(rows, args)
    (out / "models.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
