"""Wall time of `lvm-train` as shipped, split into start-up, training, validation and the rest, beside a plain loop's training.

    flock /tmp/lvm_cpu.lock .venv/bin/python benchmarks/end_to_end.py [--configs fashion_mnist_vae fashion_mnist_iwae] [--epochs 1 3] [--repeats 3]

Each run is `python train.py fit --config configs/NAME.yaml --data.root ROOT --trainer.max_epochs E` in a
fresh process, progress bar, logger, checkpoints, validation and pictures as shipped, with one extra
callback (``PhaseTimes``, below) that stamps the wall clock at Lightning's hooks. Start-up runs from
the process's launch to the first training step (the sanity check apart); training is the sum of the
epochs' first-to-last-step times; validation the validation epochs; the rest (gap callback, checkpoints,
shutdown) is what remains of the total. Start-up is also given beyond the time a fresh process takes
to `import pytorch_lightning`, and validation as a share of the training time it follows. The plain
loop trains the same model on the same tensor for the same number of steps in this process
(benchmarks/images_epoch.py's loop), with its imports and data already loaded. ``--repo`` runs an
older checkout's train.py and configs under this script, for before/after figures in one sitting.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from images_epoch import plain_seconds, with_k  # noqa: E402

from lvm_lightning.data import FashionMNISTData  # noqa: E402


class PhaseTimes(pl.Callback):
    """Appends (hook, epoch, step, wall-clock seconds) at the hooks that bound each phase, and writes them to ``path`` at the end."""

    def __init__(self, path: str) -> None:
        self.path, self.stamps = path, []

    def _stamp(self, trainer: pl.Trainer, hook: str) -> None:
        self.stamps.append((hook, trainer.current_epoch, trainer.global_step, time.time()))

    def on_sanity_check_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stamp(trainer, "sanity_start")

    def on_sanity_check_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stamp(trainer, "sanity_end")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self._stamp(trainer, "train_start")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stamp(trainer, "train_batch_end")

    def on_validation_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self._stamp(trainer, "val_start")

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:  # after every callback's epoch-end pictures
        if not trainer.sanity_checking:
            self._stamp(trainer, "val_end")

    def on_fit_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stamp(trainer, "fit_end")
        Path(self.path).write_text(json.dumps(self.stamps))


def phases(stamps: list, launched: float, ended: float) -> dict[str, float]:
    """Seconds of start-up, sanity check, training, validation and the rest, from PhaseTimes' stamps."""
    times: dict[str, list[float]] = {}
    for hook, epoch, _, t in stamps:
        times.setdefault(hook, []).append(t)
    first_step = times["train_start"][0]
    sanity = times["sanity_end"][0] - times["sanity_start"][0] if "sanity_start" in times else 0.0
    # An epoch's training: its first step's start to its last step's end.
    epochs: dict[int, list[float]] = {}
    for hook, epoch, _, t in stamps:
        if hook in ("train_start", "train_batch_end"):
            epochs.setdefault(epoch, []).append(t)
    training = sum(max(ts) - min(ts) for ts in epochs.values())
    validation = sum(end - start for start, end in zip(times.get("val_start", []), times.get("val_end", [])))
    out = {"startup": first_step - launched - sanity, "sanity_check": sanity, "training": training, "validation": validation}
    out["rest"] = (ended - launched) - sum(out.values())
    out["total"] = ended - launched
    return out


def import_seconds(repeats: int = 3) -> float:
    """Fastest of ``repeats`` fresh processes' wall time to `import pytorch_lightning` (the floor start-up is measured against)."""
    best = math.inf
    for _ in range(repeats):
        launched = time.time()
        subprocess.run([sys.executable, "-c", "import pytorch_lightning"], check=True)
        best = min(best, time.time() - launched)
    return best


def run_cli(config: str, root: str, epochs: int, workdir: Path, extra: list[str], tty: bool = False, repo: Path = ROOT) -> dict[str, float]:
    """One `train.py` run of ``repo`` as shipped (plus PhaseTimes), its phases in seconds; ``tty`` runs it on a pseudo-terminal (util-linux `script`), where the bar is drawn."""
    stamps = workdir / "stamps.json"
    callback = json.dumps({"class_path": "end_to_end.PhaseTimes", "init_args": {"path": str(stamps)}})
    args = [sys.executable, str(repo / "train.py"), "fit", "--config", str(repo / "configs" / f"{config}.yaml")]
    args += (["--data.root", root] if config.startswith(("mnist", "fashion")) else []) + [
        "--trainer.max_epochs",
        str(epochs),
        f"--trainer.callbacks+={callback}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    if tty:
        args = ["script", "-qefc", shlex.join(args), "/dev/null"]
    launched = time.time()
    result = subprocess.run(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ended = time.time()
    if result.returncode:
        raise SystemExit(f"train.py failed: {result.stderr[-2000:]}")
    return phases(json.loads(stamps.read_text()), launched, ended)


def fastest(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's smallest value over repeated runs (their noise only ever adds time)."""
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["fashion_mnist_vae", "fashion_mnist_iwae"])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration; each phase's fastest is reported")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose train.py and configs run (e.g. an older commit's worktree)")
    parser.add_argument("--no_plain", action="store_true", help="skip the plain loop (phases only)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further train.py options, e.g. --trainer.enable_progress_bar false")
    parser.add_argument("--k", type=int, help="K for the image configs' estimator, in train.py and the plain loop alike (default: the config's)")
    parser.add_argument("--device", default="cpu", help="where the plain loop trains (pass --extra --trainer.accelerator gpu for train.py)")
    parser.add_argument("--tty", action="store_true", help="run train.py on a pseudo-terminal, so that the progress bar is drawn as in a terminal")
    parser.add_argument("--output", help="also write the rows to this JSON file")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}; repo {args.repo}", flush=True)
    floor = import_seconds()
    print(f"import pytorch_lightning: {floor:.2f} s (fastest of 3 fresh processes)", flush=True)
    rows = []
    for config in args.configs:
        image = config.startswith("fashion_mnist")
        model_section = yaml.safe_load((args.repo / "configs" / f"{config}.yaml").read_text())
        k = (args.k or model_section["model"]["estimator"]["init_args"]["num_samples"]) if image else None
        extra = [*args.extra, "--model.estimator.init_args.num_samples", str(k)] if image else args.extra
        for epochs in args.epochs:
            runs = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as workdir:
                    runs.append(run_cli(config, args.root, epochs, Path(workdir), extra, args.tty, args.repo))
            row = {"config": config, "k": k, "epochs": epochs, **fastest(runs), "plain_training": math.nan}
            row["startup_beyond_import"] = row["startup"] - floor
            row["validation_share"] = row["validation"] / row["training"]
            if image and not args.no_plain:
                data = FashionMNISTData(root=args.root, batch_size=model_section["data"]["init_args"]["batch_size"])
                data.setup()
                train = data.splits["train"].to(args.device)
                steps = math.ceil(len(train) / data.batch_size)
                row["plain_training"] = plain_seconds(with_k(model_section["model"], k), train, data.batch_size, torch.device(args.device), 0, steps * epochs)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"{'config':<20} {'K':>3} {'epochs':>6} {'total':>7} {'start-up':>8} {'-import':>7} {'sanity':>7} {'train':>7} {'val':>7} {'val/train':>9} {'rest':>7} {'plain':>7} {'train/plain':>11}"
    )
    for r in rows:
        print(
            f"{r['config']:<20} {r['k'] or '':>3} {r['epochs']:>6} {r['total']:>7.1f} {r['startup']:>8.2f} {r['startup_beyond_import']:>7.2f} {r['sanity_check']:>7.2f} "
            f"{r['training']:>7.1f} {r['validation']:>7.2f} {r['validation_share']:>9.1%} {r['rest']:>7.2f} {r['plain_training']:>7.1f} {r['training'] / r['plain_training']:>11.2f}"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
