import numpy as np
import pytest
from helpers import textured_image
from PIL import Image

from sfmkit.errors import ImageReadError, SfmkitError
from sfmkit.io.images import image_size, list_images, read_image, target_size


def test_listing_ignores_non_images_and_hidden_files(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(textured_image(0)).save(tmp_path / "b.JPG")
    Image.fromarray(textured_image(1)).save(tmp_path / "sub" / "a.png")
    (tmp_path / "K.txt").write_text("1 0 0")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    listing = list_images(tmp_path)
    assert listing.names == ["b.JPG", "sub/a.png"]
    assert listing.ignored == ["K.txt"]


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(SfmkitError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(SfmkitError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(SfmkitError, match="more than once"):
        list_images(tmp_path, ["a.jpg", "a.jpg"])
    with pytest.raises(SfmkitError, match="relative"):
        list_images(tmp_path, ["../escape.jpg"])


@pytest.mark.parametrize(
    "mode,suffix",
    [
        ("L", ".png"),
        ("P", ".png"),
        ("RGBA", ".png"),
        ("CMYK", ".jpg"),
        ("I;16", ".png"),
        ("LA", ".png"),
        ("1", ".png"),
    ],
)
def test_pixel_modes_become_rgb(tmp_path, mode, suffix):
    rgb = textured_image(3)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        assert image.mode.startswith("I")
    else:
        image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"x{suffix}"
    image.save(path)
    loaded = read_image(path)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (120, 160, 3)
    if mode == "I;16":  # 16-bit values are scaled to 8 bits, not clipped
        np.testing.assert_allclose(loaded.rgb[..., 0], rgb[..., 0], atol=1)


def test_exif_orientation_is_applied(tmp_path):
    rgb = textured_image(4)  # 160 x 120
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=98)
    assert image_size(path) == (120, 160)
    loaded = read_image(path)
    assert loaded.size == (120, 160) and loaded.rgb.shape == (160, 120, 3)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(loaded.rgb.astype(int) - expected).mean() < 4


def test_resize_and_scale():
    assert target_size((3072, 2048), 1024) == (1024, 683)
    assert target_size((800, 600), 1024) == (800, 600)
    # enlarged towards max_size, by at most the factor asked for
    assert target_size((800, 600), 1024, upscale=2.0) == (1024, 768)
    assert target_size((320, 240), 1024, upscale=2.0) == (640, 480)
    assert target_size((3072, 2048), 1024, upscale=2.0) == (1024, 683)
    assert target_size((1000, 750), 1024, upscale=2.0) == (1000, 750)  # 2.4%: blur, not detail


def test_enlarged_read_reports_scale(tmp_path):
    """Keypoints found on an enlarged image map back to the file's pixels through ``scale``."""
    path = tmp_path / "small.png"
    Image.fromarray(textured_image(5, (320, 240))).save(path)
    loaded = read_image(path, max_size=1024, upscale=2.0)
    assert loaded.rgb.shape == (480, 640, 3) and loaded.size == (320, 240)
    assert loaded.scale == (0.5, 0.5)


def test_resized_read_reports_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(textured_image(5, (640, 480))).save(path)
    loaded = read_image(path, max_size=320)
    assert loaded.rgb.shape == (240, 320, 3)
    assert loaded.scale == (2.0, 2.0) and loaded.size == (640, 480)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0garbage", b"hello, I am text"])
def test_corrupt_and_fake_images_raise_image_read_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(path)


def test_truncated_jpeg_raises(tmp_path):
    path = tmp_path / "trunc.jpg"
    Image.fromarray(textured_image(6, (640, 480))).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        read_image(path)


def test_huge_images_are_refused_clearly(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (400, 300)).save(path)
    with pytest.raises(ImageReadError, match="MP limit"):
        read_image(path, max_pixels=100_000)
