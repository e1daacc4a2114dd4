"""LightningDataModules: synthetic mixtures with a known density, the user's own arrays, and MNIST-like images."""

from lvm_lightning.data.images import FashionMNISTData, ImageData, MNISTData
from lvm_lightning.data.in_memory import EpochPermutation, InMemoryDataModule, TensorLoader
from lvm_lightning.data.linear_gaussian import LinearGaussianData
from lvm_lightning.data.mixture import GaussianMixtureData
from lvm_lightning.data.numpy_file import NumpyData, load_array
from lvm_lightning.data.protocol import SplitData, true_log_prob

__all__ = [
    "EpochPermutation",
    "FashionMNISTData",
    "GaussianMixtureData",
    "ImageData",
    "InMemoryDataModule",
    "LinearGaussianData",
    "MNISTData",
    "NumpyData",
    "SplitData",
    "TensorLoader",
    "load_array",
    "true_log_prob",
]
