"""TensorBoard's CUSTOM SCALARS tab: the estimates of log p(x) on one chart, the gaps on another, the ESS fractions on a third."""

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

CATEGORY = "lvm_lightning"
# Each estimate is a lower bound on (or equals) the model's log p(x), and the true density bounds a fitted model from
# above: only on one y-axis do their gaps show. Tags as the module, TrueLogDensity and AmortizationGap write them.
GAP_TAGS = r"gap/(\w+/)?(amortization|approximation)_gap$"  # gap/FAMILY/… too, with --amortization_gap.family


SPLITS = {"fit": "val", "validate": "val", "test": "test"}  # the split whose estimates each stage logs (predict logs none)


def scalar_layout(stage: str) -> dict[str, dict[str, list[Any]]]:
    """{category: {chart title: ["Multiline", [tag regexes]]}} for the scalars a ``stage`` ('fit', 'validate' or 'test') logs.

    TensorBoard matches each regex from the start of a tag (``re.match``).
    """
    split = SPLITS[stage]
    charts = {
        f"log p(x) ({split}): every estimator and the true density": ["Multiline", [rf"{split}/log_px/"]],
        f"ESS / K ({split}): fraction of useful samples": ["Multiline", [rf"{split}/ess_fraction/"]],
    }
    if stage == "fit":
        charts["gaps: amortization and approximation"] = ["Multiline", [GAP_TAGS]]
    return {CATEGORY: charts}


class ScalarLayout(pl.Callback):
    """Writes ``scalar_layout`` once per run, on rank 0, to each TensorBoard logger (other loggers have no such tab: skipped quietly)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or not trainer.is_global_zero or stage not in SPLITS:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(scalar_layout(stage))
