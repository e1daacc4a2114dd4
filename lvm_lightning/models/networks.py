"""Plain multilayer perceptrons built from config values."""

from typing import Sequence

import torch
from torch import Tensor, nn

from lvm_lightning.errors import UsageError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU, "softplus": nn.Softplus}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (relu, tanh, elu, gelu, silu, softplus)."""
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class CategoricalEmbedding(nn.Module):
    """y = Σ_m E_m[z_m] for z ∈ {0, …, C−1}^M, [..., M] → [..., width]: one-hot(z) times a matrix, without the one-hot."""

    def __init__(self, num_variables: int, num_categories: int, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_variables * num_categories, width)
        self.register_buffer("offsets", torch.arange(num_variables) * num_categories, persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.table(z + self.offsets).sum(-2)


def mlp(
    in_features: int, out_features: int, hidden: Sequence[int] = (), act: str = "relu", categorical_input: bool = False, num_variables: int = 0
) -> nn.Sequential:
    """y = L_n(σ(… σ(L_1 x))): layers of widths ``hidden`` with activation σ between them.

    With ``categorical_input`` the input is an index in {0, …, in_features−1} and L_1 is a lookup
    table (one-hot times a matrix); with no hidden layers that table *is* the output, one parameter
    vector per category, as in a mixture model. With ``num_variables`` M ≥ 1 as well the input is
    M such indices [..., M] and L_1 sums one table row per variable (``CategoricalEmbedding``).
    """
    widths = [*hidden, out_features]
    if min(in_features, *widths) < 1:
        raise UsageError(f"layer widths must be >= 1, got input {in_features}, hidden {list(hidden)}, output {out_features}: pass e.g. [200, 200]")
    if categorical_input and num_variables:
        first: nn.Module = CategoricalEmbedding(num_variables, in_features, widths[0])
    else:
        first = nn.Embedding(in_features, widths[0]) if categorical_input else nn.Linear(in_features, widths[0])
    layers: list[nn.Module] = [first]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [activation(act), nn.Linear(a, b)]
    return nn.Sequential(*layers)
