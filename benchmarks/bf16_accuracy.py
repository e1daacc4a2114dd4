"""bf16 networks against float32, paired: the same model, the same draws, log p̂(x) per point, and training at equal steps.

For a Fashion-MNIST VAE (the IWAE paper's MLP) and a VAE on the 2-D mixture data: evaluation by importance sampling at K
(the same seeded draws in both precisions) gives per-point differences bf16 − fp32; then both precisions train from one seed
for the same steps and are scored by fp32 IWAE-K on the same test points, the paired difference with its standard error.

    python benchmarks/bf16_accuracy.py --root /usr/share/datasets/fashion-mnist [--steps 1000] [--points 1000] [--num_samples 1000]
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
    module.lvm.networks_in_bf16(bf16)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            with seeded_fork(torch.device("cpu"), start):
                out.append(ImportanceSampling(num_samples, chunk_size=50).estimate(module.lvm, x[start : start + chunk]).log_px)
    module.lvm.networks_in_bf16(False)
    return torch.cat(out).double()


def paired(a: Tensor, b: Tensor) -> dict[str, float]:
    """mean of b − a with its standard error, and the largest |b − a|, nats per point."""
    d = b - a
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d))), "max_abs": float(d.abs().max())}


def train(make_model, data, steps: int, bf16: bool, lr: float) -> LVMModule:
    """A VAE trained for ``steps`` from seed 0, its networks in bf16 or not."""
    pl.seed_everything(0)
    module = LVMModule(make_model(), ImportanceSampling(1), optimizer=partial(Adam, lr=lr), networks_bf16=bf16)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    module.lvm.networks_in_bf16(False)
    return module


def case(name: str, make_model, data, steps: int, points: int, num_samples: int, lr: float) -> dict:
    data.setup("fit")
    x = data.splits["test"][:points]
    fp32 = train(make_model, data, steps, False, lr)
    evaluation = paired(log_px(fp32, x, num_samples, False), log_px(fp32, x, num_samples, True))
    bf16 = train(make_model, data, steps, True, lr)
    a, b = log_px(fp32, x, num_samples, False), log_px(bf16, x, num_samples, False)
    return {
        "data": name,
        "steps": steps,
        "points": len(x),
        "K": num_samples,
        "evaluation bf16 - fp32 (same model, same draws)": evaluation,
        "trained fp32: test log p(x)": {"mean": float(a.mean()), "stderr": float(a.std() / math.sqrt(len(a)))},
        "trained bf16: test log p(x)": {"mean": float(b.mean()), "stderr": float(b.std() / math.sqrt(len(b)))},
        "training bf16 - fp32 (paired over points)": paired(a, b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each model")
    parser.add_argument("--points", type=int, default=1000, help="test points scored")
    parser.add_argument("--num_samples", type=int, default=1000, help="K of the importance-sampling estimate")
    parser.add_argument("--output", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = [
        case(
            "fashion-mnist",
            lambda: VAE(784, 50, (200, 200), (200, 200), "tanh", "bernoulli"),
            FashionMNISTData(root=args.root),
            args.steps,
            args.points,
            args.num_samples,
            1e-3,
        ),
        case("mixture 2-D", lambda: VAE(2, 2, (64, 64), (64, 64)), GaussianMixtureData(), args.steps, args.points, args.num_samples, 3e-3),
    ]
    text = json.dumps(results, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
