"""A quiet console: Lightning's advertisements, its hardware lines that say nothing, and one third-party deprecation warning are
filtered out of our commands' output, each by its exact message; every other log line and warning passes."""

import logging
import re
import warnings

# Lightning's rank-zero info lines go through one of these loggers (``rank_zero_info``, whichever package set it last), our own
# "… is off for this run" lines too.
RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
# Lines that carry no information about the run: advertisements for Lightning's cloud products, and the hardware that is absent.
DROPPED_LINES = re.compile(r"💡 Tip: |TPU available: False, using: 0 TPU cores$|GPU available: False, used: False$")
# Lightning 2.6 calls torch's deprecated isinstance(…, LeafSpec) at every fit: the user can do nothing about it.
PYTREE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# A resumed run writes its checkpoints into its own folder again, which is meant to hold the earlier ones.
RESUME_CHECKPOINT_WARNING = r"Checkpoint directory .* exists and is not empty"


class DropLines(logging.Filter):
    """Drops the log records whose message starts with a match of ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_console(resuming: bool = False) -> None:
    """Installs the filters (once: a second call adds nothing); ``resuming`` also drops the warning that the run's checkpoint folder is not empty."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLines) for f in logger.filters):
            logger.addFilter(DropLines(DROPPED_LINES))
    warnings.filterwarnings("ignore", message=PYTREE_WARNING, category=FutureWarning)
    if resuming:
        warnings.filterwarnings("ignore", message=RESUME_CHECKPOINT_WARNING, category=UserWarning)
