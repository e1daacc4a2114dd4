"""Train a latent variable model: ``python train.py`` (default mixture) or ``python train.py fit --config configs/NAME.yaml``."""

from lvm_lightning.cli import main

if __name__ == "__main__":
    main()
