"""Priors, encoders, decoders and the latent variable model they make."""
from lvm_lightning.models.build import build_model
from lvm_lightning.models.lvm import Conditional, LatentVariableModel

__all__ = ["Conditional", "LatentVariableModel", "build_model"]
