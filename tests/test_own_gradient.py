"""A gradient estimator of the user's own, from a file outside the repository: named in YAML, it trains, is stored in the
checkpoint by class path, and reloads only when its module is trusted."""

import pytest
import torch

from lvm_lightning import LVMModule
from lvm_lightning.cli import main
from lvm_lightning.errors import UsageError

QUICK = ["--trainer.enable_progress_bar", "false", "--data.num_train", "200", "--data.num_val", "100", "--data.num_test", "100",
         "--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0", "--trainer.max_epochs", "1"]  # fmt: skip

USER_MODULE = '''
"""REINFORCE: the score function of the bound with no baseline."""
import torch

from lvm_lightning.objectives import GradientEstimator, Objective


class Reinforce(GradientEstimator):
    """L_hat times the sum over k of grad log q(z_k), plus the bound's own gradient: VIMCO without its baselines."""

    reparameterized = False

    def objective(self, bound, model, x, q, detached, frozen=False):
        def draw(k):
            z = q.sample((k,))
            log_q = q.log_prob(z)
            return torch.stack([model.log_joint(x, z, frozen) - log_q, log_q], -1)

        log_weights, log_q = bound.draw_all(draw, len(x)).unbind(-1)
        log_px = bound.reduce(log_weights)
        signal = (log_px.detach() * log_q).sum(0)
        return Objective(log_px + signal - signal.detach(), log_px)
'''

CONFIG = """
model:
  estimator:
    class_path: lvm_lightning.objectives.ImportanceSampling
    init_args: {num_samples: 4, gradient: {class_path: my_gradients.Reinforce}}
"""


def test_a_users_gradient_estimator_trains_and_reloads_when_trusted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_gradients.py").write_text(USER_MODULE)
    (tmp_path / "reinforce.yaml").write_text(CONFIG)
    main(["fit", "--config", "reinforce.yaml", *QUICK])
    checkpoint = tmp_path / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    stored = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["estimator"]["init_args"]["gradient"]
    assert stored["class_path"] == "my_gradients.Reinforce"
    with pytest.raises(UsageError, match="--trust my_gradients"):
        LVMModule.load_from_checkpoint(checkpoint)
    module = LVMModule.load_from_checkpoint(checkpoint, trusted=["my_gradients"])
    assert type(module.estimator.gradient).__name__ == "Reinforce"
    x = torch.randn(8, 2)
    objective = module.estimator.objective(module.lvm, x)
    (grad,) = torch.autograd.grad(objective.surrogate.sum(), [next(module.lvm.encoder.parameters())])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
