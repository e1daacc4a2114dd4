"""What each part of a LatentVariableModel must return, checked once at construction with one line naming the part."""

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError

TRIAL = 1  # one draw of z from the prior, the only random numbers the check takes from the model's stream


def _call(part: str, function: Callable[[], Any], takes: str) -> Any:
    """``function()`` for the named part; any exception becomes one line naming the part and what it was given."""
    try:
        with torch.no_grad():
            return function()
    except UsageError:
        raise
    except Exception as error:
        raise UsageError(f"the {part} failed on {takes}: {type(error).__name__}: {str(error)[:200]}") from None


def _distribution(part: str, value: Any, returns: str) -> Distribution:
    """``value`` if it is a torch Distribution; else UsageError saying what the part must return."""
    if not isinstance(value, Distribution):
        raise UsageError(f"the {part} must return a torch.distributions.Distribution ({returns}), but returned a {type(value).__name__}")
    return value


def check_parts(prior: nn.Module, decoder: nn.Module, encoder: nn.Module, data_dim: Optional[int]) -> tuple[int, ...]:
    """Checks p(z) = prior(), p_θ(x|z) = decoder(z) and q_φ(z|x) = encoder(x) return distributions of fitting shapes; the decoder's event shape."""
    p_z = _distribution("prior", _call("prior", prior, "no arguments"), "p(z), e.g. Independent(Normal(0, 1), 1)")
    z = _call("prior", lambda: p_z.sample((TRIAL,)), "sample((1,))")
    returned = _call("decoder", lambda: decoder(z), f"z of shape {tuple(z.shape)} from the prior")
    p_x = _distribution("decoder", returned, "p(x|z) with one event dimension, e.g. Independent(Bernoulli(logits=...), 1)")
    rows = tuple(p_x.event_shape)
    if not rows:
        raise UsageError(
            f"the decoder returned a {type(p_x).__name__} with batch shape {tuple(p_x.batch_shape)} and no event dimension: "
            "wrap it as torch.distributions.Independent(d, 1), so that log_prob sums over a row's columns"
        )
    if data_dim is not None and rows != (data_dim,):
        raise UsageError(f"the decoder gives rows of shape {rows} but the data have {data_dim} columns: set its output size to {data_dim}")
    with torch.random.fork_rng(devices=[]):  # the draws of the check beyond the prior's leave the model's random stream as it was
        x = _call("decoder", lambda: p_x.sample(), "sample()")
        q = _distribution("encoder", _call("encoder", lambda: encoder(x), f"x of shape {tuple(x.shape)}"), "q(z|x)")
    if tuple(q.event_shape) != tuple(p_z.event_shape):
        raise UsageError(
            f"the encoder's q(z|x) has event shape {tuple(q.event_shape)} but the prior's p(z) has {tuple(p_z.event_shape)}: make them the same "
            "(wrap a per-coordinate distribution as Independent(d, 1))"
        )
    return rows
