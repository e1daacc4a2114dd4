"""Where enumeration stops being the answer: seconds per training step of a CategoricalVAE with C^M latent values, trained by
exact enumeration (θ by log Σ_z p(z) p_θ(x|z), φ by the enumerated wake objective) and by VIMCO (K sampled z), side by side.

    python benchmarks/enumeration_vs_vimco.py [--categories 10] [--max_variables 4] [--num_samples 10] [--batch 256]

Each step's time is the median of 10 after 3 warm-up steps, on one thread; a plain PyTorch step with the same networks and
one z per point (the cost floor of any estimator) is timed in the same sitting as the reference.
"""

import argparse
import statistics
import time

import torch

from lvm_lightning.models import CategoricalVAE
from lvm_lightning.objectives import VIMCO, Exact, ImportanceSampling


def seconds_per_step(model: CategoricalVAE, step, x: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time of ``step(x)`` (forward, backward, Adam) over ``repeats`` calls after 3 warm-up calls."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i in range(3 + repeats):
        start = time.perf_counter()
        optimizer.zero_grad()
        step(x).backward()
        optimizer.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--max_variables", type=int, default=4)
    parser.add_argument("--num_samples", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2)
    print(f"{'values C^M':>11} {'plain step, ms':>15} {'enumerated, ms':>15} {'VIMCO K=' + str(args.num_samples) + ', ms':>16} {'enumerated / VIMCO':>19}")
    for m in range(1, args.max_variables + 1):
        values = args.categories**m
        model = CategoricalVAE(2, m, args.categories, max_enumerate=values)

        def plain(x: torch.Tensor) -> torch.Tensor:
            # One z per point and no estimator: encoder, sample, decoder, a log-likelihood.
            z = model.posterior(x).sample()
            return -model.decoder(z).log_prob(x).mean() - model.posterior(x).log_prob(z).mean()

        exact, vimco = Exact(), ImportanceSampling(args.num_samples, gradient=VIMCO())
        row = [seconds_per_step(model, plain, x)]
        row.append(seconds_per_step(model, lambda x: -exact.objective(model, x).surrogate.mean(), x))
        row.append(seconds_per_step(model, lambda x: -vimco.objective(model, x).surrogate.mean(), x))
        print(f"{values:>11} {1e3 * row[0]:>15.2f} {1e3 * row[1]:>15.2f} {1e3 * row[2]:>16.2f} {row[1] / row[2]:>19.1f}", flush=True)


if __name__ == "__main__":
    main()
