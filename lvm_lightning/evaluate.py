"""Evaluate a checkpoint: every applicable estimate of log p(x), and the amortization gap, on its test split or on a .npy file.

lvm-evaluate CKPT [--data_path FILE.npy] [--num_samples K] [--estimators NAME|CLASS_PATH ...] [--ais.num_steps T] [--bdmc N]
             [--gap_points N] [--gap.max_steps S] [--gap_log_px ais] [--devices N] [--trust MODULE] [--output FILE.json]

``--devices N`` shares the estimates' batches among N processes (one per GPU, or CPU processes on gloo), started by
Lightning Fabric's ddp_spawn; each batch is seeded by its index, so every per-point value is the one a single process
computes. The gap decomposition and BDMC then run in the calling process, on ``--device``.
"""

import json
import os
import sys
from typing import Any, Literal, Optional, Sequence

import torch
from jsonargparse import ArgumentParser
from torch import Tensor

from lvm_lightning.callbacks.convergence import convergence_note
from lvm_lightning.cross_check import cross_check
from lvm_lightning.data import true_log_prob
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.data_checks import check_values
from lvm_lightning.errors import UsageError, one_line_errors
from lvm_lightning.estimates import Evaluators, choose
from lvm_lightning.files import check_writable, write_atomically
from lvm_lightning.inference import AIS, LocalOptimizer, family_name, format_gap_columns, format_gaps, gap_summary, in_family, simulate
from lvm_lightning.models.families import PosteriorChoice
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Estimator
from lvm_lightning.reports import summarize, table
from lvm_lightning.rng import seeded_fork
from lvm_lightning.runs import file_rows, load_run, run_data
from lvm_lightning.sharded import Batches, local_estimates, sharded_estimates
from lvm_lightning.timing import timed


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


def check_settings(num_samples: int, batch_size: int, chunk_size: Optional[int], gap_points: int, bdmc: int, gap_family: Optional[PosteriorChoice]) -> None:
    """Raises UsageError, naming the option, for a setting out of its range: before anything is loaded."""
    if min(num_samples, batch_size, 1 if chunk_size is None else chunk_size) < 1:
        raise UsageError(f"--num_samples, --batch_size and --chunk_size must be >= 1, got {num_samples}, {batch_size} and {chunk_size}")
    if gap_points < 0 or bdmc < 0:
        raise UsageError(f"--gap_points and --bdmc must be >= 0 (0: none), got {gap_points} and {bdmc}")
    if gap_family is not None and gap_points == 0:
        raise UsageError("--gap_family compares q* families in the gap decomposition: give --gap_points > 0")


def say_convergence(checkpoint: dict[str, Any], report: dict[str, Any]) -> None:
    """Where the run's validation log p(x) was still improving when the checkpoint was written: a note first on stderr, and in the report."""
    note = convergence_note(checkpoint)
    if note is not None:  # every figure below is of a model still moving: say so first
        report["convergence_note"] = note
        print(f"note: {note}", file=sys.stderr, flush=True)


def gap_unavailable(model: LatentVariableModel, gap: LocalOptimizer) -> Optional[str]:
    """Why per-point inference cannot fit this model's posterior, so that the gap (on by default) is skipped with a note; None where it
    can. A --gap setting that does not fit a model it could fit is the user's to change: UsageError."""
    reason = gap.unsupported(model)
    if reason is not None and (model.enumerable or model.continuous):
        raise UsageError(reason)
    return reason


def estimators_to_run(
    module: LVMModule, names: Optional[Sequence[str]], num_samples: int, chunk_size: Optional[int], ais: AIS, trusted: Sequence[str]
) -> list[Estimator]:
    """The estimators to run: those ``names`` asks for (``estimates.choose``), or by default the built-ins at K = ``num_samples`` with
    the run's own validation estimators and training estimator (those whose names the built-ins do not take)."""
    own = (*module.evaluation.extra, module.estimator)
    builtins = Evaluators(num_samples, chunk_size)
    if names is None:
        return builtins.also(module.lvm, own).for_model(module.lvm)
    return choose(module.lvm, names, builtins, (ais, *own), trusted)


def evaluation_data(
    checkpoint: dict[str, Any], checkpoint_path: str, data_path: Optional[str], data_root: Optional[str], trusted: Sequence[str]
) -> tuple[Tensor, dict[str, Any], Optional[SplitData]]:
    """(the rows to evaluate, what they are for the report, the run's data module where they are its test split)."""
    if data_path is not None:
        x, described = file_rows(checkpoint, checkpoint_path, data_path, trusted)
        return x, described, None
    datamodule = run_data(checkpoint, checkpoint_path, trusted, data_root)
    return datamodule.splits["test"], {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}", "split": "test"}, datamodule


def estimates_report(batches: Batches, estimators: list[Estimator]) -> dict[str, Any]:
    """The estimates summarized, the tightest of them and the cross-checks' warnings (cross_check.py)."""
    names = list(batches[0])
    log_px = {name: torch.cat([batch[name].log_px for batch in batches]) for name in names}
    diagnostics = {name: {key: torch.cat([batch[name].diagnostics[key] for batch in batches]) for key in batches[0][name].diagnostics} for name in names}
    verdict = cross_check(estimators, log_px, diagnostics)
    return {
        "estimates": summarize_estimates(batches, estimators),
        "tightest": {"estimator": verdict.tightest, "mean": verdict.mean, "stderr": verdict.stderr},
        "warnings": verdict.warnings,
    }


def gaps_report(
    model: LatentVariableModel,
    view: Optional[LatentVariableModel],
    x: Tensor,
    gap: LocalOptimizer,
    num_samples: int,
    chunk_size: Optional[int],
    ais: Optional[AIS],
    family: Optional[str],
) -> dict[str, Any]:
    """'gaps': ``gap_summary`` on the points ``x`` (log p(x) by ``ais`` from q* where given), and 'gaps_in_family' on ``view``, the model
    with q* in ``family``, where given."""
    report = {"gaps": gap_summary(model, x, gap, log_px_samples=num_samples, chunk_size=chunk_size, ais=ais)}
    if view is not None:
        report["gaps_in_family"] = {"family": family, **gap_summary(view, x, gap, log_px_samples=num_samples, chunk_size=chunk_size, ais=ais)}
    return report


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
    gap_family: Optional[PosteriorChoice] = None,
    devices: int = 1,
    networks_bf16: bool = False,
) -> dict[str, Any]:
    """What lvm-evaluate reports on a checkpoint.

    As JSON: {'checkpoint', 'data', 'estimates': {name: {...}}, 'tightest', 'warnings', 'cost', 'true_log_px'?, 'gaps'?,
    'gaps_in_family'?, 'bdmc'?, 'convergence_note'?}. Every estimate's batch i draws from torch's stream seeded by (``seed``, i);
    the gaps and BDMC from one seeded by ``seed``.

    Args:
        checkpoint_path: the checkpoint lvm-train wrote (e.g. runs/default/version_0/checkpoints/last.ckpt).
        data_path: a .npy file of rows to evaluate instead of the run's test split (the run's own file: its test split).
        data_root: the folder of the run's image data set on this machine (the checkpoint's own folders are never read).
        num_samples: K, the samples per point of the sampled estimates, and of the gaps' importance-sampled log p(x).
        batch_size: points per batch of the estimates.
        chunk_size: at most this many (sample × point) pairs drawn at once; default: the estimators' own.
        seed: the seed of every estimate's draws (batch i: seed and i), of the gaps and of BDMC.
        device: cpu, cuda or cuda:N.
        gap_points: the amortization gap on the first N points, with q* fit per point by --gap.* (0: none).
        gap: q*, the per-point optimum of the gap decomposition.
        trust: modules (or classes) of your own that the checkpoint and --estimators may name.
        estimators: built-in names (exact prior_sampling importance_sampling elbo ais, or a,b), the run's own by name, or an
            Estimator's class path; default: the built-ins that apply, the run's validation estimators and its training estimator.
        ais: AIS's settings, for --estimators ais, --bdmc and --gap_log_px ais.
        bdmc: the BDMC sandwich on N points simulated from the model (0: none).
        gap_log_px: how the gaps' log p(x) is computed where it has no exact form: importance sampling or AIS, from q*.
        gap_family: the gap decomposition again with q* in this posterior family (e.g. full or local_flow beside a diagonal encoder).
        devices: share the estimates' batches among N processes (the same values per point); gaps and BDMC stay in this process.
        networks_bf16: the estimates with the networks' matrix products in bfloat16, their densities and log-weights in float32
            (faster on CPUs with AMX and on GPUs; docs/results.md gives its error); the gaps and BDMC stay float32.
    """
    check_settings(num_samples, batch_size, chunk_size, gap_points, bdmc, gap_family)
    ais = ais or AIS()
    check_device(device, devices)
    module, checkpoint = load_run(checkpoint_path, trust, map_location=device)
    model = module.eval().lvm
    report: dict[str, Any] = {"checkpoint": str(checkpoint_path)}
    view = in_family(model, gap_family) if gap_family is not None else None  # checked before the minutes of estimates
    if bdmc > 0:
        ais.check(model)
    unavailable = gap_unavailable(model, gap) if gap_points > 0 else None
    chosen = estimators_to_run(module, estimators, num_samples, chunk_size, ais, trust)
    x, report["data"], datamodule = evaluation_data(checkpoint, checkpoint_path, data_path, data_root, trust)
    x = x.to(device)
    check_values(module.lvm, x, "the data", "evaluate on data like the model's training data (its likelihood comes from the checkpoint)")
    say_convergence(checkpoint, report)  # every input checked: the notes, then the figures
    if unavailable is not None:
        report["gaps_unavailable"], gap_points = unavailable, 0
        print(f"note: no amortization gap: {unavailable}", file=sys.stderr, flush=True)
    with model.bf16_networks(networks_bf16):
        if devices > 1:
            batches, seconds, memory = sharded_estimates(model, x, chosen, batch_size, seed, devices, torch.device(device).type)
            model.to(device)  # the workers had a CPU copy each; gaps and BDMC run here
        else:
            batches, seconds, memory = local_estimates(model, x, chosen, batch_size, seed)
    report.update(estimates_report(batches, chosen))
    report["cost"] = {"seconds": seconds, "seconds_per_point": seconds / len(x), "devices": devices, **memory}
    with seeded_fork(x.device, seed):  # the caller's stream untouched
        if gap_points > 0:
            family = None if view is None else family_name(view, gap_family)
            report.update(gaps_report(model, view, x[:gap_points], gap, num_samples, chunk_size, ais if gap_log_px == "ais" else None, family))
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
    return table(rows)


def format_bdmc(sandwich: dict[str, Any]) -> str:
    """The sandwich as one line (nats per point)."""
    lower, upper, width = sandwich["lower"], sandwich["upper"], sandwich["width"]
    stderr = "" if width["stderr"] is None else f" ± {width['stderr']:.4f}"
    return (
        f"BDMC on {width['num_points']} simulated points: stochastic bounds AIS {lower['mean']:.4f} <= log p(x) <= reverse AIS {upper['mean']:.4f}, "
        f"width {width['mean']:.4f}{stderr} ({sandwich['seconds_per_point']:.2f} s per point; a width below 0 is Monte Carlo error)"
    )


def print_report(report: dict[str, Any]) -> None:
    """The report as text: the estimates' table on stdout and the cross-checks' warnings on stderr, then BDMC and the gaps."""
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


def parser() -> ArgumentParser:
    """The command line: the arguments of ``evaluate_checkpoint``, q*'s settings as ``--gap.NAME``, AIS's as ``--ais.NAME``, and ``--output``."""
    parser = ArgumentParser(prog="lvm-evaluate", description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_function_arguments(evaluate_checkpoint, as_positional=True, skip={"device", "trust", "estimators", "ais"})
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--trust", type=str, nargs="+", default=[], help="modules (or classes) of your own that the checkpoint and --estimators may name")
    parser.add_argument(
        "--estimators",
        type=str,
        nargs="+",
        help="which to run: built-in names (exact prior_sampling importance_sampling elbo ais, or a,b), the run's own by name, or an "
        "Estimator's class path, built at --num_samples; default: the built-ins that apply, the run's validation estimators and its training estimator",
    )
    parser.add_class_arguments(AIS, "ais", help="AIS's settings: for --estimators ais, --bdmc and --gap_log_px ais")
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
            check_writable(output, "--output")
        if args["estimators"] is not None:
            args["estimators"] = [name for item in args["estimators"] for name in item.split(",") if name]
        torch.set_flush_denormal(True)  # tiny importance weights: see LVMModule.setup
        report = evaluate_checkpoint(**args)
    print_report(report)
    if output:
        write_atomically(output, json.dumps(report, indent=2).encode())
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
