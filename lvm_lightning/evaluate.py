"""Evaluate a checkpoint: every applicable estimate of log p(x), and the amortization gap, on its test split or on a .npy file.

lvm-evaluate CKPT [--data_path FILE.npy] [--num_samples K] [--estimators NAME ...] [--ais.num_steps T] [--bdmc N]
             [--gap_points N] [--gap.max_steps S] [--gap_log_px ais] [--devices N] [--trust MODULE] [--output FILE.json]

``--devices N`` shares the estimates' batches among N processes (one per GPU, or CPU processes on gloo), started by
Lightning Fabric's ddp_spawn; each batch is seeded by its index, so every per-point value is the one a single process
computes. The gap decomposition and BDMC then run in the calling process, on ``--device``.
"""

import json
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from jsonargparse import ArgumentParser
from lightning_fabric import Fabric
from torch import Tensor

from lvm_lightning.callbacks.convergence import convergence_note
from lvm_lightning.cross_check import cross_check
from lvm_lightning.data import true_log_prob
from lvm_lightning.data_checks import check_values
from lvm_lightning.distributed import destroy_process_group_at_exit, quiet_process_group_setup
from lvm_lightning.errors import UsageError, one_line_errors
from lvm_lightning.evaluation import PerPoint, estimate_all
from lvm_lightning.files import write_atomically
from lvm_lightning.inference import AIS, LocalOptimizer, format_gap_columns, format_gaps, gap_summary, in_family, simulate
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator, evaluation_estimators
from lvm_lightning.rng import batch_seed, seeded_fork
from lvm_lightning.runs import file_rows, load_run, run_data
from lvm_lightning.timing import timed

Batches = list[dict[str, PerPoint]]  # estimate_all's results, one entry per batch of the data in order

if multiprocessing.current_process().name != "MainProcess":
    # A worker of sharded_estimates imports this module as it unpickles its function, before Fabric joins the process group
    # (a spawned process is named before it imports): Fabric's lines on that, once per rank, would stand among the caller's.
    quiet_process_group_setup()


def summarize(values: Tensor) -> dict[str, Any]:
    """Mean and standard error (std / √N) over points."""
    n = values.numel()
    stderr = values.std().item() / math.sqrt(n) if n > 1 else None  # JSON null: undefined for one point
    return {"mean": values.mean().item(), "stderr": stderr, "num_points": n}


@torch.no_grad()
def estimate_batches(
    model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
) -> dict[int, dict[str, PerPoint]]:
    """``estimate_all`` on batches rank, rank + W, … of ``x``'s batches of ``batch_size`` rows, by batch index, each in a fork
    of torch's streams seeded by (``seed``, that index): a batch's values are the same whichever process computes it."""
    out = {}
    for index, batch in enumerate(x.split(batch_size)):
        if index % world_size == rank:
            with seeded_fork(x.device, batch_seed(seed, index)):
                out[index] = estimate_all(model, batch, estimators)
    return out


def summarize_estimates(batches: Batches, estimators: list[Estimator]) -> dict[str, dict[str, Any]]:
    """{estimator name: mean log p̂(x), stderr over points, K, N, the mean of each of its diagnostics, and its settings} over all batches."""
    results = {}
    for name, first in batches[0].items():
        entry = summarize(torch.cat([batch[name].log_px for batch in batches]))
        entry["num_samples"] = first.num_samples
        diagnostics = {key: torch.cat([batch[name].diagnostics[key] for batch in batches]) for key in first.diagnostics}
        entry.update({key: values.mean().item() for key, values in diagnostics.items()})
        if "pareto_k" in diagnostics:
            entry["pareto_k_max"] = diagnostics["pareto_k"].max().item()  # the worst point, beside the mean
        results[name] = entry
    for estimator in estimators:
        if estimator.settings():
            results[estimator.name]["settings"] = estimator.settings()
    return results


def _estimate_shard(fabric: Fabric, model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int, output: Path) -> None:
    """One rank's part of ``sharded_estimates``: its batches, gathered with the others' on every rank; rank 0 pickles to ``output``
    every batch in order, the seconds from the ranks' common start to the gather, and its peak memory."""
    destroy_process_group_at_exit()
    torch.set_flush_denormal(True)  # tiny importance weights: see LVMModule.setup (a spawned process starts without it)
    model, x = model.to(fabric.device).eval(), x.to(fabric.device)
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
    fabric.barrier()  # every rank set up: the seconds are the estimates' alone

    def estimate_and_gather() -> list[dict[int, dict[str, PerPoint]]]:
        mine = estimate_batches(model, x, estimators, batch_size, seed, fabric.global_rank, fabric.world_size)
        on_cpu = {index: {name: _to_cpu(result) for name, result in batch.items()} for index, batch in mine.items()}
        gathered: list[Any] = [None] * fabric.world_size
        torch.distributed.all_gather_object(gathered, on_cpu)
        return gathered

    gathered, seconds = timed(estimate_and_gather, x.device)
    merged = {index: batch for part in gathered for index, batch in part.items()}
    memory = peak_memory(x.device)
    memory["peak_memory_of"] += " of rank 0"
    if fabric.global_rank == 0:
        # A file, not Fabric's return queue: that pipe is read only once the processes have ended, so a result larger than
        # its buffer (64 KiB) would never be written.
        output.write_bytes(pickle.dumps(([merged[index] for index in sorted(merged)], seconds, memory)))


def _to_cpu(result: PerPoint) -> PerPoint:
    return PerPoint(result.log_px.cpu(), {key: value.cpu() for key, value in result.diagnostics.items()}, result.num_samples)


def sharded_estimates(
    model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int, devices: int, accelerator: str
) -> tuple[Batches, float, dict[str, Any]]:
    """``estimate_batches`` over all of ``x`` on ``devices`` processes (Lightning Fabric, ddp_spawn: gloo on the CPU, NCCL on GPUs),
    batch i on rank i mod N: (every batch in order, the seconds the estimates took, rank 0's peak memory)."""
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp_spawn")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "estimates.pickle"
        fabric.launch(_estimate_shard, model.cpu(), x.cpu(), estimators, batch_size, seed, output)
        return pickle.loads(output.read_bytes())  # written by our own process, a moment ago


def bdmc_sandwich(model: LatentVariableModel, num_points: int, ais: AIS) -> dict[str, Any]:
    """The BDMC sandwich on ``num_points`` points simulated from the model: AIS's lower bound, the reverse chains' upper bound
    (started at the simulating z, an exact posterior sample), and its width, mean over points with standard errors."""
    x, z = simulate(model, num_points)
    (lower, upper), seconds = timed(lambda: (ais.estimate(model, x).log_px, ais.upper_bound(model, x, z).log_px), x.device)
    return {
        "lower": summarize(lower),
        "upper": summarize(upper),
        "width": summarize(upper - lower),
        "seconds_per_point": seconds / num_points,
        "settings": ais.settings(),
    }


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak memory so far: bytes allocated on a GPU since the last reset, or the process's peak resident size on the CPU."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_of": "CUDA tensors"}
    import resource  # Unix: ru_maxrss in kilobytes on Linux

    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_of": "the process (resident)"}


def check_device(device: str, devices: int = 1) -> None:
    """Raises UsageError unless torch can compute on ``device`` here, with ``devices`` processes (GPUs cuda:0..N−1, or CPU processes)."""
    try:
        where = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}: pass --device cpu or cuda (cuda:N for the N-th GPU)") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} but torch sees no CUDA GPU here: pass --device cpu")
    if devices < 1:
        raise UsageError(f"--devices must be >= 1 (the number of processes that share the estimates), got {devices}")
    if devices == 1:
        return
    if where.type not in ("cpu", "cuda") or where.index not in (None, 0):
        raise UsageError(f"--devices {devices} runs on GPUs cuda:0..{devices - 1} or on CPU processes: pass --device cuda or --device cpu")
    available = torch.cuda.device_count() if where.type == "cuda" else os.cpu_count() or 1
    if devices > available:
        what = "GPUs" if where.type == "cuda" else "CPU cores"
        raise UsageError(f"--devices {devices} but this machine has {available} {what}: pass --devices {available} or fewer")


def evaluate_checkpoint(
    checkpoint_path: str,
    data_path: Optional[str] = None,
    data_root: Optional[str] = None,
    num_samples: int = 1000,
    batch_size: int = 1024,
    chunk_size: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
    gap_points: int = 100,
    gap: LocalOptimizer = LocalOptimizer(),
    trust: Sequence[str] = (),
    estimators: Optional[Sequence[str]] = None,
    ais: Optional[AIS] = None,
    bdmc: int = 0,
    gap_log_px: Literal["importance_sampling", "ais"] = "importance_sampling",
    gap_family: Optional[Literal["diagonal", "full", "local_flow", "flow"]] = None,
    devices: int = 1,
) -> dict[str, Any]:
    """The report written as JSON: {'checkpoint', 'data', 'estimates': {name: {...}}, 'true_log_px'?, 'gaps'?}.

    'gaps' (when gap_points > 0): the amortization/approximation decomposition on the first
    gap_points points with q* fit by ``gap``, log p(x) importance-sampled from q* with num_samples
    where it has no exact form (inference/gaps.py). ``trust``: modules whose classes the checkpoint may name. ``data_root``: the folder
    of the run's image data set on this machine (the checkpoint's own folders are never read).
    ``estimators``: which to run (exact, prior_sampling, importance_sampling, elbo, ais; default all that apply but ais),
    with ``ais`` (default ``AIS()``) for AIS. 'cost' gives the seconds the estimates took, per point, and the peak memory.
    'convergence_note': present when the run's validation log p(x) was still improving when the checkpoint was written.
    'bdmc' (when ``bdmc`` > 0): ``bdmc_sandwich`` on that many simulated points. ``gap_log_px`` 'ais': the gaps' log p(x) by
    ``ais`` started from q* where it has no exact form. ``gap_family``: the same decomposition again, on the same decoder, with
    q* in that posterior family (from the encoder's q_φ re-expressed in it) as 'gaps_in_family', e.g. 'full' or 'local_flow' beside a
    diagonal encoder ('flow', whose weights are amortized, needs a model trained with it). ``devices`` > 1: the estimates' batches
    shared among that many processes (``sharded_estimates``), the same values per point; gaps and BDMC stay in this process.
    Every estimate's batch i draws from torch's stream seeded by (``seed``, i); the gaps and BDMC from one seeded by ``seed``.
    """
    if min(num_samples, batch_size, 1 if chunk_size is None else chunk_size) < 1:
        raise UsageError(f"--num_samples, --batch_size and --chunk_size must be >= 1, got {num_samples}, {batch_size} and {chunk_size}")
    if gap_points < 0 or bdmc < 0:
        raise UsageError(f"--gap_points and --bdmc must be >= 0 (0: none), got {gap_points} and {bdmc}")
    ais = ais or AIS()
    check_device(device, devices)
    module, checkpoint = load_run(checkpoint_path, trust, map_location=device)
    module.eval()
    model = module.lvm
    report: dict[str, Any] = {"checkpoint": str(checkpoint_path)}
    if gap_family is not None and gap_points == 0:
        raise UsageError("--gap_family compares q* families in the gap decomposition: give --gap_points > 0")
    view = in_family(model, gap_family) if gap_family is not None else None  # checked before the minutes of estimates
    note = convergence_note(checkpoint)
    if note is not None:  # every figure below is of a model still moving: say so first
        report["convergence_note"] = note
        print(f"note: {note}", file=sys.stderr, flush=True)
    if bdmc > 0:
        ais.check(model)
    reason = gap.unsupported(model) if gap_points > 0 else None
    if reason is not None:
        if model.enumerable or model.continuous:
            raise UsageError(reason)  # a --gap setting that does not fit this model: the user's to change
        # The gap is on by default: a model whose posterior per-point inference cannot fit reports its estimates, and why no gap.
        report["gaps_unavailable"] = reason
        print(f"note: no amortization gap: {reason}", file=sys.stderr, flush=True)
        gap_points = 0
    datamodule = None
    if data_path is not None:
        x, report["data"] = file_rows(checkpoint, checkpoint_path, data_path, trust)
    else:
        datamodule = run_data(checkpoint, checkpoint_path, trust, data_root)
        x = datamodule.splits["test"]
        report["data"] = {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}", "split": "test"}
    x = x.to(device)
    check_values(module.lvm, x, "the data", "evaluate on data like the model's training data (its likelihood comes from the checkpoint)")
    chosen = evaluation_estimators(model, num_samples, chunk_size, estimators, (ais,))
    if devices > 1:
        batches, seconds, memory = sharded_estimates(model, x, chosen, batch_size, seed, devices, torch.device(device).type)
        model.to(device)  # the workers had a CPU copy each; gaps and BDMC run here
    else:
        if x.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(x.device)
        by_index, seconds = timed(lambda: estimate_batches(model, x, chosen, batch_size, seed), x.device)
        batches, memory = [by_index[index] for index in sorted(by_index)], peak_memory(x.device)
    report["estimates"] = summarize_estimates(batches, chosen)
    verdict = cross_check(
        chosen,
        {name: torch.cat([batch[name].log_px for batch in batches]) for name in batches[0]},
        {name: {key: torch.cat([batch[name].diagnostics[key] for batch in batches]) for key in first.diagnostics} for name, first in batches[0].items()},
    )
    report["tightest"] = {"estimator": verdict.tightest, "mean": verdict.mean, "stderr": verdict.stderr}
    report["warnings"] = verdict.warnings
    report["cost"] = {"seconds": seconds, "seconds_per_point": seconds / len(x), "devices": devices, **memory}
    with seeded_fork(x.device, seed):  # the caller's stream untouched
        if gap_points > 0:
            log_px_ais = ais if gap_log_px == "ais" else None
            report["gaps"] = gap_summary(model, x[:gap_points], gap, log_px_samples=num_samples, chunk_size=chunk_size, ais=log_px_ais)
            if view is not None:
                report["gaps_in_family"] = {
                    "family": gap_family,
                    **gap_summary(view, x[:gap_points], gap, log_px_samples=num_samples, chunk_size=chunk_size, ais=log_px_ais),
                }
        if bdmc > 0:
            report["bdmc"] = bdmc_sandwich(model, bdmc, ais)
    if datamodule is not None and datamodule.true_density is not None:
        report["true_log_px"] = summarize(torch.cat([true_log_prob(datamodule.true_density, b) for b in x.split(batch_size)]))
    return report


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one row per estimator, log p(x) in nats per datapoint."""
    rows = [("estimator", "log p(x)", "stderr", "K", "points")]
    entries = dict(report["estimates"])
    if "true_log_px" in report:
        entries["true density"] = {**report["true_log_px"], "num_samples": "-"}
    for name, e in entries.items():
        stderr = "-" if e["stderr"] is None else f"{e['stderr']:.4f}"
        rows.append((name, f"{e['mean']:.4f}", stderr, str(e["num_samples"]), str(e["num_points"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def format_bdmc(sandwich: dict[str, Any]) -> str:
    """The sandwich as one line (nats per point)."""
    lower, upper, width = sandwich["lower"], sandwich["upper"], sandwich["width"]
    stderr = "" if width["stderr"] is None else f" ± {width['stderr']:.4f}"
    return (
        f"BDMC on {width['num_points']} simulated points: stochastic bounds AIS {lower['mean']:.4f} <= log p(x) <= reverse AIS {upper['mean']:.4f}, "
        f"width {width['mean']:.4f}{stderr} ({sandwich['seconds_per_point']:.2f} s per point; a width below 0 is Monte Carlo error)"
    )


def check_output(output: str) -> None:
    """Raises UsageError unless ``output`` can be written: checked before the evaluation's minutes, not after."""
    path = Path(output).resolve()
    if path.is_dir():
        raise UsageError(f"--output {output} is a folder: pass a file name, e.g. {Path(output) / 'report.json'}")
    if not path.parent.is_dir():
        raise UsageError(f"--output {output}: its folder does not exist; create it first")
    probe = path.with_name(f".{path.name}.partial")  # what write_atomically will create; os.access says yes to root even in /proc
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--output {output} cannot be written ({error.strerror}): pass a path in a folder you can write") from None


def parser() -> ArgumentParser:
    """The command line: the arguments of ``evaluate_checkpoint``, q*'s settings as ``--gap.NAME``, and ``--output``."""
    parser = ArgumentParser(prog="lvm-evaluate", description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_function_arguments(evaluate_checkpoint, as_positional=True, skip={"device", "trust", "estimators", "ais"})
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--trust", type=str, nargs="+", default=[], help="modules (or classes) of your own that the checkpoint may name")
    parser.add_argument("--estimators", type=str, nargs="+", help="which to run, e.g. importance_sampling elbo ais (or a,b); default: all that apply but ais")
    parser.add_class_arguments(AIS, "ais")  # --ais.num_steps, --ais.num_chains, ...: the AIS of --estimators ais, --bdmc and --gap_log_px ais
    parser.add_argument("--output", type=Optional[str], help="also write the report to this JSON file")
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    """Command-line entry point; a usage error becomes one line on stderr and exit code 2."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # classes of the user's own files in the working folder, for --trust
    with one_line_errors("lvm-evaluate"):
        cli = parser()
        args = cli.instantiate(cli.parse_args(argv)).as_dict()
        output = args.pop("output")
        if output:
            check_output(output)
        if args["estimators"] is not None:
            args["estimators"] = [name for item in args["estimators"] for name in item.split(",") if name]
        torch.set_flush_denormal(True)  # tiny importance weights: see LVMModule.setup
        report = evaluate_checkpoint(**args)
    print(format_table(report))
    for line in report["warnings"]:
        print(line, file=sys.stderr)
    if "bdmc" in report:
        print(format_bdmc(report["bdmc"]))
    if "gaps" in report:
        print(format_gaps(report["gaps"]))
        if "warning" in report["gaps"]:
            print(f"warning: {report['gaps']['warning']}", file=sys.stderr)
    if "gaps_in_family" in report:
        print(format_gap_columns({"q* in the encoder's family": report["gaps"], f"q* {report['gaps_in_family']['family']}": report["gaps_in_family"]}))
    if output:
        write_atomically(output, json.dumps(report, indent=2).encode())
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
