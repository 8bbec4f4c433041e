"""The three procedural scenes of ``sfmkit synth`` and their camera layouts.

* ``orbit``: objects (boxes, cylinders, spheres, a stacked "statue") on textured ground,
  cameras on a full circle at varying height, distance and zoom.
* ``facade``: a building front with depth (pilasters, window frames, balconies, a cornice),
  a side building and street furniture; cameras along the street at several distances,
  heights and zooms, turned left and right.
* ``aerial``: a terrain with buildings (hip roofs) and trees, seen as in GL3D's drone
  captures: several altitudes (scales), nadir and oblique views, random headings.
* ``survey``: the ``aerial`` terrain flown as a mapping drone flies it: nadir views on a
  serpentine grid at one altitude and heading (GPS-like jitter), 81% / 70% overlap; the terrain
  grows with the number of images, so the overlap does not. The large-collection scene of the
  scaling benchmark.

Units are metres; z is up. Cameras are :class:`~sfmkit.synth.cameras.PinholeCamera`
(cam_from_world, COLMAP's pixel convention). Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from sfmkit.synth import meshes as m
from sfmkit.synth.cameras import PinholeCamera, camera_towards

SCENES = ("orbit", "facade", "aerial", "survey")


@dataclass(frozen=True)
class SynthScene:
    """Attributes:
    parts: the textured meshes.
    sun: unit vector towards the sun (day lighting).
    lamps: (L, 3) positions of the night lights (sodium street lamps).
    lamp_range: typical lamp-to-surface distance, scales the lamps' intensity.
    """

    kind: str
    parts: list[m.Part]
    sun: np.ndarray
    lamps: np.ndarray
    lamp_range: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        v = np.concatenate([p.vertices for p in self.parts])
        return v.min(0), v.max(0)

    @property
    def extent(self) -> float:
        lo, hi = self.bounds
        return float(np.linalg.norm(hi - lo))

    @property
    def num_triangles(self) -> int:
        return sum(len(p.vertices) // 3 for p in self.parts)


def _sun(rng: np.random.Generator) -> np.ndarray:
    az, el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(35, 65))
    return np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])


# --------------------------------------------------------------------------- orbit


def orbit_scene(rng: np.random.Generator, textures: m.TextureSource, detail: float) -> SynthScene:
    edge = 0.15 / detail
    parts = [
        m.textured_part(
            m.heightfield(rng, 12.0, 24, 0.0), textures, max_edge=edge, mapping="top", texture_size=1024
        )
    ]
    placed: list[tuple[float, float, float]] = []
    while len(placed) < int(rng.integers(5, 8)):
        x, y = rng.uniform(-2.2, 2.2, 2)
        r = rng.uniform(0.3, 0.6)
        if any((x - px) ** 2 + (y - py) ** 2 < (r + pr + 0.15) ** 2 for px, py, pr in placed):
            continue
        placed.append((x, y, r))
        kind = len(placed) % 4
        if kind == 0:
            mesh = m.cylinder(r * 0.8, rng.uniform(0.6, 1.6), (x, y, 0))
        elif kind == 1:
            mesh = m.sphere(r, (x, y, r))
        elif kind == 2:  # a statue: a plinth with a box and a sphere on top
            h = rng.uniform(0.5, 0.9)
            mesh = trimesh.util.concatenate(
                [
                    m.box((1.4 * r, 1.4 * r, h), (x, y, 0), rng.uniform(0, np.pi)),
                    m.box((0.8 * r, 0.6 * r, 0.8), (x, y, h), rng.uniform(0, np.pi)),
                    m.sphere(0.3 * r + 0.1, (x, y, h + 0.8 + 0.3 * r)),
                ]
            )
        else:
            mesh = m.box(
                (2 * r, rng.uniform(1.0, 2.0) * r, rng.uniform(0.4, 1.4)), (x, y, 0), rng.uniform(0, np.pi)
            )
        parts.append(m.textured_part(mesh, textures, max_edge=edge, name=f"object{len(placed)}"))
    angles = rng.uniform(0, 2 * np.pi, 4)
    lamps = np.stack([3.2 * np.cos(angles), 3.2 * np.sin(angles), np.full(4, 2.2)], axis=1)
    return SynthScene("orbit", parts, _sun(rng), lamps, 3.0)


def orbit_cameras(rng: np.random.Generator, n: int, size: tuple[int, int]) -> list[PinholeCamera]:
    cams = []
    for azimuth in np.linspace(0, 2 * np.pi, n, endpoint=False):
        a = azimuth + rng.uniform(-0.05, 0.05)
        e = np.radians(rng.uniform(18, 45))
        radius = rng.uniform(4.5, 7.0)
        center = np.array(
            [radius * np.cos(a) * np.cos(e), radius * np.sin(a) * np.cos(e), radius * np.sin(e)]
        )
        target = np.array([0.0, 0.0, 0.4]) + rng.normal(0, 0.3, 3) * [1, 1, 0.3]
        cams.append(camera_towards(center, target, size, rng.uniform(0.9, 1.3) * radius / 5.5))
    return cams


# --------------------------------------------------------------------------- facade


def facade_scene(rng: np.random.Generator, textures: m.TextureSource, detail: float) -> SynthScene:
    edge = 0.5 / detail
    width, height, floors = rng.uniform(14, 18), rng.uniform(7, 9), 2 + int(rng.integers(0, 2))
    front = -0.5  # the facade plane y = front faces -y (the street)
    pieces: list[trimesh.Trimesh] = [m.box((width, 8.0, height), (0, front + 4.0, 0))]
    bays = int(width // 2.6)
    xs = np.linspace(-width / 2 + 1.3, width / 2 - 1.3, bays)
    for x in np.linspace(-width / 2, width / 2, bays + 1):
        pieces.append(m.box((0.35, 0.3, height), (x, front - 0.15, 0)))  # pilasters
    pieces.append(m.box((width + 0.8, 0.7, 0.35), (0, front - 0.1, height)))  # cornice
    floor_h = height / (floors + 0.3)
    for fl in range(floors):
        z0 = 0.9 + fl * floor_h
        for x in xs:
            if rng.random() < 0.85:
                pieces.append(m.box((1.1, 0.12, 1.5), (x, front - 0.06, z0)))  # window frame
            if fl > 0 and rng.random() < 0.35:
                pieces.append(m.box((1.7, 0.9, 0.15), (x, front - 0.45, z0 - 0.25)))  # balcony slab
                pieces.append(m.box((1.7, 0.06, 0.8), (x, front - 0.87, z0 - 0.1)))  # railing
    parts = [m.textured_part(p, textures, max_edge=edge, texture_size=256, name="facade") for p in pieces[1:]]
    parts.insert(0, m.textured_part(pieces[0], textures, max_edge=edge, texture_size=2048, name="building"))
    side = m.box((6.0, 10.0, height * 0.8), (width / 2 + 4.0, front + 7.0, 0), np.radians(-25))
    parts.append(m.textured_part(side, textures, max_edge=edge, texture_size=1024, name="side building"))
    for k in range(int(rng.integers(3, 6))):  # street furniture
        x, y = rng.uniform(-width / 2, width / 2), rng.uniform(-5.0, -2.0)
        mesh = (
            m.cylinder(0.25, rng.uniform(0.6, 1.2), (x, y, 0)) if k % 2 else m.box((1.6, 0.5, 0.5), (x, y, 0))
        )
        parts.append(m.textured_part(mesh, textures, max_edge=edge, texture_size=256, name="furniture"))
    ground = m.heightfield(rng, 30.0, 30, 0.0, center=(0, -3.0))
    parts.insert(0, m.textured_part(ground, textures, max_edge=edge, mapping="top", texture_size=2048))
    lamp_x = np.arange(-width / 2, width / 2 + 0.1, 4.0)
    lamps = np.stack([lamp_x, np.full_like(lamp_x, -3.0), np.full_like(lamp_x, 4.0)], axis=1)
    return SynthScene("facade", parts, _sun(rng), lamps, 4.0)


def facade_cameras(rng: np.random.Generator, n: int, size: tuple[int, int]) -> list[PinholeCamera]:
    cams = []
    for x in np.linspace(-6.5, 6.5, n):
        distance = rng.uniform(7.0, 13.0)
        center = np.array([x + rng.uniform(-0.5, 0.5), -0.5 - distance, rng.uniform(1.5, 4.0)])
        target = np.array([x + rng.uniform(-3.0, 3.0), 0.0, rng.uniform(2.0, 5.0)])
        cams.append(camera_towards(center, target, size, rng.uniform(0.8, 1.5)))
    return cams


# --------------------------------------------------------------------------- aerial


def aerial_scene(
    rng: np.random.Generator, textures: m.TextureSource, detail: float, size: float = 140.0
) -> SynthScene:
    """Terrain of ``size`` x ``size`` m; buildings, trees and lamps keep their density per area."""
    edge = 1.5 / detail
    area = (size / 140.0) ** 2
    reach = 62.0 * size / 140.0  # buildings and trees within +-reach
    terrain = m.heightfield(rng, size, int(round(size)), 2.0)
    texture = min(8192, int(round(2048 * size / 140.0)))
    parts = [
        m.textured_part(terrain, textures, max_edge=edge, mapping="top", texture_size=texture, name="terrain")
    ]
    placed: list[tuple[float, float, float]] = []
    attempts = 0
    while len(placed) < round(70 * area) and attempts < round(4000 * area):
        attempts += 1
        x, y = rng.uniform(-reach, reach, 2)
        sx, sy = rng.uniform(5, 12), rng.uniform(5, 10)
        r = 0.5 * np.hypot(sx, sy)
        if any(np.hypot(x - px, y - py) < r + pr + 1.0 for px, py, pr in placed):
            continue
        placed.append((x, y, r))
        z, yaw, h = m.ground_height(terrain, x, y) - 0.5, rng.uniform(0, np.pi), rng.uniform(3, 15)
        parts.append(
            m.textured_part(
                m.box((sx, sy, h + 0.5), (x, y, z), yaw), textures, max_edge=edge, texture_size=512
            )
        )
        roof = m.hip_roof((sx, sy), (x, y, z + h + 0.5), yaw, rng.uniform(1.5, 3.5))
        parts.append(m.textured_part(roof, textures, max_edge=edge, texture_size=256, name="roof"))
    for _ in range(round(60 * area)):  # trees
        x, y = rng.uniform(-reach, reach, 2)
        if any(np.hypot(x - px, y - py) < pr + 2.0 for px, py, pr in placed):
            continue
        z, r = m.ground_height(terrain, x, y), rng.uniform(1.5, 3.0)
        tree = trimesh.util.concatenate(
            [m.cylinder(0.3, 2.5, (x, y, z - 0.2)), m.sphere(r, (x, y, z + 2.3 + 0.8 * r))]
        )
        parts.append(m.textured_part(tree, textures, max_edge=edge, texture_size=256, name="tree"))
    spots = rng.uniform(-reach, reach, (round(40 * area), 2))
    lamps = np.array([[x, y, m.ground_height(terrain, x, y) + 8.0] for x, y in spots])
    return SynthScene("aerial", parts, _sun(rng), lamps, 10.0)


def aerial_cameras(rng: np.random.Generator, n: int, size: tuple[int, int]) -> list[PinholeCamera]:
    """GL3D-like drone views: three altitudes, a third nadir, the others oblique."""
    cams = []
    altitudes = (35.0, 55.0, 85.0)
    for i in range(n):
        altitude = altitudes[i % 3] * rng.uniform(0.9, 1.1)
        target = np.append(rng.uniform(-50, 50, 2), 0.0)
        if rng.random() < 0.35:
            heading = rng.uniform(0, 2 * np.pi)
            center = target + np.array([0.02 * np.cos(heading), 0.02 * np.sin(heading), altitude])
        else:
            tilt, heading = np.radians(rng.uniform(30, 55)), rng.uniform(0, 2 * np.pi)
            reach = altitude * np.tan(tilt)
            center = target + np.array([reach * np.cos(heading), reach * np.sin(heading), altitude])
        cams.append(camera_towards(center, target, size, rng.uniform(0.8, 1.1)))
    return cams


#: The ``survey`` flight: height above z = 0, spacing along the strips (x) and between strips (y),
#: in metres. With the default focal length (0.95 x width) a 4:3 view covers about 32 x 24 m at
#: 30 m: 81% forward and 70% side overlap, whatever the number of images.
SURVEY_ALTITUDE, SURVEY_STEP = 30.0, (6.0, 7.0)


def _survey_grid(n: int) -> tuple[int, int]:
    """Columns (images per strip) and rows (strips) of a roughly square survey of ``n`` images."""
    cols = max(2, int(round(np.sqrt(n * SURVEY_STEP[1] / SURVEY_STEP[0]))))
    return cols, max(1, int(np.ceil(n / cols)))


def survey_scene(rng: np.random.Generator, textures: m.TextureSource, detail: float, n: int) -> SynthScene:
    """The ``aerial`` terrain, sized to hold the survey of ``n`` images and its footprints."""
    cols, rows = _survey_grid(n)
    extent = max((cols - 1) * SURVEY_STEP[0], (rows - 1) * SURVEY_STEP[1])
    return aerial_scene(rng, textures, detail, size=extent + 1.5 * SURVEY_ALTITUDE + 20.0)


def survey_cameras(rng: np.random.Generator, n: int, size: tuple[int, int]) -> list[PinholeCamera]:
    """A mapping flight: ``n`` nadir views on a serpentine grid (strips along x) centred on the
    origin, one heading and focal length, with 0.5 m of position and height and 2 deg of heading
    jitter (GPS and wind)."""
    cols, rows = _survey_grid(n)
    cams = []
    for i in range(n):
        row, k = divmod(i, cols)
        col = k if row % 2 == 0 else cols - 1 - k
        xy = np.array([(col - (cols - 1) / 2) * SURVEY_STEP[0], (row - (rows - 1) / 2) * SURVEY_STEP[1]])
        target = np.append(xy + rng.normal(0.0, 0.5, 2), 0.0)
        heading = np.radians(90.0 + rng.normal(0.0, 2.0))
        offset = np.array([0.02 * np.cos(heading), 0.02 * np.sin(heading), SURVEY_ALTITUDE])
        center = target + offset + np.array([0.0, 0.0, rng.normal(0.0, 0.5)])
        cams.append(camera_towards(center, target, size, 0.95))
    return cams


def build(
    kind: str,
    n_images: int,
    size: tuple[int, int],
    seed: int,
    textures: m.TextureSource | None = None,
    detail: float = 1.0,
) -> tuple[SynthScene, list[PinholeCamera]]:
    """The scene ``kind`` (one of :data:`SCENES`) and ``n_images`` cameras, deterministic for ``seed``.

    ``detail`` scales the tessellation (triangles per unit length).
    """
    rng = np.random.default_rng(seed)
    textures = textures or m.TextureSource(rng)
    builders = {
        "orbit": (orbit_scene, orbit_cameras),
        "facade": (facade_scene, facade_cameras),
        "aerial": (aerial_scene, aerial_cameras),
        # the terrain grows with the survey
        "survey": (lambda r, t, d: survey_scene(r, t, d, n_images), survey_cameras),
    }
    if kind not in builders:
        raise ValueError(f"unknown scene {kind!r}; choose among {SCENES}")
    make_scene, make_cameras = builders[kind]
    scene = make_scene(rng, textures, detail)
    cams = make_cameras(np.random.default_rng([seed, 1]), n_images, size)
    return scene, cams
