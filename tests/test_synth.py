"""Rendered scenes: camera convention, determinism, exported ground truth, the CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pycolmap
import pytest

from sfmkit.io.strecha import read_scene
from sfmkit.pipelines.synth import SynthConf, synthesize
from sfmkit.synth.cameras import PinholeCamera, look_at
from sfmkit.synth.gl import Renderer
from sfmkit.synth.meshes import Part
from sfmkit.synth.scenes import SynthScene
from sfmkit.synth.truth import project


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def test_pyrender_follows_colmap_pixel_convention():
    """The rendered triangle's area centroid is the mean of its projected vertices (0.1 px)."""
    tri = np.array([[-0.3, -0.2, 0.0], [0.35, -0.1, 0.0], [0.0, 0.3, 0.0]])
    part = Part(tri, np.zeros((3, 2), np.float32), np.full((4, 4, 3), 255, np.uint8))
    scene = SynthScene("test", [part], np.array([0, 0, 1.0]), np.zeros((0, 3)), 1.0)
    r, t = look_at(np.array([0.05, -0.02, 2.0]), np.array([0.02, 0.01, 0.0]), (0.0, 1.0, 0.0))
    k = np.array([[160.0, 0, 87.3], [0, 160.0, 56.4], [0, 0, 1]])  # principal point off-centre
    cam = PinholeCamera(k, r, t, 160, 120)
    with Renderer(scene, 160, 120, "day") as renderer:
        image, depth = renderer.render(cam)
    image = image.astype(np.float64)
    sky, inside = (
        image[0, 0],
        image[int(project(cam, tri)[0].mean(0)[1]), int(project(cam, tri)[0].mean(0)[0])],
    )
    alpha = np.clip(((image - sky) @ (inside - sky)) / ((inside - sky) @ (inside - sky)), 0, 1)
    ys, xs = np.mgrid[0:120, 0:160]
    centroid = np.array([(alpha * (xs + 0.5)).sum(), (alpha * (ys + 0.5)).sum()]) / alpha.sum()
    expected = project(cam, tri)[0].mean(0)
    assert np.abs(centroid - expected).max() < 0.1, (centroid, expected)
    z = (tri.mean(0) @ cam.R.T + cam.t)[2]
    row, col = (int(v) for v in expected[::-1])
    assert depth[row, col] == pytest.approx(z, rel=2e-3)
    assert np.isinf(depth[0, 0])


def test_textures_of_any_width_render_unskewed():
    """A red square textured with a 101-px wide image (303 bytes a row, not a multiple of 4) must
    render red: OpenGL's 4-byte row alignment used to skew such textures into grey stripes."""
    square = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    verts = square[[0, 1, 2, 0, 2, 3]]
    uv = ((verts[:, :2] + 1) / 2).astype(np.float32)
    texture = np.zeros((101, 101, 3), np.uint8)
    texture[..., 0] = 220
    part = Part(verts, uv, texture)
    scene = SynthScene("test", [part], np.array([0, 0, 1.0]), np.zeros((0, 3)), 1.0)
    r, t = look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3), (0.0, 1.0, 0.0))
    cam = PinholeCamera(np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]]), r, t, 80, 60)
    with Renderer(scene, 80, 60, "day") as renderer:
        image, _ = renderer.render(cam)
    centre = image[15:45, 20:60].reshape(-1, 3).astype(float)
    assert (centre[:, 0] > 3 * centre[:, 1:].max(axis=1) + 10).all(), centre.mean(0)


def test_synth_is_deterministic_and_exports_exact_truth(tmp_path):
    conf = SynthConf(scene="orbit", n_images=4, size=(128, 96), seed=3, image_format="png", points=3000)
    synthesize(conf, tmp_path / "a")
    synthesize(conf, tmp_path / "b")
    synthesize(SynthConf(**{**conf.__dict__, "seed": 4}), tmp_path / "c")
    a, b, c = (_digest(tmp_path / x / "images") for x in "abc")
    assert a == b and len(a) == 4
    assert a != c

    cams = read_scene(tmp_path / "a")
    assert sorted(cams) == sorted(a)
    rec = pycolmap.Reconstruction(tmp_path / "a" / "model")
    assert rec.num_reg_images() == 4 and rec.num_points3D() > 200
    for image in rec.images.values():
        truth = cams[image.name]
        assert np.allclose(image.projection_center(), truth.C, atol=1e-9)
        camera = rec.camera(image.camera_id)
        assert np.allclose(camera.calibration_matrix(), truth.K)
    # The tracks' 2D observations are exact projections of their points.
    worst = 0.0
    for point in rec.points3D.values():
        for el in point.track.elements:
            image = rec.image(el.image_id)
            uv = rec.camera(image.camera_id).img_from_cam((image.cam_from_world() * point.xyz)[None])[0]
            worst = max(worst, float(np.abs(uv - image.points2D[el.point2D_idx].xy).max()))
    assert worst < 1e-6
    assert (tmp_path / "a" / "mesh.ply").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["facade", "aerial"])
def test_other_scenes_render(tmp_path, kind):
    result = synthesize(SynthConf(scene=kind, n_images=3, size=(96, 72), points=5000), tmp_path)
    assert result.counts["images"] == 3 and result.counts["triangles"] > 1000
    rec = pycolmap.Reconstruction(tmp_path / "model")
    assert rec.num_points3D() > 30  # neighbouring views see common surface


def test_synth_cli_day_and_night(cli, tmp_path):
    out = tmp_path / "scene"
    r = cli(
        "synth",
        str(out),
        "--scene",
        "orbit",
        "-n",
        "4",
        "--size",
        "96x72",
        "--lighting",
        "both",
        "--depth",
    )
    assert r.exit_code == 0, r.output
    day = sorted(p.name for p in (out / "images").glob("*.jpg"))
    night = sorted(p.name for p in (out / "images_night").glob("*.jpg"))
    assert day == night == ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
    from PIL import Image

    d = np.asarray(Image.open(out / "images" / "0000.jpg"), np.float64)
    n = np.asarray(Image.open(out / "images_night" / "0000.jpg"), np.float64)
    assert n.mean() < 0.8 * d.mean()  # darker
    assert n[..., 0].mean() > n[..., 2].mean()  # sodium cast
    report = json.loads((out / "report.json").read_text())
    assert report["synth"]["counts"]["renders"] == 8
    # EXIF focal length read by COLMAP matches the true one within the 35 mm rounding.
    camera = pycolmap.infer_camera_from_image(out / "images" / "0000.jpg")
    truth = read_scene(out)["0000.jpg"].K[0, 0]
    assert camera.mean_focal_length() == pytest.approx(truth, rel=0.03)
    import h5py

    with h5py.File(out / "depth.h5") as f:
        assert f["0000.jpg"].shape == (72, 96)

    # the relit renders as night queries of the Aachen-style proxy
    subsets = tmp_path / "subsets"
    r = cli(
        "make-night",
        str(out),
        "-o",
        str(subsets),
        "--night-images",
        str(out / "images_night"),
    )
    assert r.exit_code == 0, r.output
    query = subsets / "0002" / "images" / "night_0002.jpg"
    relit = np.asarray(Image.open(query), np.float64)
    d, n = (np.asarray(Image.open(out / f / "0002.jpg"), np.float64) for f in ("images", "images_night"))
    assert np.abs(relit - n).mean() < 0.2 * np.abs(relit - d).mean()  # the render, not a filtered day image
    assert "renders" in json.loads((subsets / "make_night.json").read_text())["note"]
    # the subsets keep each render's focal length (EXIF), so the mapper knows the cameras differ,
    # and no single K.txt claims otherwise
    assert not (subsets / "0002" / "K.txt").exists()
    for image in (query, subsets / "0002" / "images" / "0001.jpg"):
        name = image.name.removeprefix("night_")
        camera = pycolmap.infer_camera_from_image(image)
        assert camera.has_prior_focal_length, image
        assert camera.mean_focal_length() == pytest.approx(read_scene(out)[name].K[0, 0], rel=0.03)
    r = cli("make-night", str(out), "-o", str(tmp_path / "x"), "--night-images", str(tmp_path))
    assert r.exit_code != 0 and "lacks the night version" in r.output


def test_synth_refuses_unwritable_output(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("synth", str(blocker / "out"), "-n", "2", "--size", "64x48")
    assert r.exit_code == 2
    assert "cannot write" in r.output


def test_survey_keeps_its_overlap_as_it_grows():
    """The survey flight: nadir views on a serpentine grid whose spacing (so overlap) does not
    depend on the number of images; consecutive images are neighbours on the grid."""
    from sfmkit.synth.scenes import SURVEY_ALTITUDE, SURVEY_STEP, survey_cameras

    for n in (30, 300):
        cams = survey_cameras(np.random.default_rng(0), n, (320, 240))
        centers = np.stack([c.center for c in cams])
        assert len(cams) == n
        assert np.allclose(centers[:, 2], SURVEY_ALTITUDE, atol=2.5)
        axes = np.stack([c.R[2] for c in cams])  # optical axes in the world
        assert (axes[:, 2] < -0.999).all()  # looking straight down
        steps = np.linalg.norm(np.diff(centers[:, :2], axis=0), axis=1)
        assert np.median(steps) == pytest.approx(SURVEY_STEP[0], abs=0.5)
        assert steps.max() < SURVEY_STEP[1] + 3.0  # the turn between strips too
        extent = np.ptp(centers[:, :2], axis=0)
        assert extent.max() < SURVEY_STEP[1] * np.sqrt(n) * 1.5  # grows like sqrt(n), not fixed
