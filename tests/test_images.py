"""MNIST-like data through torchvision's real reading path on tiny IDX files written here; conv networks; image callbacks; the Burda schedule."""

import gzip
import itertools
import math
import struct
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader
from torchvision import datasets

from lvm_lightning.callbacks import ActiveUnits, ImageGrids, LatentScatter, active_units
from lvm_lightning.callbacks.images import DISPLAY_SIZE, GRID_GAP, PAIR_GAP, pair_grid
from lvm_lightning.cli import main
from lvm_lightning.data import FashionMNISTData, GaussianMixtureData, MNISTData, TensorLoader
from lvm_lightning.data.images import IDX_FILES
from lvm_lightning.errors import UsageError
from lvm_lightning.models import VAE, MixtureModel
from lvm_lightning.models.families import BernoulliFamily
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact, ImportanceSampling
from lvm_lightning.schedules import BURDA_EPOCHS, Adam, Burda, Cosine, burda_lr_factor

from conftest import module_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NUM_TRAIN, NUM_VAL, NUM_TEST = 40, 10, 12


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: bytes 0, 0, 8 (ubyte), ndim; the dimensions as big-endian int32; the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Random 28×28 grey images and labels 0..9, keyed by IDX file name."""
    rng = np.random.default_rng(0)
    return {
        IDX_FILES[0]: rng.integers(0, 256, (NUM_TRAIN, 28, 28)),
        IDX_FILES[1]: np.arange(NUM_TRAIN) % 10,
        IDX_FILES[2]: rng.integers(0, 256, (NUM_TEST, 28, 28)),
        IDX_FILES[3]: (np.arange(NUM_TEST) + 3) % 10,
    }


@pytest.fixture
def flat(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """The four files gzip'd and flat in one folder, as Debian's dataset-fashion-mnist installs them."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for name, array in arrays.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return folder


def fashion(flat: Path, **kwargs) -> FashionMNISTData:
    data = FashionMNISTData(root=str(flat), cache_dir=str(flat.parent / "cache"), num_val=NUM_VAL, **kwargs)
    data.setup()
    return data


def grey(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.reshape(len(array), -1)).float() / 255


def test_flat_gz_folder_is_unpacked_into_the_cache_and_read_by_torchvision(flat: Path, arrays: dict[str, np.ndarray]) -> None:
    data = fashion(flat, binarization="none")
    train = grey(arrays[IDX_FILES[0]])
    assert torch.equal(data.splits["train"], train[:-NUM_VAL]) and torch.equal(data.splits["val"], train[-NUM_VAL:])
    assert torch.equal(data.splits["test"], grey(arrays[IDX_FILES[2]]))
    assert torch.equal(data.labels["val"], torch.from_numpy(arrays[IDX_FILES[1]][-NUM_VAL:]))
    assert torch.equal(data.labels["test"], torch.from_numpy(arrays[IDX_FILES[3]]))
    assert (data.data_dim, data.image_shape) == (784, (1, 28, 28))
    unpacked = list((flat.parent / "cache").glob("*/FashionMNIST/raw/*"))
    assert sorted(p.name for p in unpacked) == sorted(IDX_FILES)
    assert sorted(p.name for p in flat.iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)  # the source folder is left alone


def test_flat_uncompressed_files_are_read_too(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    for name, array in arrays.items():
        (folder / name).write_bytes(idx_bytes(array))
    data = MNISTData(root=str(folder), download=False, binarization="none", num_val=NUM_VAL, cache_dir=str(tmp_path / "cache"))
    data.setup()
    assert torch.equal(data.splits["test"], grey(arrays[IDX_FILES[2]]))


def test_torchvision_raw_layout_is_read_in_place(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        (raw / name).write_bytes(idx_bytes(array))
    data = MNISTData(root=str(tmp_path / "root"), download=False, binarization="none", num_val=NUM_VAL, cache_dir=str(tmp_path / "cache"))
    data.setup()
    assert torch.equal(data.splits["test"], grey(arrays[IDX_FILES[2]]))
    assert not (tmp_path / "cache").exists()


def epoch_batches(loader: TensorLoader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat(list(loader))


def test_dynamic_binarization_draws_afresh_for_every_batch(flat: Path, arrays: dict[str, np.ndarray]) -> None:
    data = fashion(flat, binarization="dynamic")
    assert torch.equal(data.splits["train"], grey(arrays[IDX_FILES[0]])[:-NUM_VAL])  # grey until a batch is drawn
    loader = data.train_dataloader()
    first, again = epoch_batches(loader, 0), epoch_batches(loader, 0)  # same order, new draws
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, again)
    order = loader.sampler.indices()
    draws = torch.stack([epoch_batches(loader, 0) for _ in range(200)]).mean(0)
    assert (draws - data.splits["train"][order]).abs().mean() < 0.04  # E[x] = grey level
    assert set(data.splits["val"].unique().tolist()) == {0.0, 1.0}  # validation is a fixed draw


def test_static_binarization_is_fixed_by_seed(flat: Path) -> None:
    data = fashion(flat, binarization="static", seed=1)
    loader = data.train_dataloader()
    assert torch.equal(epoch_batches(loader, 0), epoch_batches(loader, 0))
    assert set(data.splits["train"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(data.splits["train"], fashion(flat, binarization="static", seed=1).splits["train"])
    assert not torch.equal(data.splits["train"], fashion(flat, binarization="static", seed=2).splits["train"])


def test_test_split_is_the_same_draw_whatever_the_seed_and_mode(flat: Path) -> None:
    reference = fashion(flat, binarization="static", seed=0).splits["test"]
    assert set(reference.unique().tolist()) == {0.0, 1.0}
    for seed, mode in [(1, "static"), (5, "dynamic")]:
        assert torch.equal(fashion(flat, binarization=mode, seed=seed).splits["test"], reference)


def test_threshold_and_none(flat: Path, arrays: dict[str, np.ndarray]) -> None:
    train = grey(arrays[IDX_FILES[0]])[:-NUM_VAL]
    assert torch.equal(fashion(flat, binarization="threshold").splits["train"], (train > 0.5).float())
    data = fashion(flat, binarization="none")
    assert torch.equal(data.splits["train"], train)
    assert data.transform("train") is None


def test_missing_folder_is_one_line_naming_the_folder_and_the_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as error:
        FashionMNISTData(root=str(tmp_path / "nowhere"), download=False).setup()
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message and "download is off" in message
    assert all(f"{name}.gz" in message for name in IDX_FILES)


def test_a_truncated_gz_is_one_line_and_leaves_no_partial_file(flat: Path, tmp_path: Path) -> None:
    name = flat / f"{IDX_FILES[0]}.gz"
    name.write_bytes(name.read_bytes()[:200])
    with pytest.raises(UsageError, match="damaged or truncated") as error:
        FashionMNISTData(root=str(flat), cache_dir=str(tmp_path / "cache"), num_val=NUM_VAL)
    assert "\n" not in str(error.value)
    assert not [path for path in (tmp_path / "cache").rglob(".*") if path.is_file()]  # no half-written temporary file


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once, whatever the network
    with pytest.raises(UsageError, match="the download failed") as error:
        FashionMNISTData(root=str(tmp_path / "empty"), download=True).setup()
    assert "\n" not in str(error.value)


def test_cli_reports_missing_data_as_error_and_exit_code_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "fashion_mnist_iwae.yaml"), "--data.root", "missing", "--data.download", "false"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Fashion-MNIST not found in 'missing'" in errors[0]
    assert not (tmp_path / "runs").exists()  # stopped before a run folder was made


def test_splits_move_to_the_trainers_device_and_batches_are_drawn_there(flat: Path) -> None:
    # The meta device stands in for a GPU: nothing may silently stay on the CPU.
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0, world_size=1)
    for data in (FashionMNISTData(root=str(flat), cache_dir=str(flat.parent / "cache"), num_val=NUM_VAL), GaussianMixtureData()):
        data.trainer = trainer
        data.setup("fit")
        assert {split.device.type for split in data.splits.values()} == {"meta"}
        assert next(iter(data.train_dataloader())).device.type == "meta"


def test_dataloader_path_keeps_data_on_the_cpu(flat: Path) -> None:
    data = fashion(flat, binarization="dynamic", in_memory=False, batch_size=8)
    loader = data.train_dataloader()
    assert isinstance(loader, DataLoader)
    batches = list(loader)
    assert [len(b) for b in batches] == [8, 8, 8, 6] and batches[0].shape[1] == 784
    assert set(torch.cat(batches).unique().tolist()) == {0.0, 1.0}
    assert torch.cat(list(data.test_dataloader())).equal(data.splits["test"])


@pytest.mark.parametrize("builder, likelihood, params_per_pixel", [(VAE, "bernoulli", 1), (VAE, "gaussian", 2), (MixtureModel, "continuous_bernoulli", 1)])
def test_conv_network_shapes(builder: type, likelihood: str, params_per_pixel: int) -> None:
    model = builder(784, 3, encoder_hidden=(8, 16), decoder_hidden=(16, 8), likelihood=likelihood, network="conv", image_shape=(1, 28, 28))
    x = torch.bernoulli(torch.rand(5, 784))
    q = model.posterior(x)
    z = q.sample((4,))
    assert model.decoder.net(z).shape == (4, 5, 784 * params_per_pixel)
    assert model.decoder(z).event_shape == (784,)
    assert model.log_joint(x, z).shape == (4, 5)


def test_conv_needs_images_that_halve_evenly() -> None:
    with pytest.raises(UsageError, match="needs image data"):
        VAE(784, 2, network="conv")
    with pytest.raises(UsageError, match="divisible by 4"):
        VAE(30 * 30, 2, encoder_hidden=(8, 8), decoder_hidden=(8, 8), network="conv", image_shape=(1, 30, 30))


def test_iwae_config_is_burda_et_als_one_layer_mlp() -> None:
    module = module_from_config(CONFIGS / "fashion_mnist_iwae.yaml", data_dim=784)
    model = module.lvm
    linear = lambda net: [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert linear(model.encoder.net) == [(784, 200), (200, 200), (200, 100)]  # 50 means and 50 log-stds
    assert linear(model.decoder.net) == [(50, 200), (200, 200), (200, 784)]
    assert isinstance(model.decoder.family, BernoulliFamily) and all(isinstance(m, torch.nn.Tanh) for m in model.encoder.net[1::2])
    assert isinstance(module.estimator, ImportanceSampling) and module.estimator.num_samples == 50


def test_active_units_counts_coordinates_whose_mean_varies_over_x() -> None:
    means = torch.randn(10_000, 4) * torch.tensor([1.0, 0.3, 0.05, 0.0]) + 7.0  # variances 1, 0.09, 0.0025, 0
    assert active_units(means) == 2
    assert active_units(means, threshold=0.001) == 3


def test_burda_schedule() -> None:
    starts = [(3**i - 1) // 2 for i in range(8)]  # stage i spans 3^i epochs
    assert starts == [0, 1, 4, 13, 40, 121, 364, 1093] and BURDA_EPOCHS == 3280
    for i, start in enumerate(starts):
        assert burda_lr_factor(start) == pytest.approx(10 ** (-i / 7))
        assert burda_lr_factor(start - 1) == pytest.approx(10 ** (-max(i - 1, 0) / 7))
    assert burda_lr_factor(BURDA_EPOCHS + 10) == pytest.approx(0.1)
    config = LVMModule(MixtureModel(), Exact(), optimizer=partial(Adam, lr=1e-3), lr_scheduler=Burda).configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    for _ in range(4):
        scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3 * 10 ** (-2 / 7))


def test_cosine_schedule_decays_from_lr_to_zero_over_the_runs_steps() -> None:
    class RecordLR(pl.Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    record = RecordLR()
    trainer = pl.Trainer(max_epochs=3, logger=False, callbacks=[record], enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    module = LVMModule(MixtureModel(), Exact(), optimizer=partial(Adam, lr=0.01, eps=1e-4), lr_scheduler=Cosine)
    trainer.fit(module, datamodule=GaussianMixtureData(num_train=200, num_val=50, num_test=50, batch_size=50))
    total = len(record.lrs)
    assert total == 12 and trainer.optimizers[0].param_groups[0]["eps"] == 1e-4
    expected = [0.01 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert record.lrs == pytest.approx(expected) and trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)


def tiny_module(likelihood: str = "bernoulli") -> LVMModule:
    lvm = VAE(784, 2, encoder_hidden=(8, 16), decoder_hidden=(16, 8), likelihood=likelihood, network="conv", image_shape=(1, 28, 28))
    return LVMModule(lvm, ImportanceSampling(2), eval_num_samples=4, optimizer=partial(Adam, lr=1e-3))


def test_grey_levels_take_a_continuous_likelihood_and_refuse_bernoulli(flat: Path, tmp_path: Path) -> None:
    def fit(likelihood: str) -> None:
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
        trainer.fit(tiny_module(likelihood=likelihood), datamodule=fashion(flat, binarization="none", batch_size=10))

    with pytest.raises(UsageError, match="continuous_bernoulli"):
        fit("bernoulli")
    fit("continuous_bernoulli")


def test_callbacks_write_grids_scatter_and_active_units_to_tensorboard(flat: Path, tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="images")
    callbacks = [ImageGrids(num_images=8), LatentScatter(), ActiveUnits()]
    trainer = pl.Trainer(max_epochs=1, logger=logger, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(tiny_module(), datamodule=fashion(flat, batch_size=10))
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (pairs,), (samples,), (scatter,) = (events.Images(tag) for tag in ("images/reconstructions", "images/prior_samples", "latent/test_encodings"))
    # 28-pixel images doubled to 56; 8 pairs to a row, each input 2 pixels from its reconstruction, the pairs 8 apart.
    assert (pairs.width, pairs.height) == (8 * (56 + 2 + 56 + 8) + 8, 56 + 2 * 8)
    assert (samples.width, samples.height) == (8 * (56 + 8) + 8, 56 + 2 * 8)
    assert scatter.width > 100
    (units,) = events.Scalars("val/active_units")
    assert 0 <= units.value <= 2


def test_a_pair_is_the_input_beside_its_reconstruction_with_a_narrower_gap_than_between_pairs() -> None:
    inputs, outputs = torch.zeros(2, 16), torch.full((2, 16), 0.5)  # black inputs, grey reconstructions, 4x4 images
    grid = pair_grid(inputs, outputs, (1, 4, 4), nrow=2)
    row = grid[0, GRID_GAP + 1]  # a line through the first row of pairs
    runs = [(float(value), len(list(group))) for value, group in itertools.groupby(row.tolist())]
    size = DISPLAY_SIZE  # 4 pixels enlarged 16 times
    assert runs == [(1.0, GRID_GAP), (0.0, size), (1.0, PAIR_GAP), (0.5, size), (1.0, GRID_GAP), (0.0, size), (1.0, PAIR_GAP), (0.5, size), (1.0, GRID_GAP)]


def test_pictures_show_the_final_model_when_the_run_is_not_a_multiple_of_the_period(flat: Path, tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="final")
    trainer = pl.Trainer(max_epochs=3, logger=logger, callbacks=[ImageGrids(every_n_epochs=2, num_images=4)], enable_checkpointing=False,
                         enable_progress_bar=False, limit_train_batches=2)  # fmt: skip
    trainer.fit(tiny_module(), datamodule=fashion(flat, batch_size=10))
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Images("images/reconstructions")] == [4, 6]  # after epoch 2 and after the last, epoch 3


def test_image_callbacks_leave_training_bit_identical(flat: Path) -> None:
    def trained(callbacks: list[pl.Callback]) -> torch.Tensor:
        pl.seed_everything(0)
        module = tiny_module()
        logger = TensorBoardLogger(str(flat.parent / "runs"))
        trainer = pl.Trainer(max_epochs=2, logger=logger, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False)
        trainer.fit(module, datamodule=fashion(flat, batch_size=10))
        return torch.cat([p.flatten() for p in module.parameters()])

    assert torch.equal(trained([]), trained([ImageGrids(num_images=4), LatentScatter(), ActiveUnits()]))


def test_callbacks_are_harmless_on_non_image_data(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="mixture")
    callbacks = [ImageGrids(), LatentScatter(), ActiveUnits()]
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=logger, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(LVMModule(MixtureModel(), Exact()), datamodule=GaussianMixtureData(num_train=200, num_val=50, num_test=50))
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Tags()["images"] == [] and "val/active_units" not in events.Tags()["scalars"]


@pytest.mark.parametrize("config", sorted(path.stem for path in CONFIGS.glob("*mnist*.yaml")))
def test_image_configs_train_through_the_cli_on_a_flat_folder(config: str, flat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = ["--data.root", str(flat), "--data.cache_dir", str(tmp_path / "cache"), "--data.num_val", str(NUM_VAL), "--data.batch_size", "10"]
    quick = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--model.eval_num_samples", "3"]
    main(["fit", "--config", str(CONFIGS / f"{config}.yaml"), *overrides, *quick])
    (checkpoint,) = (tmp_path / "runs" / config).glob("version_0/checkpoints/last.ckpt")
    module = LVMModule.load_from_checkpoint(checkpoint)
    estimator = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]["estimator"]
    assert module.lvm.decoder.family.num_params == 784 and type(module.estimator).__name__ == estimator["class_path"].rsplit(".", 1)[1]
    assert getattr(module.estimator, "num_samples", None) == estimator["init_args"].get("num_samples")


def test_a_cosine_schedule_on_a_run_without_an_end_is_one_line() -> None:
    trainer = pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    module = LVMModule(MixtureModel(), Exact(), lr_scheduler=Cosine)
    with pytest.raises(UsageError, match="max_steps"):
        trainer.fit(module, datamodule=GaussianMixtureData(num_train=200, num_val=50, num_test=50, batch_size=50))
