"""Peak memory and seconds of one IWAE training step at large K, with and without ``recompute`` (the MNIST-sized VAE of the image configs).

    flock /tmp/lvm_bench.lock .venv/bin/python benchmarks/large_k_memory.py [--ks 1000 5000] [--batch 100] [--chunk-size 65536]

Each setting runs in a fresh process (peak resident memory only grows), on random binary images:
the model's weights and the data are the same in every run, so the difference is the autograd graph.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_step(k: int, batch: int, chunk_size: int, recompute: bool) -> dict:
    """One forward and backward pass of ImportanceSampling(k) on the 784-200-200-50 VAE: seconds and peak resident bytes."""
    import torch

    sys.path.insert(0, str(ROOT))
    from lvm_lightning.models import VAE
    from lvm_lightning.objectives import ImportanceSampling

    torch.manual_seed(0)
    model = VAE(784, 50, (200, 200), (200, 200), "tanh", "bernoulli")
    x = torch.bernoulli(torch.full((batch, 784), 0.3))
    start = time.perf_counter()
    (-ImportanceSampling(k, chunk_size, recompute=recompute).objective(model, x).surrogate.mean()).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"k": k, "batch": batch, "chunk_size": chunk_size, "recompute": recompute, "seconds": seconds, "peak_rss_gb": peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=2**16, help="sample × point pairs per chunk")
    parser.add_argument("--one", nargs=2, metavar=("K", "RECOMPUTE"), help=argparse.SUPPRESS)  # a child process's own run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_step(int(args.one[0]), args.batch, args.chunk_size, args.one[1] == "1")))
        return
    print(f"{'K':>6} {'batch':>6} {'recompute':>9} {'seconds':>8} {'peak RSS, GB':>12}")
    for k in args.ks:
        for recompute in (False, True):
            child = [sys.executable, __file__, "--one", str(k), str(int(recompute)), "--batch", str(args.batch), "--chunk-size", str(args.chunk_size)]
            row = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            print(f"{row['k']:>6} {row['batch']:>6} {str(row['recompute']):>9} {row['seconds']:>8.2f} {row['peak_rss_gb']:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
