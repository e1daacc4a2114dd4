"""The one evaluation path of validation, ``lvm-evaluate`` and their reports: which estimators run (``Evaluators``, ``choose``),
every estimator's per-point values on one batch (``estimate_all``), seeded by the batch's place in its split (``estimate_batch``),
and a split's batches dealt among processes (``estimate_batches``)."""

import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from lvm_lightning.classes import resolve
from lvm_lightning.dealing import deal, dealt_index
from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator, applies, evaluation_estimators
from lvm_lightning.rng import batch_seed, seeded_fork


@dataclass
class PerPoint:
    """One estimator on one batch: log p̂(x) [B], its own diagnostics [B] by name, and K, the log-weights it reduced."""

    log_px: Tensor
    diagnostics: dict[str, Tensor]
    num_samples: int


@dataclass(frozen=True)
class Evaluators:
    """Which estimators an evaluation runs: the built-ins that apply to the model at K = ``num_samples`` (exact where tractable,
    prior and importance sampling, the ELBO: ``objectives.evaluation_estimators``), then each of ``extra`` (AIS, a semi-amortized
    bound, one's own), each of which must apply."""

    num_samples: int
    chunk_size: Optional[int] = None
    extra: tuple[Estimator, ...] = ()

    def for_model(self, model: LatentVariableModel) -> list[Estimator]:
        """The estimators, in order; UsageError where one of ``extra`` does not apply or takes a name already taken."""
        chosen = evaluation_estimators(model, self.num_samples, self.chunk_size)
        for estimator in self.extra:
            estimator.check(model)
            if estimator.name in {other.name for other in chosen}:
                raise UsageError(
                    f"{estimator.name!r} is evaluated already: add each estimator once, and none of the defaults ({', '.join(e.name for e in chosen)})"
                )
            chosen.append(estimator)
        return chosen

    def also(self, model: LatentVariableModel, estimators: Sequence[Estimator]) -> "Evaluators":
        """These, with each of ``estimators`` that applies to ``model`` and whose name none before it has (a run's own, beside the built-ins)."""
        extra, names = list(self.extra), {estimator.name for estimator in self.for_model(model)}
        for estimator in estimators:
            if estimator.name not in names and applies(estimator, model):
                extra.append(estimator)
                names.add(estimator.name)
        return Evaluators(self.num_samples, self.chunk_size, tuple(extra))


def from_class_path(class_path: str, num_samples: int, chunk_size: Optional[int], trusted: Sequence[str] = ()) -> Estimator:
    """The Estimator subclass at ``class_path`` (lvm_lightning's or a trusted module's, resolved as a checkpoint's classes are), built with
    K = ``num_samples`` and ``chunk_size`` where its constructor takes them, its other arguments at their defaults."""
    cls = resolve(class_path, (Estimator,), "an estimator", trusted, source="--estimators")
    parameters = inspect.signature(cls).parameters
    given = {name: value for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)) if name in parameters and value is not None}
    missing = [name for name, p in parameters.items() if name not in given and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise UsageError(
            f"--estimators {class_path}: {cls.__name__} needs {', '.join(missing)}, which have no default: give them defaults, or name the run's own estimator by its name"
        )
    return cls(**given)


def choose(
    model: LatentVariableModel,
    names: Sequence[str],
    available: Evaluators,
    optional: Sequence[Estimator] = (),
    trusted: Sequence[str] = (),
) -> list[Estimator]:
    """The estimators ``names`` asks for, in order: each the name of one of ``available``'s or of an ``optional`` one that applies
    (a costly AIS, a run's own), or an Estimator's class path (``from_class_path``, at ``available``'s K); UsageError for any other."""
    choices = {estimator.name: estimator for estimator in available.also(model, optional).for_model(model)}
    unknown = [name for name in names if name not in choices and "." not in name]
    if unknown or not names:
        raise UsageError(
            f"unknown or inapplicable estimators {unknown or '(none given)'}: choose among {', '.join(choices)}, "
            "or name an Estimator's class path (--estimators lvm_lightning.objectives.ImportanceSampling, or one of yours with --trust)"
        )
    chosen = [choices[name] if name in choices else from_class_path(name, available.num_samples, available.chunk_size, trusted) for name in names]
    for estimator in chosen:
        estimator.check(model)
    repeated = sorted({estimator.name for estimator in chosen if [e.name for e in chosen].count(estimator.name) > 1})
    if repeated:
        raise UsageError(f"--estimators names {', '.join(repeated)} more than once (results are keyed by estimator name): name each once")
    return chosen


def estimate_all(model: LatentVariableModel, x: Tensor, estimators: list[Estimator]) -> dict[str, PerPoint]:
    """Each estimator's ``PerPoint`` result on the batch ``x``, by estimator name.

    Estimators with the same ``draws`` (the IWAE bound and the ELBO, both from K samples of q_φ) reduce one set
    of log-weights: each sample is drawn and scored once, and their difference on a batch is Jensen's gap alone.
    """
    out, drawn = {}, {}
    for estimator in estimators:
        key = estimator.draws()
        if key is not None and key in drawn:
            estimate = estimator.from_log_weights(drawn[key])
        else:
            estimate = estimator.estimate(model, x)
            if key is not None:
                drawn[key] = estimate.log_weights
        out[estimator.name] = PerPoint(estimate.log_px, estimator.diagnostics(estimate), estimate.log_weights.shape[0])
    return out


def estimate_batch(model: LatentVariableModel, x: Tensor, estimators: list[Estimator], index: int, seed: int = 0) -> dict[str, PerPoint]:
    """``estimate_all`` on the batch ``x``, the ``index``-th of its split, in a fork of torch's streams seeded by (``seed``, ``index``):
    a batch draws the same numbers whichever process computes it, and the caller's stream is left as it was."""
    with seeded_fork(x.device, batch_seed(seed, index)):
        return estimate_all(model, x, estimators)


@torch.no_grad()
def estimate_batches(
    model: LatentVariableModel, x: Tensor, estimators: list[Estimator], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
) -> dict[int, dict[str, PerPoint]]:
    """``estimate_batch`` on the batches of ``batch_size`` rows of ``x`` that ``dealing.deal`` gives rank ``rank`` of ``world_size``, by batch index."""
    out = {}
    for position, batch in enumerate(deal(x.split(batch_size), rank, world_size)):
        index = dealt_index(position, rank, world_size)
        out[index] = estimate_batch(model, batch, estimators, index, seed)
    return out


class SplitMeans:
    """Per-point values of each quantity summed over a split's batches, then their means over the whole split (every rank's)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.points: Optional[Tensor] = None

    def add(self, values: dict[str, Tensor]) -> None:
        """Adds a batch's per-point values [B] by name."""
        first = next(iter(values.values()))
        # float64 (MPS has none): a split's sum of log p̂(x) reaches 1e6 and more, where float32 resolves only 0.1 nats.
        dtype = torch.float32 if first.device.type == "mps" else torch.float64
        for key, value in values.items():
            total = value.sum(dtype=dtype)
            self.sums[key] = self.sums[key] + total if key in self.sums else total
        count = torch.tensor(float(len(first)), dtype=dtype, device=first.device)
        self.points = count if self.points is None else self.points + count

    def means(self, reduce_sum: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """The means over every point so far (``reduce_sum`` adds the ranks' sums and counts in one collective), float32; then empty again."""
        keys = sorted(self.sums)
        totals = reduce_sum(torch.stack([*(self.sums[key] for key in keys), self.points]))
        self.sums, self.points = {}, None
        return dict(zip(keys, (totals[:-1] / totals[-1]).float()))
