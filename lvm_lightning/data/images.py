"""MNIST and Fashion-MNIST through torchvision's dataset classes, as rows [N, 784] in [0, 1], binarized as the VAE/IWAE literature does.

The data are read from ``root`` in either of two layouts: torchvision's own (ROOT/<Class>/raw/,
downloaded there when ``download`` is on), or the four IDX files lying flat in ROOT, gzip'd or not,
as Debian's ``dataset-fashion-mnist`` installs them. torchvision reads only its own layout, so flat
files are unpacked once into a cache folder keyed by their path, size and time, and read from there.
"""

import gzip
import hashlib
import math
import os
import shutil
import zlib
from pathlib import Path
from typing import Literal, Optional, get_args

import torch
from torch import Tensor
from torchvision import datasets

from lvm_lightning.data.in_memory import InMemoryDataModule, Transform
from lvm_lightning.errors import UsageError

Binarization = Literal["dynamic", "static", "threshold", "none"]
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The test split's draw ignores ``seed``: every run is scored on the same bits.
TEST_SEED = 0


def binarize(grey: Tensor, mode: Binarization, seed: int) -> Tensor:
    """x ~ Bernoulli(grey) drawn with ``seed`` (dynamic, static), 1[grey > 0.5] (threshold), or grey itself (none)."""
    if mode == "none":
        return grey
    if mode == "threshold":
        return (grey > 0.5).float()
    # A CPU generator makes the fixed draws the same bits whatever device trains on them.
    return torch.bernoulli(grey, generator=torch.Generator().manual_seed(seed))


def dynamic_binarize(grey: Tensor) -> Tensor:
    """x ~ Bernoulli(grey), drawn as 1[u < grey] with u ~ U[0, 1): the same law as torch.bernoulli, whose CPU kernel draws
    element by element (3× slower on a 100 × 784 batch, 10 % of a K = 1 training step)."""
    return (torch.rand_like(grey) < grey).to(grey.dtype)


def grey_levels(images: Tensor) -> Tensor:
    """uint8 images [N, H, W] as rows [N, H·W] in [0, 1]."""
    return images.reshape(len(images), -1).float() / 255


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/lvm_lightning, or ~/.cache/lvm_lightning."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lvm_lightning"


def flat_sources(folder: Path) -> Optional[list[Path]]:
    """The four IDX files lying flat in ``folder`` (NAME.gz, else NAME), or None unless all four are there."""
    sources = []
    for name in IDX_FILES:
        found = [path for path in (folder / f"{name}.gz", folder / name) if path.is_file()]
        if not found:
            return None
        sources.append(found[0])
    return sources


def unpack(sources: list[Path], raw: Path) -> None:
    """Writes each source, decompressed, to raw/NAME; a temporary name and a rename keep concurrent ranks from reading half a file."""
    raw.mkdir(parents=True, exist_ok=True)
    for source, name in zip(sources, IDX_FILES):
        target = raw / name
        if target.is_file():
            continue
        partial = raw / f".{name}.{os.getpid()}"
        try:
            with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError, zlib.error) as error:  # EOFError: a truncated .gz
            partial.unlink(missing_ok=True)
            raise UsageError(
                f"cannot unpack {str(source)!r} into {str(raw)!r} ({error}): the file is damaged or truncated; fetch it again (or pass --data.cache_dir DIR)"
            ) from None
        os.replace(partial, target)


class ImageData(InMemoryDataModule):
    """28×28 grey images as rows [N, 784] in [0, 1]: the last ``num_val`` training images are the validation split, the official test set the test split.

    ``binarization``: ``dynamic`` draws x ~ Bernoulli(grey) afresh for every training batch, on the
    device; ``static`` draws the training set once with ``seed``; ``threshold`` is 1[grey > 0.5];
    ``none`` keeps grey levels (use a continuous likelihood). Validation and test splits are fixed
    draws: with ``seed``, and with a constant seed for the test split. ``root`` None: ./data if it holds the files,
    else the operating system's copy where one is known (Debian's dataset-fashion-mnist).
    """

    dataset_class: type[datasets.MNIST]
    title: str  # the data set's name in messages
    system_root: Optional[str] = None  # where an operating-system package installs the files, if one does
    image_shape = (1, 28, 28)
    machine_arguments = {"root": None, "download": False, "cache_dir": None}

    def __init__(
        self,
        root: Optional[str] = "data",
        download: bool = True,
        binarization: Binarization = "dynamic",
        num_val: int = 10_000,
        batch_size: int = 100,
        eval_batch_size: int = 500,
        seed: int = 0,
        in_memory: bool = True,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, in_memory)
        if binarization not in get_args(Binarization):
            raise UsageError(f"unknown binarization {binarization!r}: choose one of {', '.join(get_args(Binarization))}")
        if num_val < 1:
            raise UsageError(f"num_val must be >= 1, got {num_val}")
        self.save_hyperparameters()
        # Read (or downloaded) now, as NumpyData reads its file: missing data stop train.py before it makes a run folder.
        self.files = {"train": self._read(train=True), "test": self._read(train=False)}
        num_images = len(self.files["train"][0])
        if num_val >= num_images:
            raise UsageError(f"num_val={num_val} leaves no training images out of {num_images}: lower --data.num_val")

    @property
    def data_dim(self) -> int:
        return math.prod(self.image_shape)

    def transform(self, split: str) -> Optional[Transform]:
        return dynamic_binarize if split == "train" and self.hparams.binarization == "dynamic" else None

    def _torchvision_root(self) -> Path:
        """The folder to hand torchvision: ``root`` itself, or the cache holding the unpacked flat files."""
        root = Path(self.hparams.root).expanduser() if self.hparams.root is not None else self.default_root()
        sources = flat_sources(root)
        if sources is None:
            return root
        stamp = "".join(f"{s.resolve()}:{s.stat().st_size}:{s.stat().st_mtime_ns};" for s in sources)
        cache = Path(self.hparams.cache_dir).expanduser() if self.hparams.cache_dir else default_cache_dir()
        unpacked = cache / hashlib.sha1(stamp.encode()).hexdigest()[:12]
        unpack(sources, unpacked / self.dataset_class.__name__ / "raw")
        return unpacked

    def default_root(self) -> Path:
        """``root`` None: ./data if the data are there, else the system's copy (``system_root``) if it has them, else ./data."""
        for folder in (Path("data"), *([Path(self.system_root)] if self.system_root else [])):
            if flat_sources(folder) is not None or (folder / self.dataset_class.__name__ / "raw").is_dir():
                return folder
        return Path("data")

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        """(images [N, 28, 28] as uint8, labels [N]) of the training or the test file."""
        root = self._torchvision_root()
        try:
            dataset = self.dataset_class(str(root), train=train, download=self.hparams.download)
        except (RuntimeError, OSError) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            if self.hparams.download:
                why, other_way = f"the download failed ({lines[-1] if lines else type(error).__name__})", "retry with internet access"
            else:
                why, other_way = "download is off", "allow the download (--data.download true)"
            files = ", ".join(f"{name}.gz" for name in IDX_FILES)
            raise UsageError(
                f"{self.title} not found in {str(root)!r} and {why}: put the four files {files} flat in a folder "
                f"(lvm-train: --data.root DIR; lvm-evaluate: --data_root DIR), or {other_way}"
            ) from None
        images = dataset.data
        if tuple(images.shape[1:]) != self.image_shape[1:]:
            raise UsageError(f"{self.title} images in {str(root)!r} are {tuple(images.shape[1:])}, expected {self.image_shape[1:]}")
        return images, dataset.targets

    def load_splits(self) -> dict[str, Tensor]:
        hp = self.hparams
        images, labels = self.files["train"]
        grey = grey_levels(images)
        # Dynamic runs keep fixed validation and test draws, the same bits a static run with this seed scores on.
        fixed_mode = "static" if hp.binarization == "dynamic" else hp.binarization
        fixed = binarize(grey, fixed_mode, hp.seed)
        train = grey if hp.binarization == "dynamic" else fixed
        num_train = len(grey) - hp.num_val
        test_images, test_labels = self.files["test"]
        test = binarize(grey_levels(test_images), fixed_mode, TEST_SEED)
        self.labels = {"train": labels[:num_train], "val": labels[num_train:], "test": test_labels}
        return {"train": train[:num_train], "val": fixed[num_train:], "test": test}


class MNISTData(ImageData):
    """MNIST handwritten digits (torchvision.datasets.MNIST)."""

    dataset_class = datasets.MNIST
    title = "MNIST"


class FashionMNISTData(ImageData):
    """Fashion-MNIST clothing images (torchvision.datasets.FashionMNIST); Debian: apt install dataset-fashion-mnist."""

    dataset_class = datasets.FashionMNIST
    title = "Fashion-MNIST"
    system_root = "/usr/share/datasets/fashion-mnist"
