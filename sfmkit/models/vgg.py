"""VGG16 convolution trunk that returns the intermediate maps dense matching needs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

#: (name, in_channels, out_channels) of VGG16's convolutions up to conv4_3, in order;
#: a 2x2/2 max-pooling follows conv1_2, conv2_2, conv3_3 and conv4_3.
VGG16_CONVS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
)
#: The fifth block, built only for global descriptors (``VGG16Trunk(conv5=True)``); its
#: output ``conv5_3`` (after ReLU, no pool5) is at 1/16 of the input resolution.
VGG16_CONV5: tuple[tuple[str, int, int], ...] = (
    ("conv5_1", 512, 512),
    ("conv5_2", 512, 512),
    ("conv5_3", 512, 512),
)
_POOL_AFTER = {"conv1_2": "pool1", "conv2_2": "pool2", "conv3_3": "pool3", "conv4_3": "pool4"}
#: Every map the trunk can return, from finest to coarsest.
LAYERS = ("conv1_2", "pool1", "pool2", "pool3", "pool4")
#: The same plus conv5_3, for a trunk built with ``conv5=True``.
LAYERS_CONV5 = (*LAYERS, "conv5_3")


@dataclass(frozen=True)
class InputNorm:
    """How a weight set expects its input.

    Attributes:
        bgr: channels in BGR order (Caffe-trained weights).
        scale: multiply 0..255 pixel values by this first.
        mean, std: then subtract ``mean`` and divide by ``std`` (per channel, in network order).
    """

    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: Caffe VGG16 (and weights derived from it): BGR, 0..255, ImageNet mean subtracted.
CAFFE_NORM = InputNorm(True, 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
#: torchvision's ImageNet weights: RGB in 0..1, standardised.
TORCHVISION_NORM = InputNorm(False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class VGG16Trunk(nn.Module):
    """VGG16 convolutions conv1_1 .. conv4_3 with ReLU and max-pooling.

    ``forward`` returns the requested maps among :data:`LAYERS`: ``conv1_2`` is the ReLU
    output at full resolution, ``poolK`` the max-pooling outputs at 1/2^K resolution
    (sizes are floored, as in VGG).

    Args:
        norm: the input normalisation the loaded weights expect.
        conv5: also build conv5_1 .. conv5_3, so ``conv5_3`` can be returned.
    """

    def __init__(self, norm: InputNorm = CAFFE_NORM, conv5: bool = False) -> None:
        super().__init__()
        self.specs = VGG16_CONVS + (VGG16_CONV5 if conv5 else ())
        self.layers = LAYERS_CONV5 if conv5 else LAYERS
        self.convs = nn.ModuleDict(
            {name: nn.Conv2d(cin, cout, kernel_size=3, padding=1) for name, cin, cout in self.specs}
        )
        self.norm = norm
        self.register_buffer("_mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB float in 0..255 -> the network's input."""
        if self.norm.bgr:
            image = image.flip(1)
        return (image * self.norm.scale - self._mean) / self._std

    def forward(
        self,
        image: torch.Tensor,
        layers: tuple[str, ...] = LAYERS,
        low_precision: tuple[str, torch.dtype] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Args:
            image: (B, 3, H, W) float RGB in 0..255.
            layers: which maps to return.
            low_precision: (first convolution, dtype): from that convolution on, run under
                autocast to dtype (e.g. ``("conv3_1", torch.bfloat16)``); the maps returned
                from there on are in that dtype.

        Returns:
            dict layer name -> (B, C, H / 2^k, W / 2^k) tensor.
        """
        unknown = set(layers) - set(self.layers)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; choose among {self.layers}")
        last = max(self.layers.index(name) for name in layers)
        if low_precision is not None and low_precision[0] not in self.convs:
            raise ValueError(f"unknown convolution {low_precision[0]!r}")
        x = self.normalize(image)
        out: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as scope:
            for name, _, _ in self.specs:
                if low_precision is not None and name == low_precision[0]:
                    scope.enter_context(torch.autocast(image.device.type, dtype=low_precision[1]))
                x = torch.relu(self.convs[name](x))
                if name in ("conv1_2", "conv5_3") and name in layers:
                    out[name] = x
                if name == "conv5_3":
                    break
                pool = _POOL_AFTER.get(name)
                if pool is not None:
                    x = nn.functional.max_pool2d(x, kernel_size=2, stride=2)
                    if pool in layers:
                        out[pool] = x
                    if self.layers.index(pool) >= last:
                        break
        return out
