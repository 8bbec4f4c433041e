"""Offscreen rendering of :class:`~sfmkit.synth.scenes.SynthScene` s with pyrender (EGL, headless).

Day: sun (directional light with shadows) plus sky ambient. Night: the sun is gone, a dim
bluish moon and ambient, and sodium street lamps (point lights, warm colour): the light
direction and sources change, which no 2D filter of a day image can imitate.

Cameras follow COLMAP's convention (cam_from_world, x right, y down, pixel centres at
+0.5); they are converted here to OpenGL's (y up, looking down -z). The depth returned is
the z coordinate in the camera frame (``inf`` where no surface is hit).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.synth.cameras import PinholeCamera
from sfmkit.synth.scenes import SynthScene

LIGHTINGS = ("day", "night")
_SKY = {"day": (0.72, 0.80, 0.90), "night": (0.015, 0.018, 0.035)}
_SODIUM = np.array([1.0, 0.62, 0.25])
_GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _load_triton_first() -> None:
    """Import triton (when installed, e.g. with CUDA builds of torch) before Mesa's EGL loads.

    Both carry their own LLVM; loaded in the order EGL (llvmpipe) then triton, the second
    LLVM's static initialisers crash the process (SIGSEGV in llvm::DebugCounter, seen when
    training after rendering in one process: torch.optim imports torch._dynamo, which
    imports triton). Loaded the other way round, both work.
    """
    if importlib.util.find_spec("triton") is not None:
        try:
            importlib.import_module("triton")
        except Exception:  # noqa: BLE001 - a broken triton only matters to torch.compile
            pass


def _pyrender() -> Any:
    _load_triton_first()
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    if not hasattr(np, "infty"):  # pyrender 0.1.45 still uses the alias NumPy 2 removed
        np.infty = np.inf  # type: ignore[attr-defined]
    try:
        import pyrender
    except ImportError as exc:  # pragma: no cover - a dependency of sfmkit
        raise SfmkitError(f"pyrender is needed to render scenes: {exc}") from exc
    return pyrender


def _rgba(texture: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 4), opaque. OpenGL reads texture rows at 4-byte alignment, so an
    RGB texture whose width times 3 is not a multiple of 4 (e.g. the 5150-px terrain of a
    2,000-image survey) loaded skewed: every row shifted, the colours smeared into diagonal
    grey stripes. Four bytes per pixel keep every row aligned."""
    alpha = np.full((*texture.shape[:2], 1), 255, np.uint8)
    return np.concatenate([texture, alpha], axis=2)


def _frame_with_z(z: np.ndarray, position: np.ndarray) -> np.ndarray:
    """A 4x4 pose whose z axis is ``z`` (a light shines along its -z)."""
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pose[:3, 3] = position
    return pose


class Renderer:
    """Renders one scene under one lighting, camera after camera (the GL context is reused).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, scene: SynthScene, width: int, height: int, lighting: str = "day") -> None:
        if lighting not in LIGHTINGS:
            raise ValueError(f"unknown lighting {lighting!r}; choose among {LIGHTINGS}")
        pyrender = _pyrender()
        self._pr = pyrender
        self.size = (width, height)
        lo, hi = scene.bounds
        self._depth_range = (1e-3 * scene.extent, 10.0 * scene.extent)
        night = lighting == "night"
        self.scene = pyrender.Scene(
            bg_color=(*_SKY[lighting], 1.0),
            ambient_light=(0.02, 0.025, 0.04) if night else (0.35, 0.36, 0.38),
        )
        # One mesh with a primitive per part: primitives draw in list order, whereas pyrender's
        # mesh nodes live in a set, whose order (and so the winner of depth ties) varies by run.
        primitives = []
        for part in scene.parts:
            texture = pyrender.Texture(source=_rgba(part.texture), source_channels="RGBA")
            material = pyrender.MetallicRoughnessMaterial(
                baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True
            )
            primitives.append(
                pyrender.Primitive(
                    positions=part.vertices.astype(np.float32),
                    normals=part.normals.astype(np.float32),
                    texcoord_0=part.uv,
                    material=material,
                )
            )
        self.scene.add(pyrender.Mesh(primitives))
        centre = (lo + hi) / 2
        if night:
            moon = pyrender.DirectionalLight(color=(0.6, 0.7, 1.0), intensity=0.15)
            self.scene.add(
                moon, pose=_frame_with_z(np.array([-scene.sun[0], -scene.sun[1], scene.sun[2]]), centre)
            )
            for lamp in scene.lamps:
                light = pyrender.PointLight(color=_SODIUM, intensity=3.0 * scene.lamp_range**2)
                self.scene.add(light, pose=_frame_with_z(np.array([0, 0, 1.0]), lamp))
            self._flags = pyrender.RenderFlags.NONE
        else:
            sun = pyrender.DirectionalLight(color=(1.0, 0.97, 0.9), intensity=3.0)
            self.scene.add(sun, pose=_frame_with_z(scene.sun, centre))
            self._flags = pyrender.RenderFlags.SHADOWS_DIRECTIONAL
        self._camera_node = None
        try:
            self._renderer = pyrender.OffscreenRenderer(width, height)
        except Exception as exc:
            raise SfmkitError(
                f"cannot open an offscreen OpenGL context ({exc}); sfmkit renders with EGL: "
                "install Mesa's EGL (Debian: libegl1 libegl-mesa0) and keep PYOPENGL_PLATFORM=egl"
            ) from exc

    def render(self, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) float32 depth of ``camera``."""
        if (camera.width, camera.height) != self.size:
            raise ValueError(f"camera is {camera.width}x{camera.height}, renderer {self.size}")
        k = camera.K
        intrinsics = self._pr.IntrinsicsCamera(
            k[0, 0], k[1, 1], k[0, 2], k[1, 2], znear=self._depth_range[0], zfar=self._depth_range[1]
        )
        world_from_cam = np.eye(4)
        world_from_cam[:3, :3] = camera.R.T
        world_from_cam[:3, 3] = camera.center
        if self._camera_node is not None:
            self.scene.remove_node(self._camera_node)
        self._camera_node = self.scene.add(intrinsics, pose=world_from_cam @ _GL_FROM_CV)
        colour, depth = self._renderer.render(self.scene, flags=self._flags)
        depth = np.where(depth > 0, depth, np.inf).astype(np.float32)
        return np.ascontiguousarray(colour[..., :3]), depth

    def close(self) -> None:
        self._renderer.delete()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
