"""The Bernoulli log-likelihood, torch's (binary_cross_entropy_with_logits) against ours (models/bernoulli.py), at the shapes
training and evaluation give it: milliseconds per call, forward alone and forward with backward.

    flock /tmp/lvm_cpu.lock .venv/bin/python benchmarks/bernoulli_likelihood.py

Shapes [K, B, 784]: an IWAE-5000 evaluation chunk (5 × 100), validation at K = 32 on 500 images, a K = 50 and a K = 1
training step. Each figure is the best of 5 rounds of ``calls`` calls.
"""

import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.distributions import Bernoulli, Independent

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvm_lightning.models.bernoulli import IndependentBernoulli  # noqa: E402

SHAPES = {
    "IWAE-5000 chunk": ((5, 100, 784), 200),
    "validation, K = 32": ((32, 500, 784), 5),
    "training, K = 50": ((50, 100, 784), 20),
    "training, K = 1": ((1, 100, 784), 500),
}


def milliseconds(call: Callable[[], object], calls: int) -> float:
    """Best of 5 rounds, milliseconds per call."""
    call()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    print(f"{'shape':<20} {'torch fwd':>9} {'ours fwd':>9} {'ratio':>6} {'torch f+b':>9} {'ours f+b':>9} {'ratio':>6}")
    for name, (shape, calls) in SHAPES.items():
        logits = (torch.randn(*shape) * 4).requires_grad_()
        x = torch.bernoulli(torch.full(shape[1:], 0.3))

        def theirs() -> torch.Tensor:
            return Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(x)

        def ours() -> torch.Tensor:
            return IndependentBernoulli(logits).log_prob(x)

        with torch.no_grad():
            forward = [milliseconds(f, calls) for f in (theirs, ours)]
        both = [milliseconds(lambda f=f: f().sum().backward(), calls) for f in (theirs, ours)]
        print(f"{name:<20} {forward[0]:>9.3f} {forward[1]:>9.3f} {forward[0] / forward[1]:>6.2f} {both[0]:>9.3f} {both[1]:>9.3f} {both[0] / both[1]:>6.2f}")


if __name__ == "__main__":
    main()
