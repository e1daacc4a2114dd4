"""bf16 networks: the nets' products in bfloat16, every density, log-weight and sum in float32, close to float32 on the same draws."""

import torch

from lvm_lightning.models import VAE
from lvm_lightning.objectives import ImportanceSampling


def test_bf16_networks_keep_densities_in_float32_and_stay_within_a_twentieth_of_a_nat_of_float32():
    torch.manual_seed(0)
    model = VAE(784, 20, (200, 200), (200, 200), "tanh", "bernoulli")
    x = torch.bernoulli(torch.full((64, 784), 0.3))
    estimates = {}
    for bf16 in (False, True):
        model.networks_in_bf16(bf16)
        q = model.posterior(x)
        assert q.mean.dtype == torch.float32 and model.likelihood(q.sample()).base_dist.logits.dtype == torch.float32
        torch.manual_seed(1)
        with torch.no_grad():
            estimates[bf16] = ImportanceSampling(100).estimate(model, x).log_px
    assert estimates[True].dtype == torch.float32
    difference = (estimates[True] - estimates[False]).abs()
    assert 0 < float(difference.max()) < 0.05  # rounded, and by little: 784 pixels' logits in bf16 summed in float32


def test_bf16_networks_train_float32_parameters():
    torch.manual_seed(0)
    model = VAE(8, 2, (16,), (16,))
    model.networks_in_bf16()
    loss = -ImportanceSampling(5).objective(model, torch.randn(32, 8)).surrogate.mean()
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
