"""Evaluate a checkpoint: every applicable estimate of log p(x) on its test split or on a .npy file.

    python -m lvm_lightning.evaluate CKPT [--data-path FILE.npy] [--num-samples K] [--gap-points N] [--output FILE.json]
"""
import argparse
import importlib
import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any, Optional, get_args

import torch
from torch import Tensor

from lvm_lightning.data import load_array
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import LocalOptimizer, format_gaps, gap_summary
from lvm_lightning.inference.local import Bound, Gradient, Init, Stopping
from lvm_lightning.models.families import check_support
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import evaluation_estimators


def summarize(values: Tensor) -> dict[str, Any]:
    """Mean and standard error (std / √N) over points."""
    n = values.numel()
    stderr = values.std().item() / math.sqrt(n) if n > 1 else None  # JSON null: undefined for one point
    return {"mean": values.mean().item(), "stderr": stderr, "num_points": n}


@torch.no_grad()
def estimate_log_px(
    model: LatentVariableModel, x: Tensor, num_samples: int, batch_size: int = 1024, chunk_size: Optional[int] = None
) -> dict[str, dict[str, Any]]:
    """{estimator name: mean log p̂(x), stderr, K, N, mean ESS fraction} over the rows of ``x``, in batches."""
    results = {}
    for estimator in evaluation_estimators(model, num_samples, chunk_size):
        per_point, ess = [], []
        for batch in x.split(batch_size):
            estimate = estimator.estimate(model, batch)
            per_point.append(estimate.log_px)
            ess.append(estimate.effective_sample_size() / estimate.log_weights.shape[0])
        entry: dict[str, Any] = summarize(torch.cat(per_point))
        entry["num_samples"] = estimate.log_weights.shape[0]
        if estimator.name in ("prior_sampling", "importance_sampling"):
            entry["ess_fraction"] = torch.cat(ess).mean().item()
        results[estimator.name] = entry
    return results


def check_device(device: str) -> None:
    """Raises UsageError unless torch can compute on ``device`` here."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}: pass --device cpu or cuda (cuda:N for the N-th GPU)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} but torch sees no CUDA GPU here: pass --device cpu")


def _datamodule(checkpoint: dict[str, Any]) -> Any:
    """Rebuilds the training run's data module from the class path and hyperparameters stored in the checkpoint."""
    path = checkpoint.get("datamodule_class")
    if path is None:
        raise UsageError("this checkpoint does not record its data module: pass --data-path FILE.npy to evaluate on your own data")
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    # LightningCLI adds private entries such as '_class_path' beside the init arguments.
    init_args = {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if not k.startswith("_")}
    datamodule = cls(**init_args)
    datamodule.setup("test")
    return datamodule


def evaluate_checkpoint(
    checkpoint_path: str,
    data_path: Optional[str] = None,
    num_samples: int = 1000,
    batch_size: int = 1024,
    chunk_size: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
    gap_points: int = 100,
    gap_optimizer: Optional[LocalOptimizer] = None,
) -> dict[str, Any]:
    """The report written as JSON: {'checkpoint', 'data', 'estimates': {name: {...}}, 'true_log_px'?, 'gaps'?}.

    'gaps' (when gap_points > 0): the amortization/approximation decomposition on the first
    gap_points points, log p(x) importance-sampled from q* with num_samples (inference/gaps.py).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise UsageError(f"checkpoint {checkpoint_path!r} not found: pass the path of a .ckpt file (runs/NAME/version_N/checkpoints/last.ckpt)")
    if min(num_samples, batch_size, 1 if chunk_size is None else chunk_size) < 1:
        raise UsageError(f"--num-samples, --batch-size and --chunk-size must be >= 1, got {num_samples}, {batch_size} and {chunk_size}")
    check_device(device)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        module = LVMModule.load_from_checkpoint(path, map_location=device)
    except (RuntimeError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise UsageError(f"{checkpoint_path!r} is not an lvm_lightning checkpoint ({type(error).__name__}): pass a .ckpt written by train.py") from None
    module.eval()
    model = module.model
    report: dict[str, Any] = {"checkpoint": str(path)}
    if data_path is not None:
        x = load_array(data_path)
        report["data"] = {"path": data_path}
        datamodule = None
    else:
        datamodule = _datamodule(checkpoint)
        x = datamodule.splits["test"]
        report["data"] = {"class": checkpoint["datamodule_class"], "split": "test"}
    if x.shape[1] != module.hparams.data_dim:
        raise UsageError(f"the data have {x.shape[1]} columns but the model was trained on {module.hparams.data_dim}")
    check_support(module.hparams.likelihood, x, "the data", "evaluate on data like the model's training data (its likelihood comes from the checkpoint)")
    x = x.to(device)
    torch.manual_seed(seed)
    report["estimates"] = estimate_log_px(model, x, num_samples, batch_size, chunk_size)
    if gap_points > 0:
        report["gaps"] = gap_summary(model, x[:gap_points], gap_optimizer or LocalOptimizer(), log_px_samples=num_samples, chunk_size=chunk_size)
    if datamodule is not None and hasattr(datamodule, "true_log_prob"):
        report["true_log_px"] = summarize(torch.cat([datamodule.true_log_prob(b) for b in x.split(batch_size)]))
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


def main(argv: Optional[list[str]] = None) -> None:
    """Command-line entry point; UsageError becomes one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m lvm_lightning.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("--data-path", help="evaluate on this N×D .npy file instead of the checkpoint's test split")
    parser.add_argument("--num-samples", type=int, default=1000, help="K for the sampled estimators (default 1000)")
    parser.add_argument("--batch-size", type=int, default=1024, help="points per batch")
    parser.add_argument("--chunk-size", type=int, default=None, help="largest (sample × point) count evaluated at once; bounds memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="also write the report to this JSON file")
    # Cheap defaults (seconds on CPU), as the AmortizationGap callback's. Cremer et al.'s setting:
    # --gap-points 1000 --gap-steps 5000 --gap-check-every 100 --gap-patience 10 --num-samples 5000.
    gap = parser.add_argument_group("amortization gap (q* optimized per point, see lvm_lightning.inference.LocalOptimizer)")
    gap.add_argument("--gap-points", type=int, default=100, help="points for the decomposition, the first of the data (0: skip it)")
    gap.add_argument("--gap-steps", type=int, default=500, help="step cap of the per-point optimization of q*")
    gap.add_argument("--gap-samples", type=int, default=10, help="samples per point per step of that optimization")
    gap.add_argument("--gap-lr", type=float, default=None, help="its Adam learning rate (default 0.1 for a categorical q, 0.01 for a Gaussian q)")
    gap.add_argument("--gap-check-every", type=int, default=50, help="steps between checks of the plateau rule")
    gap.add_argument("--gap-patience", type=int, default=5, help="checks without improvement before a point stops")
    gap.add_argument("--gap-stopping", choices=get_args(Stopping), default="point", help="stop each point on its own plateau, or the whole batch on the mean's")
    gap.add_argument("--gap-init", choices=get_args(Init), default="encoder", help="start q* from the encoder's output or from the prior")
    gap.add_argument("--gap-bound", choices=get_args(Bound), default="elbo", help="maximize the ELBO or the K-sample IWAE bound (needs --gap-gradient reparam)")
    gap.add_argument("--gap-gradient", choices=get_args(Gradient), default="stl", help="sticking-the-landing or plain reparameterized gradient")
    args = parser.parse_args(argv)
    try:
        gap_optimizer = LocalOptimizer(
            num_samples=args.gap_samples, bound=args.gap_bound, init=args.gap_init, lr=args.gap_lr, max_steps=args.gap_steps,
            check_every=args.gap_check_every, patience=args.gap_patience, stopping=args.gap_stopping, gradient=args.gap_gradient,
        )  # fmt: skip
        report = evaluate_checkpoint(
            args.checkpoint, args.data_path, args.num_samples, args.batch_size, args.chunk_size, args.seed, args.device, args.gap_points, gap_optimizer
        )
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_table(report))
    if "gaps" in report:
        print(format_gaps(report["gaps"]))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
