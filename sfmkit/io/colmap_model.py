"""A COLMAP model folder as sfmkit writes it: pycolmap's binary files plus ``model.ply``.

The one place that knows which files make a model, so the stages that write one (``map``,
``bundle-adjust``) replace the same set and a rerun that reconstructs nothing leaves no old
model behind.
"""

from __future__ import annotations

from pathlib import Path

import pycolmap

#: The binary files of a pycolmap model (pycolmap 4.x: rigs and frames besides the classic three).
MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin")
#: The coloured point cloud written next to them.
PLY_FILE = "model.ply"


def clear_model(folder: Path) -> None:
    """Remove a model written earlier in ``folder`` (other files stay)."""
    for name in (*MODEL_FILES, PLY_FILE):
        (Path(folder) / name).unlink(missing_ok=True)


def write_model(rec: pycolmap.Reconstruction, folder: Path) -> None:
    """Replace the model in ``folder`` with ``rec`` and its point cloud."""
    clear_model(folder)
    rec.write(Path(folder))
    rec.export_PLY(Path(folder) / PLY_FILE)
