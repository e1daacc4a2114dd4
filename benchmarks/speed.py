"""Training and evaluation speed in one sitting: train.py as shipped against the careful plain loops of ../shared/bench, with
achieved GFLOP/s beside the machine's measured matrix-product peak in float32 and bfloat16.

    flock /tmp/lvm_cpu.lock .venv/bin/python benchmarks/speed.py [--root FASHION_MNIST] [--bench ../shared/bench] [--ks 1 5 50] [--repo OLDER_CHECKOUT]

For each K: the seconds per step of ``train.py fit --config fashion_mnist_vae`` (K = 1) or ``fashion_mnist_iwae`` (K > 1) with
``--model.estimator.init_args.num_samples K``, validation and the gap off (progress bar, logger and checkpoints as shipped), from the steps' own timestamps in a callback-free
measurement (the run's wall time between its first and last logged step, read from its TensorBoard event file), with
``--model.networks_bf16 false`` and ``true`` (the configs ship ``auto``: true where the device has bf16 matrix hardware, as
printed); and the shared plain loop (plain_vae_epoch.py for K = 1, plain_iwae_steps.py otherwise), each in a fresh process,
alternating, the fastest of ``--repeats`` runs each. FLOPs per step are counted (torch's FlopCounterMode: the matrix products of one forward and backward pass).
Evaluation: IWAE-K_eval log p̂(x) on test points in float32 and with bf16 networks.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BATCH = 100
HERE = Path(__file__).resolve().parents[1]


def config_of(k: int) -> str:
    """The shipped config of the IWAE paper's MLP at this K."""
    return "fashion_mnist_vae" if k == 1 else "fashion_mnist_iwae"


def ours_seconds_per_step(repo: Path, k: int, steps: int, root: str, bf16: bool, device: torch.device) -> float:
    """Seconds per step of ``repo``'s train.py as shipped (its progress bar too), between the first and the last logged step
    (start-up and the first steps excluded)."""
    with tempfile.TemporaryDirectory() as work:
        args = [sys.executable, str(repo / "train.py"), "fit", "--config", str(repo / "configs" / f"{config_of(k)}.yaml"), "--data.root", root, "--data.batch_size", str(BATCH),
                "--model.estimator.init_args.num_samples", str(k), "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
                "--amortization_gap.every_n_epochs", "0", "--trainer.logger.init_args.save_dir", work,
                "--model.networks_bf16", str(bf16).lower(), "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu"]  # fmt: skip
        subprocess.run(args, cwd=work, check=True, capture_output=True)
        events = EventAccumulator(str(next(Path(work).rglob("events.out.tfevents.*")).parent))
        events.Reload()
        loss = events.Scalars("train/loss")
        return (loss[-1].wall_time - loss[0].wall_time) / (loss[-1].step - loss[0].step)


def plain_seconds_per_step(k: int, steps: int, root: str, bench: Path) -> float:
    """Seconds per step of the shared careful plain loop."""
    if k == 1:
        out = subprocess.run([sys.executable, str(bench / "plain_vae_epoch.py"), root, str(BATCH)], check=True, capture_output=True, text=True)
        return float(out.stdout.split()[-1]) / math.ceil(60_000 / BATCH)
    out = subprocess.run([sys.executable, str(bench / "plain_iwae_steps.py"), root, str(k), str(steps), str(BATCH)], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1]) / steps


def step_flops(repo: Path, k: int, x: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward pass at K (the config's model and estimator)."""
    from lvm_lightning.cli import build_module
    from lvm_lightning.timing import counted_flops

    section = yaml.safe_load((repo / "configs" / f"{config_of(k)}.yaml").read_text())["model"]
    module = build_module(section, 784)
    module.estimator.num_samples = k
    return counted_flops(lambda: module.losses(x)[0].backward())


def evaluation(model: torch.nn.Module, x: torch.Tensor, k: int, bf16: bool, device: torch.device) -> tuple[float, int, torch.Tensor]:
    """Seconds and FLOPs of IWAE-K log p̂(x) on ``x``, the same draws whatever the precision of the networks."""
    from lvm_lightning.objectives import ImportanceSampling
    from lvm_lightning.timing import counted_flops, timed

    model.networks_in_bf16(bf16)
    estimator = ImportanceSampling(k, chunk_size=500)
    with torch.no_grad():
        torch.manual_seed(0)
        estimator.estimate(model, x[:2])  # warm-up
        torch.manual_seed(0)
        result, seconds = timed(lambda: estimator.estimate(model, x).log_px, device)
        flops = counted_flops(lambda: estimator.estimate(model, x[:10])) * len(x) // 10
    return seconds, flops, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="folder of the Fashion-MNIST .gz files")
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose train.py, configs and code run (e.g. an older commit's worktree)")
    parser.add_argument("--bench", type=Path, help="folder of the shared plain loops (default: shared/bench beside this checkout)")
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 5, 50], help="numbers of importance samples in training (none: evaluation only)")
    parser.add_argument("--steps", type=int, default=500, help="training steps per run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where train.py and the evaluation run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each training measurement; the fastest counts")
    parser.add_argument("--eval_points", type=int, default=100, help="test points of the evaluation timing")
    parser.add_argument("--eval_k", type=int, default=5000, help="K of the evaluation timing")
    args = parser.parse_args()
    bench = args.bench or HERE.parent / "shared" / "bench"
    sys.path.insert(0, str(args.repo))  # the code under measurement: this checkout's or --repo's
    from lvm_lightning.cli import build_module
    from lvm_lightning.data import FashionMNISTData
    from lvm_lightning.precision import native_bf16
    from lvm_lightning.timing import matmul_gflops

    device = torch.device(args.device)
    peaks: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}

    def measure_peak() -> None:
        # Again before every row and at the end: the fraction of peak uses the best seen, as this machine's speed drifts.
        for dtype, seen in peaks.items():
            seen.append(matmul_gflops(device, dtype))

    measure_peak()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    shipped = "bf16" if native_bf16(device) else "float32"
    print(f"the Fashion-MNIST configs as shipped (networks_bf16: auto) train with {shipped} networks on this device", flush=True)
    data = FashionMNISTData(root=args.root)
    data.setup("fit")
    x = torch.bernoulli(data.splits["train"][:BATCH], generator=torch.Generator().manual_seed(0))
    rows = []
    for k in args.ks:
        measure_peak()
        # Alternating, one of each per round: this machine's speed drifts over minutes, and the fastest of each counts.
        times: dict[str, list[float]] = {"ours": [], "ours_bf16": [], "plain": []}
        for _ in range(args.repeats):
            times["ours"].append(ours_seconds_per_step(args.repo, k, args.steps, args.root, False, device))
            times["ours_bf16"].append(ours_seconds_per_step(args.repo, k, args.steps, args.root, True, device))
            # The shared plain loops run on the CPU only: on a GPU the columns against them are NaN.
            times["plain"].append(plain_seconds_per_step(k, args.steps, args.root, bench) if device.type == "cpu" else math.nan)
        print(f"K = {k}: seconds a step, each run: {json.dumps({name: [round(t, 5) for t in ts] for name, ts in times.items()})}", flush=True)
        rows.append((k, *(min(times[name]) for name in ("ours", "ours_bf16", "plain")), step_flops(args.repo, k, x) / 1e9))
    test = torch.bernoulli(data.splits["test"][: args.eval_points], generator=torch.Generator().manual_seed(1)).to(device)
    torch.manual_seed(0)  # an untrained VAE of the IWAE paper's MLP: speed does not depend on the weights
    model = build_module(yaml.safe_load((args.repo / "configs" / "fashion_mnist_vae.yaml").read_text())["model"], 784).lvm.to(device)
    (seconds, flops, fp32), (seconds_bf16, _, bf16) = (evaluation(model, test, args.eval_k, bf16, device) for bf16 in (False, True))
    measure_peak()
    peak = {dtype: max(seen) for dtype, seen in peaks.items()}
    print(f"matrix-product peak, best of {len(peaks[torch.float32])} measurements in this sitting: float32 {peak[torch.float32]:.0f} GFLOP/s "
          f"(lowest {min(peaks[torch.float32]):.0f}), bfloat16 {peak[torch.bfloat16]:.0f} GFLOP/s (lowest {min(peaks[torch.bfloat16]):.0f})")  # fmt: skip
    print(f"{'K':>3} {'ours s/step':>11} {'ours bf16':>10} {'plain':>9} {'plain/ours':>10} {'plain/ours bf16':>15} {'GFLOP/step':>10} "
          f"{'ours GFLOP/s':>12} {'% fp32 peak':>11} {'bf16 GFLOP/s':>12} {'% bf16 peak':>11}")  # fmt: skip
    for k, ours, ours_bf16, plain, gflop in rows:
        print(f"{k:>3} {ours:>11.4f} {ours_bf16:>10.4f} {plain:>9.4f} {plain / ours:>10.2f} {plain / ours_bf16:>15.2f} {gflop:>10.3f} "
              f"{gflop / ours:>12.1f} {100 * gflop / ours / peak[torch.float32]:>11.1f} {gflop / ours_bf16:>12.1f} "
              f"{100 * gflop / ours_bf16 / peak[torch.bfloat16]:>11.1f}")  # fmt: skip
    difference = (bf16.double() - fp32.double()).abs()
    print(f"evaluation IWAE-{args.eval_k} on {len(test)} points: float32 {seconds:.2f} s ({flops / seconds / 1e9:.1f} GFLOP/s, "
          f"{100 * flops / seconds / 1e9 / peak[torch.float32]:.1f} % of peak), bf16 networks {seconds_bf16:.2f} s "
          f"({flops / seconds_bf16 / 1e9:.1f} GFLOP/s, {100 * flops / seconds_bf16 / 1e9 / peak[torch.bfloat16]:.1f} % of the bf16 peak); "
          f"|bf16 − fp32| per point: mean {float(difference.mean()):.4f}, largest {float(difference.max()):.4f} nats")  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
