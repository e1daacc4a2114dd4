"""Per-point variational inference: LocalOptimizer (all points as one tensor) against hand-written loops.

    flock /tmp/lvm_bench.lock .venv/bin/python benchmarks/local_inference.py [--checkpoint CKPT] [--points 1000] [--steps 500] [--device cuda]

Ways to take the same number of Adam steps on the same per-point ELBOs (K samples a step):
- ``local``: lvm_lightning.inference.LocalOptimizer, all points at once, θ frozen;
- ``local_bf16``: the same with its matrix products autocast to bfloat16 (``precision="bf16"``);
- ``plain``: a plain batched PyTorch loop (λ an nn.Parameter, torch.optim.Adam, loss.backward(), θ frozen
  by requires_grad_(False) as a careful user would);
- ``serial``: the plain loop run one point at a time, as Cremer et al.'s code does; it is timed on
  ``--serial-points`` points and extrapolated to ``--points`` (it is linear in the number of points).
GFLOP/s count every floating-point operation of the matrix products (torch's FlopCounterMode) over
one step of each method, against a large matmul on the same machine. Without ``--checkpoint`` the
model is an untrained Fashion-MNIST VAE (784-200-200-50 tanh MLP, Bernoulli decoder) on random
binary data: the cost of a step does not depend on the weights. ``--plateau`` (use it with a
trained ``--checkpoint``) runs the plateau rule to convergence with whole-batch stopping in float32
(the reference), per-point stopping, and per-point stopping in bfloat16, and reports each one's
seconds and its ELBO(q*) (1000 samples) minus the reference's, paired over points.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from lvm_lightning.inference import LocalOptimizer
from lvm_lightning.models import VAE
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import elbo
from lvm_lightning.timing import counted_flops, matmul_gflops, timed


def plain_steps(model: LatentVariableModel, x: Tensor, steps: int, num_samples: int, lr: float) -> Tensor:
    """The straightforward batched loop: reparameterized ELBO, loss.backward(), Adam on λ (the caller freezes θ)."""
    params = nn.Parameter(model.encoder.net(x).detach())
    optimizer = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        q = model.encoder.family(params)
        z = q.rsample((num_samples,))
        loss = -(model.log_joint(x, z) - q.log_prob(z)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return params.detach()


def serial_steps(model: LatentVariableModel, x: Tensor, steps: int, num_samples: int, lr: float) -> Tensor:
    """One point at a time (deliberately a Python loop over points): the baseline of Cremer et al.'s code."""
    return torch.cat([plain_steps(model, point[None], steps, num_samples, lr) for point in x])


def seconds_after_warmup(fn: Callable[[], object], device: torch.device, warmup: Callable[[], object]) -> float:
    """Seconds of one call of ``fn``, after ``warmup`` has paid the one-off costs (CUDA kernels, allocator)."""
    warmup()
    return timed(fn, device)[1]


def plateau(model: LatentVariableModel, x: Tensor, reference: LocalOptimizer) -> dict[str, dict[str, float]]:
    """Seconds, steps and ELBO(q*) of plateau-rule runs; ELBO differences to ``reference`` are paired over points."""
    variants = {"batch": reference, "point": replace(reference, stopping="point"), "point_bf16": replace(reference, stopping="point", precision="bf16")}
    out, bounds = {}, {}
    for name, optimizer in variants.items():
        result, spent = timed(lambda: optimizer.fit(model, x), x.device)
        with torch.no_grad():
            bounds[name] = elbo(model, x, optimizer.posterior(model, result.params), 1000)
        difference = bounds[name] - bounds["batch"]
        out[name] = {
            "seconds": spent,
            "mean_steps": result.steps.double().mean().item(),
            "converged_fraction": result.converged.double().mean().item(),
            "elbo_optimized": bounds[name].mean().item(),
            "minus_batch": difference.mean().item(),
            "minus_batch_stderr": (difference.std() / len(x) ** 0.5).item(),
        }
    return out


def load(checkpoint: str, points: int) -> tuple[LatentVariableModel, Tensor]:
    """A trained model and the first ``points`` rows of its validation split."""
    from lvm_lightning.runs import load_run, run_data

    module, stored = load_run(checkpoint, map_location="cpu")
    return module.lvm.eval(), run_data(stored, checkpoint).splits["val"][:points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained .ckpt (its validation points); default: an untrained Fashion-MNIST VAE on random bits")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--samples", type=int, default=10, help="K, samples per point per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--serial-points", type=int, default=20, help="points timed one at a time, then extrapolated")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    parser.add_argument("--plateau", action="store_true", help="also run per-point and whole-batch plateau stopping to convergence")
    parser.add_argument("--max-steps", type=int, default=5000, help="step cap of the --plateau runs")
    parser.add_argument("--output", help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.checkpoint:
        model, x = load(args.checkpoint, args.points)
    else:
        model = VAE(784, 50, encoder_hidden=(200, 200), decoder_hidden=(200, 200), activation="tanh", likelihood="bernoulli").eval()
        x = torch.bernoulli(torch.full((args.points, 784), 0.3))
    # θ frozen for every method: the hand-written loops then skip θ's gradients, as LocalOptimizer does.
    model, x = model.to(device).requires_grad_(False), x.to(device)
    n, k, steps = len(x), args.samples, args.steps
    fixed = LocalOptimizer(num_samples=k, lr=args.lr, max_steps=steps, check_every=steps)  # one check, at the end: no early stop
    # One step's gradient through .backward() (FlopCounterMode's module hooks reject autograd.grad); θ is frozen, as in fit.
    flops = {
        "local": counted_flops(lambda: fixed.objective(model, x, fixed.initial_params(model, x).requires_grad_()).sum().backward()),
        "plain": counted_flops(lambda: plain_steps(model, x, 1, k, args.lr)),
    }
    peak = matmul_gflops(device)
    bf16 = replace(fixed, precision="bf16")
    short = dict(max_steps=2, check_every=2)  # warm-ups: one-off costs (CUDA kernels, allocator) stay out of the timings
    seconds = {
        "local": seconds_after_warmup(lambda: fixed.fit(model, x), device, lambda: replace(fixed, **short).fit(model, x)),
        "local_bf16": seconds_after_warmup(lambda: bf16.fit(model, x), device, lambda: replace(bf16, **short).fit(model, x)),
        "plain": seconds_after_warmup(lambda: plain_steps(model, x, steps, k, args.lr), device, lambda: plain_steps(model, x, 2, k, args.lr)),
        "serial": seconds_after_warmup(
            lambda: serial_steps(model, x[: args.serial_points], steps, k, args.lr), device, lambda: plain_steps(model, x[:1], 2, k, args.lr)
        )
        * n
        / args.serial_points,
    }
    report = {
        "points": n,
        "steps": steps,
        "samples": k,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads,
        "model": args.checkpoint or "untrained 784-200-200-50 VAE, random bits",
        "matmul_gflops": peak,
        "seconds": seconds,
        "serial_extrapolated_from_points": args.serial_points,
        "speedup_vs_serial": {name: seconds["serial"] / s for name, s in seconds.items() if name != "serial"},
        "gflops": {name: flops[name.removesuffix("_bf16")] * steps / seconds[name] / 1e9 for name in seconds if name != "serial"},
    }
    if args.plateau:
        report["plateau"] = plateau(model, x, LocalOptimizer(num_samples=k, lr=args.lr, max_steps=args.max_steps, stopping="batch"))
    print(json.dumps(report, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
