"""The seed's experiment: prior sampling wastes all but about 1/N of its samples on data in N clusters; importance sampling does not.

lvm-study estimators [--checkpoint CKPT [--trust MODULE] | --data.num_clusters N ...] [--proposal encoder|exact_posterior]
                     [--num_samples K ...] [--repeats R] [--num_points P] [--seed S] [--output FILE.json] [--figure FILE.png] [--log_dir DIR]
"""

import json
import os
import sys
from typing import Any, Literal, Optional, Sequence

import torch
from jsonargparse import ArgumentParser
from matplotlib.figure import Figure
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from lvm_lightning.data import GaussianMixtureData, SplitData
from lvm_lightning.errors import UsageError, one_line_errors
from lvm_lightning.files import check_writable, write_atomically
from lvm_lightning.models import MixtureModel
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Exact, ImportanceSampling, PriorSampling, SampledEstimator, tractable
from lvm_lightning.reports import table
from lvm_lightning.runs import load_run, run_data

DEFAULT_NUM_SAMPLES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
Proposal = Literal["encoder", "exact_posterior"]


class ExactPosterior(LatentVariableModel):
    """``model`` with q(z|x) = p(z|x) = p(x, z) / Σ_z' p(x, z'), enumerated: the proposal under which every importance weight is p(x)."""

    def __init__(self, model: LatentVariableModel) -> None:
        if not isinstance(model.prior(), Categorical):
            raise UsageError("the exact posterior is enumerated over one categorical z: it needs a MixtureModel")
        super().__init__(model.prior, model.decoder, model.encoder)
        self.units = model.units

    def posterior(self, x: Tensor, frozen: bool = False) -> Distribution:
        """Categorical(p(z|x)) with logits log p(x, z) [B, C] (it has no φ: ``frozen`` changes nothing)."""
        return Categorical(logits=self.log_joint(x, self.support()).T, validate_args=False)


def mixture_components(mixture: Optional[Distribution]) -> tuple[Tensor, Tensor, Tensor]:
    """(log π [C], μ [C, D], σ [C, D]) of a mixture Σ_c π_c N(μ_c, diag σ_c²); UsageError for any other distribution."""
    components = getattr(mixture, "component_distribution", None)
    normal = getattr(components, "base_dist", None)
    if not isinstance(mixture, MixtureSameFamily) or not isinstance(components, Independent) or not isinstance(normal, Normal):
        what = "data of unknown density" if mixture is None else type(mixture).__name__
        raise UsageError(f"the study needs data from a Gaussian mixture (GaussianMixtureData), not {what}: use --data.* without --checkpoint")
    return mixture.mixture_distribution.logits.log_softmax(-1), normal.loc, normal.scale


@torch.no_grad()
def true_model(mixture: Distribution) -> MixtureModel:
    """The MixtureModel p(z = c) = π_c, p(x|z = c) = N(μ_c, diag σ_c²) whose log p(x) is the data's true log-density."""
    log_weights, means, stds = mixture_components(mixture)
    model = MixtureModel(data_dim=means.shape[1], num_components=len(means), learn_prior=True, decoder_hidden=(), decoder_std="learned", init="random")
    model.decoder.net[0].weight.copy_(torch.cat([means, stds.log()], 1))  # the table's rows: [μ_c, log σ_c]
    model.prior.logits.copy_(log_weights)
    return model.eval()


def sampled_estimates(model: LatentVariableModel, x: Tensor, estimator: SampledEstimator, repeats: int, seed: int) -> tuple[Tensor, Tensor]:
    """(log p̂(x), ESS/K), each [R, B], from ``repeats`` runs of ``estimator`` seeded seed, seed + 1, …: the same draws whichever other K are studied."""
    log_px, ess_fraction = [], []
    with torch.random.fork_rng(devices=[]):
        for repeat in range(repeats):
            torch.manual_seed(seed + repeat)
            estimate = estimator.estimate(model, x)
            log_px.append(estimate.log_px)
            ess_fraction.append(estimate.effective_sample_size() / estimator.num_samples)
    return torch.stack(log_px), torch.stack(ess_fraction)


def error_summary(log_px: Tensor, exact: Tensor) -> dict[str, float]:
    """bias = mean over repeats and points of log p̂(x) − log p(x); spread = std over repeats of log p̂(x), averaged over points."""
    return {"bias": (log_px - exact).mean().item(), "spread": log_px.std(0).mean().item()}


@torch.no_grad()
def study(model: LatentVariableModel, x: Tensor, num_samples: Sequence[int], repeats: int, seed: int) -> dict[str, Any]:
    """{'exact_log_px': mean log p(x) (enumerated), 'rows': per K the bias and spread of PriorSampling(K) and ImportanceSampling(K), and
    their ESS/K ('useful_fraction': the prior's)} over the points ``x`` [B, D] and ``repeats`` seeded repeats."""
    exact = Exact().estimate(model, x).log_px
    rows = []
    for k in num_samples:
        row: dict[str, Any] = {"num_samples": k}
        for estimator in (PriorSampling(k), ImportanceSampling(k)):
            log_px, ess_fraction = sampled_estimates(model, x, estimator, repeats, seed)
            row[estimator.name] = {**error_summary(log_px, exact), "ess_fraction": ess_fraction.mean().item()}
        row["useful_fraction"] = row["prior_sampling"]["ess_fraction"]
        rows.append(row)
    return {"exact_log_px": exact.mean().item(), "rows": rows}


def study_figure(report: dict[str, Any]) -> Figure:
    """Left: bias of log p̂(x) against K (log axis, ± spread bands; 0 is the exact log p(x)); right: the prior's ESS/K with the line 1/N."""
    rows = report["rows"]
    k = [row["num_samples"] for row in rows]
    fig = Figure(figsize=(11, 4.2))  # a bare Figure, not pyplot: the user's matplotlib backend is left alone
    bias_ax, fraction_ax = fig.subplots(1, 2)
    for name, label, color in (
        ("prior_sampling", "prior sampling, z ~ p(z)", "tab:red"),
        ("importance_sampling", f"importance sampling, z ~ {report['proposal']}", "tab:blue"),
    ):
        bias = torch.tensor([row[name]["bias"] for row in rows])
        spread = torch.tensor([row[name]["spread"] for row in rows])
        bias_ax.plot(k, bias, "o-", color=color, label=label)
        bias_ax.fill_between(k, bias - spread, bias + spread, color=color, alpha=0.2)
    bias_ax.axhline(0, color="black", linestyle=":", label="exact log p(x)")
    bias_ax.set_xscale("log")
    bias_ax.set_yscale("symlog", linthresh=0.1)  # the prior's bias spans nats to hundreds of nats; importance sampling's sits near 0
    bias_ax.set_xlabel("K (samples per point)")
    bias_ax.set_ylabel("log p̂(x) − log p(x) (nats; band: ± spread over repeats)")
    bias_ax.set_title(f"bias of log p̂(x), {report['num_points']} points × {report['repeats']} repeats")
    bias_ax.legend(fontsize=8)
    fraction_ax.plot(k, [row["useful_fraction"] for row in rows], "o-", color="tab:red", label="ESS / K of the prior's weights")
    fraction_ax.axhline(1 / report["num_clusters"], color="black", linestyle=":", label=f"1/N, N = {report['num_clusters']} clusters")
    # ESS >= 1 however bad every weight is, so ESS/K cannot fall below 1/K: at K < N it overstates the useful fraction.
    fraction_ax.plot(k, [1 / n for n in k], color="gray", linestyle="--", label="1/K, the least ESS/K can be")
    fraction_ax.set_xscale("log")
    fraction_ax.set_ylim(0, 1.05)
    fraction_ax.set_xlabel("K (samples per point)")
    fraction_ax.set_title("fraction of useful prior samples")
    fraction_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def load_checkpoint(path: str, trust: Sequence[str]) -> tuple[LatentVariableModel, SplitData]:
    """The trained model and its run's data module, loaded as lvm-evaluate loads them (only trusted classes are built)."""
    module, checkpoint = load_run(path, trust)
    return module.lvm.eval(), run_data(checkpoint, path, trust)


def study_inputs(
    checkpoint: Optional[str], data: GaussianMixtureData, proposal: Optional[Proposal], num_points: Optional[int], trust: Sequence[str]
) -> tuple[LatentVariableModel, Tensor, dict[str, Any]]:
    """(the model with its proposal, the first ``num_points`` test points, what they are for the report)."""
    if checkpoint is None:
        if proposal == "encoder":
            raise UsageError("the true model has no trained encoder: pass --checkpoint of a trained MixtureModel, or --proposal exact_posterior")
        data.setup("test")
        model, described = true_model(data.true_density), {"model": "the true mixture of the data"}
    else:
        model, data = load_checkpoint(checkpoint, trust)
        described = {"model": checkpoint}
    if not tractable(model):
        raise UsageError(
            f"the study compares with the exact log p(x): {type(model).__name__} has none; pass a checkpoint of a MixtureModel (configs/mixture_exact.yaml)"
        )
    proposal = proposal or ("encoder" if checkpoint is not None else "exact_posterior")
    x = data.splits["test"]
    if num_points is not None and not 1 <= num_points <= len(x):
        raise UsageError(f"--num_points must be between 1 and the test split's {len(x)} points, got {num_points}")
    num_clusters = len(mixture_components(data.true_density)[0])
    described.update(proposal="q_φ(z|x)" if proposal == "encoder" else "p(z|x)", num_clusters=num_clusters, num_points=len(x[:num_points]))
    return (ExactPosterior(model) if proposal == "exact_posterior" else model), x[:num_points], described


def check_settings(num_samples: Sequence[int], repeats: int) -> None:
    """Raises UsageError unless every K >= 1 and repeats >= 2 (a spread over one repeat is undefined)."""
    if not num_samples or min(num_samples) < 1:
        raise UsageError(f"--num_samples must be one or more K >= 1, e.g. --num_samples 1 10 100, got {list(num_samples)}")
    if repeats < 2:
        raise UsageError(f"--repeats must be >= 2 to measure a spread over repeats, got {repeats}")


def run_estimators(
    checkpoint: Optional[str] = None,
    data: Optional[GaussianMixtureData] = None,
    proposal: Optional[Proposal] = None,
    num_samples: Sequence[int] = DEFAULT_NUM_SAMPLES,
    repeats: int = 10,
    num_points: Optional[int] = None,
    seed: int = 0,
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """The report written as JSON: what was studied, then ``study``'s table; a checkpoint's own data, or ``data``'s true mixture."""
    check_settings(num_samples, repeats)
    model, x, described = study_inputs(checkpoint, data or GaussianMixtureData(), proposal, num_points, trust)
    return {**described, "repeats": repeats, "seed": seed, **study(model, x, num_samples, repeats, seed)}


def format_table(report: dict[str, Any]) -> str:
    """The table as text: per K the prior's bias, spread and useful fraction, then importance sampling's bias and spread (nats)."""
    header = ("K", "prior bias", "prior spread", "useful (ESS/K)", "IS bias", "IS spread")
    rows = [header] + [
        (
            str(row["num_samples"]),
            f"{row['prior_sampling']['bias']:.3f}",
            f"{row['prior_sampling']['spread']:.3f}",
            f"{row['useful_fraction']:.3f}",
            f"{row['importance_sampling']['bias']:.4f}",
            f"{row['importance_sampling']['spread']:.4f}",
        )
        for row in report["rows"]
    ]
    return "\n".join(
        [table(rows, left=0), f"exact log p(x) {report['exact_log_px']:.4f} (mean over {report['num_points']} points); 1/N = {1 / report['num_clusters']:.3f}"]
    )


def write_outputs(report: dict[str, Any], output: Optional[str], figure: Optional[str], log_dir: Optional[str]) -> None:
    """The JSON report, the PNG figure and the figure in TensorBoard (tag study/estimators), each where asked."""
    if output:
        write_atomically(output, json.dumps(report, indent=2).encode())
        print(f"wrote {output}")
    if figure or log_dir:
        fig = study_figure(report)
        if figure:
            fig.savefig(figure, dpi=120)
            print(f"wrote {figure}")
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir) as writer:
                writer.add_figure("study/estimators", fig)
            print(f"wrote the figure to TensorBoard in {log_dir}")


def check_outputs(output: Optional[str], figure: Optional[str]) -> None:
    """Raises UsageError, naming the option, unless each file given can be written: checked before the study's seconds, not after."""
    for option, path in (("--output", output), ("--figure", figure)):
        if path:
            check_writable(path, option)


def parser() -> ArgumentParser:
    """``lvm-study estimators``: ``run_estimators``'s arguments (``--data.*`` the true mixture's), and where the outputs go."""
    estimators = ArgumentParser(description=__doc__.splitlines()[0], exit_on_error=False)
    estimators.add_argument("--checkpoint", type=Optional[str], help="a MixtureModel trained by lvm-train (its data are used); default: the true mixture")
    estimators.add_argument("--trust", type=str, nargs="+", default=[], help="modules (or classes) of your own that the checkpoint may name")
    estimators.add_class_arguments(GaussianMixtureData, "data", skip={"batch_size", "eval_batch_size", "standardize"})
    estimators.add_argument("--proposal", type=Optional[Proposal], help="q of importance sampling; default: encoder with --checkpoint, else exact_posterior")
    estimators.add_argument("--num_samples", type=int, nargs="+", default=list(DEFAULT_NUM_SAMPLES), help="the K to study")
    estimators.add_argument("--repeats", type=int, default=10, help="R: repeats of each estimate, seeded seed, seed + 1, …")
    estimators.add_argument("--num_points", type=Optional[int], help="the first P points of the test split (default: all)")
    estimators.add_argument("--seed", type=int, default=0, help="the seed of the first repeat's draws")
    estimators.add_argument("--output", type=Optional[str], help="write the report to this JSON file")
    estimators.add_argument("--figure", type=Optional[str], help="draw the figure to this PNG file")
    estimators.add_argument("--log_dir", type=Optional[str], help="write the figure to TensorBoard in this folder")
    top = ArgumentParser(prog="lvm-study", description=__doc__.splitlines()[0], exit_on_error=False)
    subcommands = top.add_subcommands(help="the study to run")
    subcommands.add_subcommand("estimators", estimators, help="prior sampling against importance sampling, against the exact log p(x)")
    return top


def main(argv: Optional[list[str]] = None) -> None:
    """Command-line entry point; a usage error becomes one line on stderr and exit code 2."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # classes of the user's own files in the working folder, for --trust
    with one_line_errors("lvm-study estimators"):
        cli = parser()
        args = cli.instantiate(cli.parse_args(argv)).estimators.as_dict()
        outputs = {name: args.pop(name) for name in ("output", "figure", "log_dir")}
        check_outputs(outputs["output"], outputs["figure"])
        report = run_estimators(**args)
    print(format_table(report))
    write_outputs(report, **outputs)


if __name__ == "__main__":
    main()
