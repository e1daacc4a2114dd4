"""Plain multilayer perceptrons built from config values."""

from typing import Sequence

from torch import nn

from lvm_lightning.errors import UsageError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU, "softplus": nn.Softplus}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (relu, tanh, elu, gelu, silu, softplus)."""
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(in_features: int, out_features: int, hidden: Sequence[int] = (), act: str = "relu", categorical_input: bool = False) -> nn.Sequential:
    """y = L_n(σ(… σ(L_1 x))): layers of widths ``hidden`` with activation σ between them.

    With ``categorical_input`` the input is an index in {0, …, in_features−1} and L_1 is a lookup
    table (one-hot times a matrix); with no hidden layers that table *is* the output, one parameter
    vector per category, as in a mixture model.
    """
    widths = [*hidden, out_features]
    if min(in_features, *widths) < 1:
        raise UsageError(f"layer widths must be >= 1, got input {in_features}, hidden {list(hidden)}, output {out_features}: pass e.g. [200, 200]")
    first = nn.Embedding(in_features, widths[0]) if categorical_input else nn.Linear(in_features, widths[0])
    layers: list[nn.Module] = [first]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [activation(act), nn.Linear(a, b)]
    return nn.Sequential(*layers)
