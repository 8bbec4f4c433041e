"""Torch device selection: CPU by default, CUDA when present and asked for (or ``auto``)."""

from __future__ import annotations

import torch

from sfmkit.errors import SfmkitError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda``/``cuda:N``/``cpu`` are explicit."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SfmkitError(f"--device {device} was requested but CUDA is not available here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise SfmkitError(f"invalid --device {device!r}: use auto, cpu, cuda or cuda:N") from exc
