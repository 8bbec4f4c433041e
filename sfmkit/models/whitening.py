"""PCA whitening of L2-normalised descriptors: the learned projection a retrieval model carries.

``y = P (x - mean)`` with P the top principal directions scaled by 1 / sqrt(eigenvalue + eps),
so the training vectors' covariance becomes (about) the identity; :meth:`Whitening.apply`
then L2-normalises each row again (switch that off with ``normalize=False``). Learning one is
:func:`sfmkit.retrieval.whitening.learn_whitening`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.utils.files import atomic_path

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
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, projection=self.projection, version=FORMAT_VERSION)
        return Path(path)

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
