"""Learning-rate schedules: ``constant``; ``cosine``, from lr to 0 over the run's steps (a short budget);
``burda``, the IWAE paper's 3^i epochs at lr·10^(−i/7) (a factor per epoch)."""

from typing import Literal

LRSchedule = Literal["constant", "cosine", "burda"]

BURDA_STAGES = 8  # stages i = 0..7 of Burda et al. (2016), 3^i epochs each: 3280 epochs in all
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))


def burda_lr_factor(epoch: int) -> float:
    """10^(−i/7) during stage i, which spans epochs (3^i − 1)/2 … (3^(i+1) − 3)/2; the last stage's factor after that."""
    stage = sum((3**i - 1) // 2 <= epoch for i in range(1, BURDA_STAGES))
    return 10 ** (-stage / 7)
