"""Fault drill: SIGKILL a shipped config's training at random instants, resume it each time with the README's command,
and compare every tensor of the final checkpoint and every logged metric with an uninterrupted run.

    .venv/bin/python scripts/fault_drill.py [--config mixture_vae] [--kills 10] [--seed 0] [--extra --trainer.max_epochs 6]

Each launch runs ``train.py fit --config configs/CONFIG.yaml`` in a fresh process, the resumed ones with
``--ckpt_path runs/NAME/version_0/checkpoints/last.ckpt``. Kills cycle through a random instant early in start-up, the
instant the checkpoint folder changes (during or between checkpoint writes) and a moment after the run logs (training).
After the last kill the run is resumed to its end. Exit status 0 when every kill was survived and nothing differs.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
# Wall-clock figures differ between any two runs; everything else must not.
TIMING_TAGS = ("seconds", "per_point", "time")


def launch(workdir: Path, config: str, extra: list[str], resume: bool) -> subprocess.Popen:
    """train.py as the README runs it (resumed: from the run's last.ckpt), in ``workdir``."""
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), *extra]
    if resume:
        args += ["--ckpt_path", str(run_folder(workdir, config) / "checkpoints" / "last.ckpt")]
    return subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_folder(workdir: Path, config: str) -> Path:
    logger = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())["trainer"]["logger"]["init_args"]
    return workdir / logger["save_dir"] / logger["name"] / "version_0"


def checkpoint_entries(folder: Path) -> set[tuple[str, int]]:
    """(name, mtime) of every file in ``folder``: changes the moment a checkpoint write starts or ends."""
    try:
        return {(entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(folder)}
    except FileNotFoundError:
        return set()


def kill_at_random(process: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL after ``seconds``; False if the run ended first."""
    try:
        process.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def kill_on_change(process: subprocess.Popen, folder: Path, timeout: float, delay: float = 0.0) -> bool:
    """SIGKILL ``delay`` seconds after the files of ``folder`` change (a checkpoint write started or ended, a step logged); False if the run ended first."""
    before = checkpoint_entries(folder)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint_entries(folder) != before:
            return kill_at_random(process, delay)
        time.sleep(0.0005)
    return False if process.poll() is not None else kill_at_random(process, 0)


def tensors(tree: Any, where: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint's nested dicts and lists, by location."""
    if isinstance(tree, torch.Tensor):
        return {where: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {name: tensor for key, value in items for name, tensor in tensors(value, f"{where}/{key}").items()}


def metrics(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's scalars as it shows them (events after a resume's purge step hidden), by tag: (step, value)."""
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"] if not any(t in tag for t in TIMING_TAGS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mixture_vae", help="a config in configs/ (without .yaml)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill instants")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further train.py options for every launch")
    args = parser.parse_args()
    extra = ["--trainer.enable_progress_bar", "false", *args.extra]
    draw = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as straight_dir, tempfile.TemporaryDirectory() as drill_dir:
        straight, drill = Path(straight_dir), Path(drill_dir)
        started, startup = time.monotonic(), None
        process = launch(straight, args.config, extra, resume=False)
        while process.poll() is None:
            if startup is None and run_folder(straight, args.config).is_dir():  # made just before the first step
                startup = time.monotonic() - started
            time.sleep(0.01)
        if process.returncode:
            raise SystemExit(f"the uninterrupted run failed: {process.stderr.read()[-2000:]}")
        duration = time.monotonic() - started
        startup = startup or duration
        # Kills during start-up come early in it; kills during training follow the run's own progress (its logged steps), not the
        # clock: how long a launch takes to start depends on the machine's load, which no instant drawn in advance can know.
        print(f"uninterrupted run: {duration:.1f} s, {startup:.1f} s of it start-up", flush=True)
        folder = run_folder(drill, args.config)
        kills, failures, kinds = 0, [], {"start-up": 0, "training": 0, "mid-write": 0, "between checkpoint writes": 0}
        for attempt in range(args.kills):
            process = launch(drill, args.config, extra, resume=attempt > 0)
            kind = ("start-up", "checkpoint write", "training")[attempt % 3]
            if kind == "checkpoint write":
                killed = kill_on_change(process, folder / "checkpoints", timeout=10 * duration)
            elif kind == "training":
                killed = kill_on_change(process, folder, timeout=10 * duration, delay=draw.uniform(0, 0.05))
            else:
                killed = kill_at_random(process, draw.uniform(0.2, 0.25 * startup))
            if not killed:
                if process.returncode:
                    failures.append(f"launch {attempt + 1} failed: {process.stderr.read().strip().splitlines()[-1:]}")
                print(f"launch {attempt + 1}: the run ended before its kill", flush=True)
                break
            if kind == "checkpoint write":  # a partial file left behind: the kill cut a write short
                kind = "mid-write" if list((folder / "checkpoints").glob(".*.partial")) else "between checkpoint writes"
            kills += 1
            kinds[kind] += 1
            print(f"launch {attempt + 1}: killed ({kind})", flush=True)
        process = launch(drill, args.config, extra, resume=True)
        if process.wait():
            failures.append(f"the final resume failed: {process.stderr.read()[-2000:]}")
        final = {}
        for name, workdir in (("straight", straight), ("drill", drill)):
            checkpoint = run_folder(workdir, args.config) / "checkpoints" / "last.ckpt"
            final[name] = torch.load(checkpoint, weights_only=True) if checkpoint.is_file() else {}
        expected, got = tensors(final["straight"]), tensors(final["drill"])
        tensor_differences = [name for name in expected if name not in got or not torch.equal(expected[name], got[name])]
        expected_metrics, got_metrics = metrics(run_folder(straight, args.config)), metrics(folder)
        metric_differences = [tag for tag in expected_metrics if expected_metrics[tag] != got_metrics.get(tag)]
    print(f"kills: {kills} ({', '.join(f'{n} {k}' for k, n in kinds.items())}); failed launches: {len(failures)}")
    print(
        f"final checkpoint: {len(tensor_differences)} of {len(expected)} tensors differ; metrics: {len(metric_differences)} of {len(expected_metrics)} tags differ"
    )
    for line in [*failures, *tensor_differences[:10], *metric_differences[:10]]:
        print(f"  {line}")
    sys.exit(1 if failures or tensor_differences or metric_differences or not expected else 0)


if __name__ == "__main__":
    main()
