"""Two checkpoints of one data set scored on the same test points with the same draws: each model's mean IWAE-K log p̂(x), and
their difference with its paired standard error (the points' spread cancels, leaving the models' difference).

    python benchmarks/paired_log_px.py A.ckpt B.ckpt --num_points 2000 --num_samples 5000 --output paired.json
"""

import argparse
import json
import math

import torch

from lvm_lightning import LVMModule
from lvm_lightning.objectives import ImportanceSampling
from lvm_lightning.rng import seeded_fork
from lvm_lightning.runs import load_run, run_data


def per_point_log_px(module: LVMModule, x: torch.Tensor, num_samples: int, batch_size: int) -> torch.Tensor:
    """IWAE-K log p̂(x) per point [N], batch b drawn from seed b (the same draws for every model of this shape)."""
    estimator = ImportanceSampling(num_samples, chunk_size=2**16)
    rows = []
    with torch.no_grad():
        for index, batch in enumerate(x.split(batch_size)):
            with seeded_fork(torch.device("cpu"), index):
                rows.append(estimator.estimate(module.lvm, batch).log_px)
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs=2)
    parser.add_argument("--num_points", type=int, default=2000)
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--output")
    args = parser.parse_args()
    # The first run's test split (its data module rebuilt from the checkpoint, as lvm-evaluate does).
    runs = [load_run(path) for path in args.checkpoints]
    x = run_data(runs[0][1], args.checkpoints[0]).splits["test"][: args.num_points]
    values = [per_point_log_px(module.eval(), x, args.num_samples, args.batch_size) for module, _ in runs]
    difference = values[1] - values[0]
    report = {
        "checkpoints": args.checkpoints,
        "num_points": len(x),
        "num_samples": args.num_samples,
        "log_px": [float(v.mean()) for v in values],
        "log_px_stderr": [float(v.std() / math.sqrt(len(v))) for v in values],
        "difference": float(difference.mean()),
        "difference_stderr": float(difference.std() / math.sqrt(len(difference))),
    }
    print(json.dumps(report, indent=1))
    if args.output:
        with open(args.output, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
