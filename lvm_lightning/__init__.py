"""lvm_lightning: latent variable models, log p(x) estimators and the amortization gap, on PyTorch Lightning."""

from lvm_lightning.module import LVMModule

__all__ = ["LVMModule"]
