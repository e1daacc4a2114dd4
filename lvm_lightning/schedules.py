"""Learning-rate schedules: ``constant``; ``cosine``, from lr to 0 over the run's steps (a short budget);
``burda``, the IWAE paper's 3^i epochs at lr·10^(−i/7) (a factor per epoch); ``plateau``, lr halved whenever
validation log p(x) stops rising (torch's ReduceLROnPlateau: large steps while they help, small ones to settle)."""

from typing import Any, Literal

LRSchedule = Literal["constant", "cosine", "burda", "plateau"]

PLATEAU_MONITOR = "val/log_px"  # the module's tightest validation estimate of log p(x), nats per point
# lr·½ after 2 validations in a row without a rise of 0.001 nats per point over the best: Adam's noise at a fixed lr is
# of that order on the shipped models, so a smaller threshold would wait on noise and a larger one halve too early.
PLATEAU: dict[str, Any] = {"mode": "max", "factor": 0.5, "patience": 2, "threshold": 1e-3, "threshold_mode": "abs"}

BURDA_STAGES = 8  # stages i = 0..7 of Burda et al. (2016), 3^i epochs each: 3280 epochs in all
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))


def burda_lr_factor(epoch: int) -> float:
    """10^(−i/7) during stage i, which spans epochs (3^i − 1)/2 … (3^(i+1) − 3)/2; the last stage's factor after that."""
    stage = sum((3**i - 1) // 2 <= epoch for i in range(1, BURDA_STAGES))
    return 10 ** (-stage / 7)
