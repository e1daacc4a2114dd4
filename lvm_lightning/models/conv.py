"""Small convolutional encoder and decoder for flattened images [..., C·H·W], any number of leading dimensions.

Each of the n layers halves (encoder) or doubles (decoder) the height and width with a 4×4 kernel,
stride 2 and padding 1, so H and W must be multiples of 2^n.
"""

from typing import Sequence

from torch import Tensor, nn

from lvm_lightning.errors import UsageError
from lvm_lightning.models.networks import activation


def _reduced_size(image_shape: Sequence[int], num_layers: int) -> tuple[int, int]:
    """(H, W) / 2^num_layers, the feature map's size between the convolutions and the linear layer."""
    if len(image_shape) != 3:
        raise UsageError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    _, height, width = image_shape
    factor = 2**num_layers
    if height % factor or width % factor:
        raise UsageError(f"the conv network needs H and W divisible by {factor}, got image_shape {tuple(image_shape)}")
    return height // factor, width // factor


class ConvEncoder(nn.Module):
    """params = L(σ(conv_n(… σ(conv_1(x))))): stride-2 convolutions with ``channels`` outputs, then one linear layer."""

    def __init__(self, image_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64), act: str = "relu") -> None:
        super().__init__()
        height, width = _reduced_size(image_shape, len(channels))
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([image_shape[0], *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), activation(act)]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(channels[-1] * height * width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        features = self.convs(x.reshape(-1, *self.image_shape)).flatten(1)
        return self.linear(features).reshape(*x.shape[:-1], -1)


class ConvDecoder(nn.Module):
    """params = deconv_n(σ(… deconv_1(σ(L z)))): a linear layer to a (channels[0], H/2^n, W/2^n) map, then stride-2 transposed convolutions.

    The last layer has out_features / (H·W) channels, so that the flattened output lists one
    channel after another, the order in which the families split their parameters (e.g. μ, then log σ).
    With ``categorical_input`` z is an index and L a lookup table, as in ``mlp``.
    """

    def __init__(
        self,
        in_features: int,
        image_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (64, 32),
        act: str = "relu",
        categorical_input: bool = False,
    ) -> None:
        super().__init__()
        height, width = _reduced_size(image_shape, len(channels))
        pixels = image_shape[1] * image_shape[2]
        if out_features % pixels:
            raise UsageError(f"the decoder's {out_features} parameters do not split into channels of {pixels} pixels")
        self.map_shape = (channels[0], height, width)
        size = channels[0] * height * width
        first = nn.Embedding(in_features, size) if categorical_input else nn.Linear(in_features, size)
        self.linear = nn.Sequential(first, activation(act))
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), activation(act)]
        layers.append(nn.ConvTranspose2d(channels[-1], out_features // pixels, 4, stride=2, padding=1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        features = self.linear(z)
        lead = features.shape[:-1]
        return self.deconvs(features.reshape(-1, *self.map_shape)).reshape(*lead, -1)
