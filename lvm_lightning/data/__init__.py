"""LightningDataModules: synthetic mixtures with a known density, and the user's own arrays."""
from lvm_lightning.data.in_memory import EpochPermutation, InMemoryDataModule, TensorLoader
from lvm_lightning.data.linear_gaussian import LinearGaussianData
from lvm_lightning.data.mixture import GaussianMixtureData
from lvm_lightning.data.numpy_file import NumpyData, load_array

__all__ = ["EpochPermutation", "GaussianMixtureData", "InMemoryDataModule", "LinearGaussianData", "NumpyData", "TensorLoader", "load_array"]
