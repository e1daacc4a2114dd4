"""The encoder's and decoder's gradient SNR (median over weights of |E g| / std g) for K = 1, 10, 100 under the reparameterized,
STL and DReG encoder gradients: on Rainforth et al.'s linear-Gaussian example and, given a checkpoint, on a trained model.

    python benchmarks/gradient_snr.py [--checkpoint CKPT] [--num_estimates 1000] [--batch_size 64] [--output snr.json]

Reading: with M draws a gradient of mean zero reads as about 0.67/√M (the median of |N(0,1)|/√M), the table's floor.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvm_lightning.callbacks import gradient_snr  # noqa: E402
from lvm_lightning.models.examples import rainforth_model  # noqa: E402
from lvm_lightning.objectives import STL, DReG, ImportanceSampling, Reparameterized  # noqa: E402
from lvm_lightning.runs import load_run, run_data  # noqa: E402

KS = (1, 10, 100)
GRADIENTS = {"reparam": Reparameterized(), "stl": STL(), "dreg": DReG()}  # by the name each row is reported under


def table(model, x: torch.Tensor, num_estimates: int) -> dict[str, dict[str, float]]:
    """{f'{gradient} K={k}': {'encoder': SNR, 'decoder': SNR}}, every cell from seed 0."""
    rows = {}
    for gradient, estimator in GRADIENTS.items():
        for k in KS:
            torch.manual_seed(0)
            ratios = gradient_snr(ImportanceSampling(k, gradient=estimator), model, x, num_estimates)
            rows[f"{gradient} K={k}"] = {name: float(value) for name, value in ratios.items()}
            print(f"{gradient:>8} K={k:<4} " + "  ".join(f"{name} {value:.3f}" for name, value in rows[f"{gradient} K={k}"].items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--num_estimates", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output")
    args = parser.parse_args()
    report = {"num_estimates": args.num_estimates, "floor": 0.674 / args.num_estimates**0.5}
    print("Rainforth et al.'s example (2-D linear Gaussian, 8 points)")
    torch.set_default_dtype(torch.float64)
    report["rainforth"] = table(*rainforth_model(0), args.num_estimates)
    torch.set_default_dtype(torch.float32)
    if args.checkpoint:
        print(f"{args.checkpoint}, the first {args.batch_size} test points")
        module, checkpoint = load_run(args.checkpoint)
        data, model = run_data(checkpoint, args.checkpoint), module.lvm
        report["checkpoint"] = {"path": args.checkpoint, **table(model, data.splits["test"][: args.batch_size], args.num_estimates)}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
