"""User mistakes get one clear line and exit status 2, never a traceback."""

import os
import subprocess
import sys

import pytest
from helpers import textured_image
from PIL import Image


def assert_clean_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, result.output


def test_missing_and_empty_image_folders(cli, tmp_path):
    assert_clean_error(cli("extract", str(tmp_path / "nope"), "-o", str(tmp_path / "o")), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(
        cli("reconstruct", str(tmp_path / "empty"), "-o", str(tmp_path / "o")), "no images found"
    )


def test_unwritable_output_folder(cli, image_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("extract", str(image_folder), "-o", str(blocker / "out"), "--weights", "random")
    assert_clean_error(result, "cannot create output folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(cli, image_folder, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert_clean_error(
            cli("extract", str(image_folder), "-o", str(out), "--weights", "random"), "not writable"
        )
    finally:
        out.chmod(0o700)


def test_bad_options_and_files(cli, image_folder, tmp_path):
    assert_clean_error(
        cli("extract", str(image_folder), "-o", str(tmp_path), "--weights", "nonsense"), "unknown --weights"
    )
    assert_clean_error(cli("match", str(tmp_path / "none.h5")), "does not exist")
    assert_clean_error(
        cli("extract", str(image_folder), "-o", str(tmp_path), "--features", "sift", "--weights", "random"),
        "--weights applies",
    )
    bad_k = tmp_path / "K.txt"
    bad_k.write_text("1 2 3")
    (tmp_path / "f.h5").write_bytes(b"")
    result = cli(
        "reconstruct",
        str(image_folder),
        "-o",
        str(tmp_path / "r"),
        "--weights",
        "random",
        "--intrinsics",
        str(bad_k),
    )
    assert_clean_error(result, "K.txt")


def test_output_made_with_another_config_needs_overwrite(cli, image_folder, tmp_path):
    import h5py

    args = [
        "extract",
        str(image_folder),
        "-o",
        str(tmp_path / "o"),
        "--weights",
        "random",
        "--max-size",
        "128",
    ]
    assert cli(*args).exit_code == 0
    path = next((tmp_path / "o").glob("features-dense-vgg16-*.h5"))
    with h5py.File(path, "a") as f:  # as if made by another version of the preset
        f.attrs["config"] = '{"name": "dense-vgg16", "max_size": 7}'
    assert_clean_error(cli(*args), "another configuration", "--overwrite")
    assert cli(*args, "--overwrite").exit_code == 0


def test_grayscale_cmyk_16bit_and_corrupt_images_in_one_folder(cli, tmp_path):
    import numpy as np

    folder = tmp_path / "mixed"
    folder.mkdir()
    rgb = textured_image(1, (200, 150))
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "deep.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "readme.txt").write_text("not an image")
    result = cli("extract", str(folder), "-o", str(tmp_path / "o"), "--weights", "random")
    assert result.exit_code == 0, result.output
    assert "images skipped" in result.output and "broken.jpg" in result.output


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and "sfmkit" in result.output


def test_png_encoding_survives_pycolmap(tmp_path):
    """pycolmap exports its own zlib symbols; imported first, they corrupted Pillow's PNG
    encoder (an abort in every evaluation figure). ``import sfmkit`` must prevent it."""
    code = (
        "import sfmkit, pycolmap, numpy as np\n"
        "from PIL import Image\n"
        "for _ in range(5):\n"
        "    Image.fromarray((np.random.rand(500, 800, 3) * 255).astype('uint8')).save('x.png')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
