"""PCA whitening of L2-normalised descriptors (learned on regional or global vectors).

``y = P (x - mean)`` with P the top principal directions scaled by 1 / sqrt(eigenvalue + eps),
so the training vectors' covariance becomes (about) the identity; :meth:`Whitening.apply`
then L2-normalises each row again (switch that off with ``normalize=False``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfmkit.errors import SfmkitError

logger = logging.getLogger(__name__)

#: Rows accumulated into the covariance at a time (bounds the float64 copy).
COVARIANCE_CHUNK = 65_536
#: Version written into whitening files.
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Whitening:
    """A learned PCA whitening.

    Attributes:
        mean: (D,) mean of the training vectors.
        projection: (D_out, D) rows = principal directions / sqrt(eigenvalue + eps), the
            strongest first.
    """

    mean: np.ndarray
    projection: np.ndarray

    def __post_init__(self) -> None:
        if self.mean.ndim != 1 or self.projection.ndim != 2:
            raise SfmkitError(
                f"a whitening needs a (D,) mean and a (D_out, D) projection, got shapes "
                f"{self.mean.shape} and {self.projection.shape}"
            )
        if self.projection.shape[1] != self.mean.shape[0]:
            raise SfmkitError(
                f"whitening mean is {self.mean.shape[0]}-dimensional but its projection takes "
                f"{self.projection.shape[1]}-dimensional vectors"
            )

    @property
    def in_dim(self) -> int:
        """D, the dimension of the vectors it takes."""
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        """D_out, the dimension of the whitened vectors."""
        return int(self.projection.shape[0])

    def _check(self, dim: int) -> None:
        if dim != self.in_dim:
            raise SfmkitError(
                f"the whitening takes {self.in_dim}-dimensional vectors but got {dim}-dimensional ones "
                "(was it learned with another model or layer?)"
            )

    def apply(self, x: np.ndarray | torch.Tensor, normalize: bool = True) -> np.ndarray | torch.Tensor:
        """Whiten (..., D) vectors into (..., D_out), rows L2-normalised unless ``normalize=False``.

        NumPy in, NumPy out (float32, or float64 for float64 input); a torch tensor in gives a
        tensor on its device (see :meth:`apply_torch`).
        """
        if isinstance(x, torch.Tensor):
            return self.apply_torch(x, normalize)
        x = np.asarray(x)
        self._check(x.shape[-1])
        dtype = np.result_type(x.dtype, np.float32)
        y = (x.astype(dtype, copy=False) - self.mean.astype(dtype)) @ self.projection.astype(dtype).T
        if normalize:
            y /= np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
        return y

    def apply_torch(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """:meth:`apply` for tensors (differentiable with respect to ``x``)."""
        self._check(x.shape[-1])
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.as_tensor(self.mean, dtype=dtype, device=x.device)
        projection = torch.as_tensor(self.projection, dtype=dtype, device=x.device)
        y = (x.to(dtype) - mean) @ projection.T
        return torch.nn.functional.normalize(y, dim=-1, eps=1e-12) if normalize else y

    def save(self, path: Path) -> Path:
        """Write an ``.npz`` file (atomically: a crash leaves no partial file); returns ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mean=self.mean, projection=self.projection, version=FORMAT_VERSION)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path) -> Whitening:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise SfmkitError(f"whitening file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "mean" not in data or "projection" not in data:
                    raise SfmkitError(f"{path} is not a whitening file (no 'mean' and 'projection' arrays)")
                return cls(np.array(data["mean"]), np.array(data["projection"]))
        except (OSError, ValueError) as e:
            raise SfmkitError(f"cannot read whitening file {path}: {e}") from e


def _covariance(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(D, D) float64 sample covariance (divided by N - 1), accumulated in chunks of rows."""
    cov = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for start in range(0, len(x), COVARIANCE_CHUNK):
        block = x[start : start + COVARIANCE_CHUNK].astype(np.float64) - mean
        cov += block.T @ block
    return cov / (len(x) - 1)


def learn_whitening(x: np.ndarray, dim: int = 256, eps: float = 1e-6) -> Whitening:
    """PCA whitening of the rows of ``x``.

    Centres, eigen-decomposes the covariance and keeps the ``dim`` strongest directions, or
    min(dim, D, N - 1) with a warning when there are fewer. Each direction's sign is fixed
    (largest-magnitude component positive) so the result does not depend on the solver.

    Args:
        x: (N, D) training vectors (N >= 2), e.g. L2-normalised regional MAC vectors.
        dim: output dimension asked for.
        eps: added to the eigenvalues before the inverse square root.

    Returns:
        The :class:`Whitening`, projection (D_out, D) in float64.
    """
    x = np.asarray(x)
    if x.ndim != 2 or len(x) < 2:
        raise SfmkitError(f"learning a whitening needs (N, D) vectors with N >= 2, got shape {x.shape}")
    if dim < 1:
        raise SfmkitError(f"the whitened dimension must be at least 1, got {dim}")
    n, d = x.shape
    keep = min(dim, d, n - 1)
    if keep < dim:
        logger.warning(
            "whitening keeps %d dimensions instead of %d (%d vectors of dimension %d)", keep, dim, n, d
        )
    mean = x.mean(axis=0, dtype=np.float64)
    cov = _covariance(x, mean)
    if not np.isfinite(cov).all():
        raise SfmkitError("the whitening training vectors contain NaN or infinite values")
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:keep]
    values = np.maximum(values[order], 0.0)
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(keep)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    projection = vectors.T / np.sqrt(values + eps)[:, None]
    return Whitening(mean, projection)
