import numpy as np
import pytest

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.intrinsics import read_intrinsics
from sfmkit.reconstruction.cameras import CameraConf, ImageCamera, group_images, make_camera


def info(size, focal=None, cam=""):
    return ImageCamera(size, focal, cam)


def test_camera_modes_group_images():
    infos = {
        "a/1.jpg": info((640, 480)),
        "a/2.jpg": info((640, 480)),
        "b/3.jpg": info((640, 480), 500.0, "Canon X"),
        "b/4.jpg": info((800, 600)),
    }
    names = list(infos)
    assert len(group_images(names, infos, "auto")) == 3
    assert len(group_images(names, infos, "per-image")) == 4
    assert sorted(map(len, group_images(names, infos, "per-folder"))) == [1, 1, 2]
    with pytest.raises(ConfigError, match="one size"):
        group_images(names, infos, "single")
    assert group_images(names[:2], infos, "single") == [names[:2]]


def test_prior_exif_and_known_intrinsics():
    prior = make_camera(CameraConf(), info((1000, 500)), None)
    assert prior.model_name == "SIMPLE_RADIAL" and prior.params[0] == pytest.approx(1200.0)
    assert not prior.has_prior_focal_length
    exif = make_camera(CameraConf(), info((1000, 500), 900.0), None)
    assert exif.params[0] == pytest.approx(900.0) and exif.has_prior_focal_length
    k = np.array([[800.0, 0, 510], [0, 805, 240], [0, 0, 1]])
    known = make_camera(CameraConf(intrinsics="K.txt"), info((1000, 500)), k)
    assert known.model_name == "PINHOLE"
    np.testing.assert_allclose(known.params, [800, 805, 510, 240])
    with pytest.raises(ConfigError):
        CameraConf(mode="everything")
    with pytest.raises(ConfigError):
        CameraConf(model="NOT_A_MODEL")


def test_intrinsics_files(tmp_path):
    p = tmp_path / "K.txt"
    p.write_text("700 0 320\n0 700 240\n0 0 1\n")
    np.testing.assert_allclose(read_intrinsics(p)[0], [700, 0, 320])
    p.write_text("700 710 320 240")
    np.testing.assert_allclose(read_intrinsics(p)[1], [0, 710, 240])
    p.write_text("0 0 0 0 0 0 0 0 0")
    with pytest.raises(SfmkitError, match="not a calibration matrix"):
        read_intrinsics(p)
    with pytest.raises(SfmkitError, match="does not exist"):
        read_intrinsics(tmp_path / "none.txt")


def test_exif_focal_length_and_camera_are_read(tmp_path):
    from PIL import Image

    from sfmkit.reconstruction.cameras import describe_image

    image = Image.new("RGB", (400, 300), (120, 80, 40))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"
    exif.get_ifd(0x8769)[0xA405] = 50  # 35 mm equivalent focal length
    image.save(tmp_path / "a.jpg", exif=exif)
    image.save(tmp_path / "plain.jpg")
    info = describe_image(tmp_path / "a.jpg", (400, 300))
    assert info.exif_camera == "Canon Canon EOS 5D"
    assert info.focal == pytest.approx(400 * 50 / 36, rel=0.1)  # a 50 mm lens on 36 mm film
    # the same file seen rotated by EXIF (300 x 400): focal in pixels of the longer side is kept
    assert describe_image(tmp_path / "a.jpg", (300, 400)).focal == pytest.approx(info.focal)
    assert describe_image(tmp_path / "plain.jpg", (400, 300)).focal is None
