"""The model file format shared by sfmkit's trained networks: a torch pickle of plain tensors and
dicts (readable with ``weights_only=True``)::

    {"format": 1, "kind": str, "version": int, "arch": {...}, "state": {...}, "card": {...}}

``version`` is the network version of the module that made it; a file of another version is
refused with a hint to retrain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfmkit.errors import SfmkitError
from sfmkit.utils.files import torch_save_atomic

MODEL_FORMAT = 1


def save_model_file(
    path: Path, kind: str, version: int, net: nn.Module, card: dict[str, Any], state: dict[str, torch.Tensor]
) -> Path:
    """Write a model file atomically; ``state`` is the (possibly converted) state dict."""
    payload = {
        "format": MODEL_FORMAT,
        "kind": kind,
        "arch": net.arch(),  # type: ignore[operator]
        "version": version,
        "state": state,
        "card": card,
    }
    return torch_save_atomic(payload, path)


def read_model_file(path: Path, kind: str, version: int, retrain: str) -> dict[str, Any]:
    """The payload of a model file of ``kind`` and network ``version``; ``retrain`` is the
    command that makes one (named in the errors)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise SfmkitError(f"cannot read {kind} weights {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT or payload.get("kind") != kind:
        raise SfmkitError(f"{path} is not an sfmkit {kind} model file (made by '{retrain}')")
    if payload.get("version") != version:
        raise SfmkitError(
            f"{path} was trained for {kind} network version {payload.get('version')}, this sfmkit has "
            f"{version}: retrain it with '{retrain}'"
        )
    return payload


def load_state(net: nn.Module, state: dict[str, torch.Tensor], path: Path, kind: str) -> None:
    """Load ``state`` (float16 tensors widened to float32) into ``net``, or say it does not fit."""
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise SfmkitError(f"{path}: the weights do not fit the {kind} network: {exc}") from exc
