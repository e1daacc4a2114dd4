"""Lightning's DDP on two CPU processes (gloo) gives the numbers of one process: validation, evaluation, resume."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lvm_lightning import evaluate
from lvm_lightning.callbacks.random_state import RandomState
from lvm_lightning.cli import main
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.errors import UsageError
from lvm_lightning.estimates import estimate_batches
from lvm_lightning.evaluate import check_device, evaluate_checkpoint
from lvm_lightning.models import MixtureModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact, evaluation_estimators
from lvm_lightning.sharded import sharded_estimates

from conftest import quiet_trainer

# 101 validation points in batches of 10: 11 batches, 6 on rank 0 and 5 on rank 1, the last of one point.
DATA = {"num_clusters": 4, "num_train": 64, "num_val": 101, "num_test": 101, "batch_size": 32, "eval_batch_size": 10}


def validation_metrics(devices: int, in_memory: bool = True, eval_batch_size: int = 10) -> dict[str, float]:
    """trainer.validate's metrics for a fixed seeded mixture model, on 1 process or on ``devices`` CPU processes (ddp_spawn)."""
    torch.manual_seed(0)
    module = LVMModule(MixtureModel(2, 4, encoder_hidden=(16,)), Exact(), eval_num_samples=5)
    data = GaussianMixtureData(**{**DATA, "eval_batch_size": eval_batch_size})
    data.in_memory = in_memory
    strategy = "ddp_spawn" if devices > 1 else "auto"
    (metrics,) = quiet_trainer(devices=devices, strategy=strategy, logger=False, inference_mode=False).validate(module, datamodule=data)
    return metrics


def test_ddp_validation_is_the_one_process_mean_over_the_whole_split(one_thread):
    single = validation_metrics(1)
    # The oracle of the exact estimate, independent of batching and seeds: the mean of log p(x) over all 101 points.
    torch.manual_seed(0)
    model, data = MixtureModel(2, 4, encoder_hidden=(16,)), GaussianMixtureData(**DATA)
    data.setup()
    with torch.no_grad():
        assert single["val/log_px/exact"] == pytest.approx(Exact().estimate(model, data.splits["val"]).log_px.mean().item(), rel=1e-6)
    sampled = {"val/log_px/prior_sampling", "val/log_px/importance_sampling", "val/log_px/elbo", "val/ess_fraction/importance_sampling", "val/log_px"}
    assert sampled <= single.keys()
    shared = validation_metrics(2)
    assert shared.keys() == single.keys()
    for key, value in single.items():
        assert shared[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_validation_of_fewer_batches_than_ranks_not_in_memory(one_thread):
    """One batch of 101 points for two ranks, served from the CPU: cut into one batch per rank, every point once."""
    single, shared = validation_metrics(1, eval_batch_size=200), validation_metrics(2, in_memory=False, eval_batch_size=200)
    assert shared.keys() == single.keys()
    assert shared["val/log_px/exact"] == pytest.approx(single["val/log_px/exact"], rel=1e-6)  # the sampled ones draw other samples


def test_an_eval_split_is_dealt_in_whole_batches_each_point_once():
    data = GaussianMixtureData(**DATA)
    data.setup()
    one = list(GaussianMixtureData(**DATA).val_dataloader())
    for in_memory in (True, False):
        data.in_memory = in_memory
        dealt = [list(loader(data, rank, 3, "val")) for rank in range(3)]
        # Rank r holds batches r, r + 3, … of the one-process sequence, whole and in order.
        assert [len(batches) for batches in dealt] == [4, 4, 3]
        for index, batch in enumerate(one):
            assert torch.equal(dealt[index % 3][index // 3], batch)
    data.eval_batch_size = 200  # one batch for two ranks: one batch each, every point once
    halves = [list(loader(data, rank, 2, "val")) for rank in range(2)]
    assert [[len(batch) for batch in batches] for batches in halves] == [[51], [50]]
    assert torch.equal(torch.cat([halves[0][0], halves[1][0]]), data.splits["val"])
    with pytest.raises(UsageError, match="101 points cannot be shared among 102 processes"):
        loader(data, 0, 102, "val")


def loader(data: GaussianMixtureData, rank: int, world_size: int, split: str) -> Any:
    """``split``'s loader as rank ``rank`` of ``world_size`` sees it."""
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    try:
        return getattr(data, f"{split}_dataloader")()
    finally:
        data.trainer = None


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """Two runs of train.py's CLI on two CPU processes: 2 epochs straight, keeping each epoch's checkpoint; and a run resumed
    from the first epoch's (what a run killed after it leaves) to 2 epochs, in a folder of its own."""
    cwd = tmp_path_factory.mktemp("ddp")
    common = [
        "--trainer.strategy",
        "ddp_spawn",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        "2",
        "--checkpoint.save_top_k",
        "-1",
        "--model.estimator",
        "lvm_lightning.objectives.ImportanceSampling",
        "--model.estimator.num_samples",
        "3",
        *("--data.num_train", "256", "--data.num_val", "101", "--data.num_test", "1001", "--data.batch_size", "32", "--data.eval_batch_size", "10"),
        *("--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0"),
    ]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        torch.set_num_threads(1)
        main(["fit", "--trainer.logger.init_args.name", "straight", *common])
        (first,) = (cwd / "runs" / "straight" / "version_0" / "checkpoints").glob("epoch=0-*.ckpt")
        main(["fit", "--trainer.logger.init_args.name", "resumed", "--ckpt_path", str(first), *common])
    torch.set_num_threads(threads)
    return cwd / "runs"


def tensors(value: Any, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts and lists, by its path."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else []
    return {name: tensor for key, item in items for name, tensor in tensors(item, f"{path}/{key}").items()}


def test_a_resumed_ddp_run_ends_bit_identical_to_the_uninterrupted_one(ddp_runs):
    straight = torch.load(ddp_runs / "straight" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(ddp_runs / "resumed" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert straight["epoch"] == resumed["epoch"] == 1
    # Resumed, not started afresh (which would also repeat the straight run): it wrote no checkpoint of the first epoch.
    written = sorted(path.name for path in (ddp_runs / "resumed" / "version_0" / "checkpoints").iterdir())
    assert len(written) == 2 and written[0].startswith("epoch=1-") and written[1] == "last.ckpt", written
    # One RNG state per rank, and the ranks' streams differ: rank 1 does not draw rank 0's samples.
    states = straight["rng_state"]["cpu"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])
    left, right = (
        tensors({k: straight[k] for k in ("state_dict", "optimizer_states", "rng_state")}),
        tensors({k: resumed[k] for k in ("state_dict", "optimizer_states", "rng_state")}),
    )
    assert left.keys() == right.keys() and len(left) > 5
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def test_an_old_single_rng_state_still_resumes(tmp_path, one_thread):
    """A checkpoint from before per-rank states holds one [n] state: every rank takes it, as then."""
    module = LVMModule(MixtureModel(2, 4, encoder_hidden=(16,)), Exact())
    torch.manual_seed(7)
    state = torch.get_rng_state()
    expected = torch.rand(3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, logger=False, enable_checkpointing=False)
    callback = RandomState()
    callback.on_load_checkpoint(trainer, module, {"rng_state": {"cpu": state}})
    torch.manual_seed(0)
    callback.on_train_start(trainer, module)
    assert torch.equal(torch.rand(3), expected)


def test_distributed_evaluation_equals_one_process_per_point(ddp_runs, one_thread, monkeypatch):
    checkpoint = str(ddp_runs / "straight" / "version_0" / "checkpoints" / "last.ckpt")
    shards = []

    def recorded(*args: Any) -> Any:
        shards.append(sharded_estimates(*args))
        return shards[-1]

    monkeypatch.setattr(evaluate, "sharded_estimates", recorded)
    one, two = (evaluate_checkpoint(checkpoint, num_samples=7, batch_size=10, gap_points=0, seed=3, devices=devices) for devices in (1, 2))
    assert two["cost"]["devices"] == 2 and one["estimates"].keys() == two["estimates"].keys()
    for name, entry in one["estimates"].items():
        assert two["estimates"][name] == pytest.approx(entry, rel=1e-6), name
    # Per point: the 2-process batches against the one-process ones on the same test split, model and seed.
    model = LVMModule.load_from_checkpoint(checkpoint).lvm.eval()
    data = GaussianMixtureData(num_train=256, num_val=101, num_test=1001)
    data.setup()
    single = estimate_batches(model, data.splits["test"], evaluation_estimators(model, 7), 10, seed=3)
    ((shared, _, _),) = shards
    assert len(shared) == len(single) == 101  # pickled, more than the 64 KiB of a pipe
    for index, batch in enumerate(shared):
        for name, result in batch.items():
            torch.testing.assert_close(result.log_px, single[index][name].log_px, rtol=1e-6, atol=1e-6)
            for key, value in result.diagnostics.items():
                torch.testing.assert_close(value, single[index][name].diagnostics[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device, devices, message", [("cpu", 0, "--devices must be >= 1"), ("cpu", 10_000, "CPU cores: pass --devices")])
def test_bad_devices_are_one_line(device, devices, message):
    with pytest.raises(UsageError, match=message):
        check_device(device, devices)
