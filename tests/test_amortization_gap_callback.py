"""The AmortizationGap callback: logs gap/… to TensorBoard and leaves training exactly as it would have been."""

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lvm_lightning.callbacks import AmortizationGap
from lvm_lightning.callbacks.amortization_gap import refinement_figure
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.inference import AIS, LocalOptimizer
from lvm_lightning.models import VAE, MixtureModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact, ImportanceSampling
from lvm_lightning.schedules import Adam

from conftest import gap_callback, quiet_trainer

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class RandomStart(VAE):
    """A VAE that keeps its random start (no data start): after two epochs on data in their own units its decoder still bends
    the posterior out of the Gaussian family, where the data start would leave it the data's own Gaussian, whose posterior is the prior."""

    def initialize(self, x: torch.Tensor) -> None:
        pass


def fit(tmp_path, callbacks: list, name: str, model: type = VAE) -> tuple[pl.Trainer, LVMModule]:
    """Two epochs of a small Gaussian-latent model (sampling draws from the training RNG) on mixture data."""
    pl.seed_everything(0)
    data = GaussianMixtureData(num_clusters=4, num_train=256, num_val=64, num_test=64, batch_size=64, standardize=model is VAE)
    module = LVMModule(model(2, 2, encoder_hidden=(16,), decoder_hidden=(16,)), ImportanceSampling(4), eval_num_samples=8)
    trainer = quiet_trainer(max_epochs=2, logger=TensorBoardLogger(str(tmp_path), name=name), callbacks=callbacks, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    return trainer, module


def test_training_is_bit_identical_with_the_callback_and_gaps_reach_tensorboard(tmp_path):
    _, plain = fit(tmp_path, [], "plain")
    trainer, tracked = fit(tmp_path, [gap_callback()], "tracked")
    for (name, a), b in zip(plain.state_dict().items(), tracked.state_dict().values()):
        assert torch.equal(a, b), name
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"gap/elbo_amortized", "gap/elbo_optimized", "gap/log_px", "gap/amortization_gap", "gap/approximation_gap"}
    expected |= {"gap/seconds_per_point_amortized", "gap/seconds_per_point_optimized", "gap/q_star/mean_steps", "gap/q_star/converged_fraction"}
    expected |= {f"gap/{gap}/{part}" for gap in ("amortization_gap", "approximation_gap") for part in ("stderr", "lower", "upper")}
    assert expected <= tags
    assert not [tag for tag in tags if "refined_elbo" in tag]  # the refinement curve is a figure, not a tag per k
    assert len(events.Scalars("gap/amortization_gap")) == 2  # every epoch
    assert len(events.Images("gap/refinement")) == 2  # the refinement curve as a figure
    for name in ("elbo_amortized", "elbo_optimized", "log_px"):
        assert all(torch.isfinite(torch.tensor(e.value)) for e in events.Scalars(f"gap/{name}"))


def test_one_evaluation_leaves_weights_optimizer_and_rng_bit_identical(tmp_path):
    trainer, module = fit(tmp_path, [], "direct")
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = trainer.optimizers[0].state_dict()
    moments = {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer["state"].items()}
    rng = torch.get_rng_state()
    module.train()
    callback = gap_callback()
    callback.setup(trainer, module, "fit")
    callback.on_train_epoch_end(trainer, module)
    assert torch.equal(torch.get_rng_state(), rng)
    assert module.training and all(m.training for m in module.modules())
    for name, value in module.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert all(p.grad is None for p in module.parameters())
    after = trainer.optimizers[0].state_dict()["state"]
    for key, state in moments.items():
        for name, value in state.items():
            assert torch.equal(after[key][name], value), (key, name)


def test_evaluate_reports_the_decomposition_and_refinement_curve(tmp_path, monkeypatch):
    from lvm_lightning.cli import main
    from lvm_lightning.evaluate import evaluate_checkpoint

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "mixture_vae.yaml"), "--trainer.max_steps", "20", "--trainer.enable_progress_bar", "false",
          "--trainer.limit_val_batches", "1", "--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0"])  # fmt: skip
    checkpoint = tmp_path / "runs" / "mixture_vae" / "version_0" / "checkpoints" / "last.ckpt"
    report = evaluate_checkpoint(str(checkpoint), num_samples=64, gap_points=16, gap=LocalOptimizer(max_steps=60))
    gaps = report["gaps"]
    torch.testing.assert_close(gaps["amortization_gap"], gaps["elbo_optimized"] - gaps["elbo_amortized"])
    torch.testing.assert_close(gaps["approximation_gap"], gaps["log_px"] - gaps["elbo_optimized"])
    assert gaps["num_points"] == 16 and gaps["log_px_method"] == "importance sampling from q*, K=64"
    assert gaps["refinement"]["k"] == [0, 1, 2, 5, 10, 20, 50] and len(gaps["refinement"]["elbo"]) == 7
    assert gaps["seconds_per_point_optimized"] > gaps["seconds_per_point_amortized"] > 0


def gaps_logged(tmp_path, devices: int) -> dict[str, float]:
    """gap/… after one epoch at lr 0 (weights stay at their seeded init) of a categorical model, on 1 or 2 CPU processes."""
    pl.seed_everything(0)
    data = GaussianMixtureData(num_clusters=4, num_train=256, num_val=64, num_test=64, batch_size=64)
    module = LVMModule(MixtureModel(2, 6, encoder_hidden=(16,)), Exact(), optimizer=partial(Adam, lr=0.0))
    callback = AmortizationGap(every_n_epochs=1, num_points=33, optimizer=LocalOptimizer(max_steps=40, lr=0.1), refine_steps=(0, 10))
    trainer = pl.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name=f"devices{devices}"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    events = EventAccumulator(str(tmp_path / f"devices{devices}" / "version_0"))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("gap/") and "seconds" not in tag}


def test_ddp_ranks_take_shards_and_reduce_to_the_single_process_result(tmp_path):
    # A categorical z makes every quantity exact (enumerated ELBO and log p(x)): only summation order differs.
    single, shared = gaps_logged(tmp_path, 1), gaps_logged(tmp_path, 2)
    assert single.keys() == shared.keys() and "gap/amortization_gap" in single
    for tag, value in single.items():
        assert abs(shared[tag] - value) < 1e-4 * max(1.0, abs(value)), (tag, value, shared[tag])


def test_the_gaps_log_px_by_ais_from_q_star(tmp_path):
    """With ``ais`` the callback's log p(x) is AIS from q*: a stochastic lower bound near IWAE's, above ELBO(q*) on average."""
    callback = gap_callback()
    callback.ais = AIS(num_steps=50, num_chains=4, leapfrog_steps=2)
    trainer, _ = fit(tmp_path, [callback], "ais", RandomStart)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    log_px, elbo_optimized = (events.Scalars(f"gap/{name}")[-1].value for name in ("log_px", "elbo_optimized"))
    assert elbo_optimized < log_px < elbo_optimized + 1.0


def test_a_second_family_is_logged_beside_the_encoders(tmp_path):
    """family 'full': gap/full/… on the same decoder; the full-covariance q* holds the diagonal one, so its ELBO(q*) is not lower."""
    callback = gap_callback()
    callback.family = "full"
    trainer, _ = fit(tmp_path, [callback], "family")
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    last = {tag: events.Scalars(tag)[-1].value for tag in ("gap/elbo_optimized", "gap/full/elbo_optimized", "gap/elbo_amortized", "gap/full/elbo_amortized")}
    assert last["gap/full/elbo_optimized"] > last["gap/elbo_optimized"] - 0.05
    assert last["gap/full/elbo_amortized"] == pytest.approx(last["gap/elbo_amortized"], abs=0.1)  # one q_φ, re-expressed


def test_the_final_model_is_measured_when_the_run_is_not_a_multiple_of_the_period(tmp_path):
    """every_n_epochs 2 over 3 epochs: after epoch 2 (the period counts epochs from 1) and after the last, at its final step."""
    callback = gap_callback()
    callback.every_n_epochs = 2
    pl.seed_everything(0)
    data = GaussianMixtureData(num_clusters=4, num_train=256, num_val=64, num_test=64, batch_size=64, standardize=True)
    module = LVMModule(VAE(2, 2, encoder_hidden=(16,), decoder_hidden=(16,)), ImportanceSampling(4), eval_num_samples=8)
    trainer = quiet_trainer(max_epochs=3, logger=TensorBoardLogger(str(tmp_path), name="final"), callbacks=[callback], enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("gap/amortization_gap")] == [8, 12]  # 4 steps an epoch
    assert [event.step for event in events.Images("gap/refinement")] == [8, 12]


def test_the_refinement_figure_shows_gains_over_q_phi_with_paired_errors_on_a_log_axis():
    summary = {"amortization_gap": 0.5, "amortization_gap_stderr": 0.01, "gain/k=1": 0.1, "gain/k=1_stderr": 0.02}
    summary |= {"gain/k=0": 0.0, "gain/k=0_stderr": 0.0, "gain/k=10": 0.4, "gain/k=10_stderr": 0.03}
    fig = refinement_figure(summary, [0, 1, 10], epoch=3)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylim()[0] > -0.1  # no negative side: k = 0 is the line at 0, the gains are >= 0 here
    (curve,) = [line for line in ax.get_lines() if len(line.get_xdata()) > 2 or line.get_marker() == "o"]
    assert list(curve.get_xdata()) == [1, 10] and list(curve.get_ydata()) == [0.1, 0.4]
    legend = ax.get_legend()
    fig.canvas.draw()
    legend_box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert legend_box.x0 >= axes_box.x1  # beside the axes, never over the curve
