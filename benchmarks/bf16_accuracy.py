"""bf16 networks against float32, paired: the same model, the same draws, log p̂(x) per point, and training at equal steps.

For a Fashion-MNIST VAE (the IWAE paper's MLP) and a VAE on the 2-D mixture data: evaluation by importance sampling at K
(the same seeded draws in both precisions) gives per-point differences bf16 − fp32; then both precisions train from one seed
for the same steps from each of ``--seeds`` seeds and are scored by fp32 IWAE-K on the same test points. Training is judged
across seeds: a seed's bf16 and fp32 runs share their initialization and data order, and bf16 − fp32 of the mean test
log p(x), paired by seed, is set against its standard error over seeds, the spread that a different seed alone gives
(fp32 seed against fp32 seed is shown as the yardstick). The paired difference over points of one seed is shown too; it
measures the evaluation's noise only, not the optimization's, so it cannot judge training on its own.

    python benchmarks/bf16_accuracy.py --root /usr/share/datasets/fashion-mnist [--steps 1000] [--seeds 4] [--first_seed 0] [--data fashion-mnist mixture] [--train_num_samples 1] [--points 1000] [--num_samples 1000]
"""

import argparse
import json
import math
from functools import partial

import pytorch_lightning as pl
import torch
from torch import Tensor

from lvm_lightning import LVMModule
from lvm_lightning.data import FashionMNISTData, GaussianMixtureData
from lvm_lightning.models import VAE
from lvm_lightning.objectives import ImportanceSampling
from lvm_lightning.rng import seeded_fork
from lvm_lightning.schedules import Adam


def log_px(module: LVMModule, x: Tensor, num_samples: int, bf16: bool, chunk: int = 100) -> Tensor:
    """IWAE-K log p̂(x) per point, the networks in bf16 or not, on draws seeded per chunk (the same in both precisions)."""
    out = []
    with torch.no_grad(), module.lvm.bf16_networks(bf16):
        for start in range(0, len(x), chunk):
            with seeded_fork(torch.device("cpu"), start):
                out.append(ImportanceSampling(num_samples, chunk_size=50).estimate(module.lvm, x[start : start + chunk]).log_px)
    return torch.cat(out).double()


def paired(a: Tensor, b: Tensor) -> dict[str, float]:
    """mean of b − a with its standard error, and the largest |b − a|, nats per point."""
    d = b - a
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d))), "max_abs": float(d.abs().max())}


def train(make_model, data, steps: int, bf16: bool, lr: float, seed: int, num_samples: int) -> LVMModule:
    """A model trained by IWAE-``num_samples`` for ``steps`` from ``seed``, its networks in bf16 or not."""
    pl.seed_everything(seed)
    module = LVMModule(make_model(), ImportanceSampling(num_samples), optimizer=partial(Adam, lr=lr), networks_bf16=bf16)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return module


def over_seeds(values: list[float]) -> dict[str, float]:
    """mean and standard error over seeds."""
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(v.mean()), "stderr": float(v.std() / math.sqrt(len(v)))}


def case(name: str, make_model, data, steps: int, points: int, num_samples: int, lr: float, seeds: range, train_num_samples: int) -> dict:
    data.setup("fit")
    x = data.splits["test"][:points]
    scores: dict[bool, list[Tensor]] = {False: [], True: []}
    for seed in seeds:
        for bf16 in (False, True):
            module = train(make_model, data, steps, bf16, lr, seed, train_num_samples)
            scores[bf16].append(log_px(module, x, num_samples, False))
            if seed == seeds[0] and not bf16:
                evaluation = paired(scores[False][0], log_px(module, x, num_samples, True))
    fp32, bf16 = ([float(s.mean()) for s in scores[b]] for b in (False, True))
    return {
        "data": name,
        "steps": steps,
        "training K": train_num_samples,
        "seeds": [seeds[0], seeds[-1]],
        "points": len(x),
        "K": num_samples,
        "evaluation bf16 - fp32 (same model, same draws)": evaluation,
        "trained fp32: test log p(x), over seeds": over_seeds(fp32),
        "trained bf16: test log p(x), over seeds": over_seeds(bf16),
        "training bf16 - fp32, paired by seed": over_seeds([b - a for a, b in zip(fp32, bf16)]),
        "training fp32 seed s+1 - seed s (the yardstick)": over_seeds([b - a for a, b in zip(fp32, fp32[1:])]),
        "training bf16 - fp32, first seed, paired over points": paired(scores[False][0], scores[True][0]),
        "per seed: test log p(x), fp32 and bf16": [fp32, bf16],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each model")
    parser.add_argument("--seeds", type=int, default=4, help="training seeds of each precision")
    parser.add_argument("--first_seed", type=int, default=0, help="the seeds are first_seed, first_seed + 1, …")
    parser.add_argument("--data", nargs="+", default=["fashion-mnist", "mixture"], choices=["fashion-mnist", "mixture"], help="the cases run")
    parser.add_argument("--train_num_samples", type=int, default=1, help="K of the training objective (1: the ELBO)")
    parser.add_argument("--points", type=int, default=1000, help="test points scored")
    parser.add_argument("--num_samples", type=int, default=1000, help="K of the importance-sampling estimate")
    parser.add_argument("--output", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    cases = {
        "fashion-mnist": lambda: case(
            "fashion-mnist",
            lambda: VAE(784, 50, (200, 200), (200, 200), "tanh", "bernoulli"),
            FashionMNISTData(root=args.root),
            args.steps,
            args.points,
            args.num_samples,
            1e-3,
            seeds,
            args.train_num_samples,
        ),
        "mixture": lambda: case(
            "mixture 2-D",
            lambda: VAE(2, 2, (64, 64), (64, 64)),
            GaussianMixtureData(),
            args.steps,
            args.points,
            args.num_samples,
            3e-3,
            seeds,
            args.train_num_samples,
        ),
    }
    results = [cases[name]() for name in args.data]
    text = json.dumps(results, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
