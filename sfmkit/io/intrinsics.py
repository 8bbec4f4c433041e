"""Known calibrations: ``K.txt`` files (a 3x3 matrix, as in the Strecha datasets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfmkit.errors import SfmkitError


def read_intrinsics(path: Path) -> np.ndarray:
    """Read a 3x3 calibration matrix K (9 numbers, row-major), or ``fx fy cx cy``.

    K refers to the images as they are in the image folder (full resolution).
    """
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"intrinsics file {path} does not exist")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as exc:
        raise SfmkitError(f"{path}: expected numbers only ({exc})") from exc
    if values.size == 4:
        fx, fy, cx, cy = values
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    elif values.size == 9:
        k = values.reshape(3, 3)
    else:
        raise SfmkitError(
            f"{path}: expected a 3x3 matrix (9 numbers) or 'fx fy cx cy', got {values.size} "
            "numbers; write K alone (a 3x4 projection matrix is not read)"
        )
    if not (k[0, 0] > 0 and k[1, 1] > 0 and np.allclose(k[2], [0, 0, 1])):
        raise SfmkitError(f"{path}: not a calibration matrix (need fx, fy > 0 and last row 0 0 1):\n{k}")
    return k


def write_intrinsics(path: Path, k: np.ndarray) -> Path:
    """Write a 3x3 calibration matrix as ``K.txt`` (three rows of three numbers); returns ``path``."""
    rows = np.asarray(k, np.float64).reshape(3, 3)
    Path(path).write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in rows) + "\n")
    return Path(path)
