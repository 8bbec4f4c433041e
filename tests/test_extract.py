import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import textured_image
from PIL import Image

from sfmkit.errors import ConfigError
from sfmkit.features import dense_vgg, extraction_size, get_conf, with_max_size
from sfmkit.features.extract import extract, features_path
from sfmkit.io.h5 import H5Reader, json_attr
from sfmkit.utils.config import replace

CONF = replace(get_conf("dense-vgg16"), weights="random", max_size=160)


def test_dense_record_layout(image_folder, tmp_path):
    path = extract(CONF, image_folder, tmp_path / "out", device="cpu")
    with H5Reader(path) as r:
        key = ("im0.jpg",)
        kpts = r.array(key, "keypoints")
        desc = r.array(key, "descriptors")
        h, w = r.array(key, "grid_shape")
        hc, wc = r.array(key, "coarse/grid_shape")
        assert (h, w) == (15, 20) and (hc, wc) == (7, 10)
        assert kpts.shape == (h * w, 2) and desc.shape == (256, h * w) and desc.dtype == np.float16
        assert r.array(key, "coarse/descriptors").shape == (512, hc * wc)
        assert r.array(key, "norms/conv1_2").shape == (120, 160)
        np.testing.assert_allclose(np.linalg.norm(desc.astype(np.float32), axis=0), 1, atol=2e-3)
        # each keypoint lies inside its own pool3 cell (8x8 pixels)
        rows, cols = np.divmod(np.arange(h * w), w)
        assert np.all((kpts[:, 0] >= cols * 8) & (kpts[:, 0] <= cols * 8 + 8))
        assert np.all((kpts[:, 1] >= rows * 8) & (kpts[:, 1] <= rows * 8 + 8))
        assert list(r.array(key, "image_size")) == [160, 120]


def test_keypoints_are_in_full_resolution_pixels(tmp_path):
    folder = tmp_path / "im"
    folder.mkdir()
    Image.fromarray(textured_image(0, (640, 480))).save(folder / "a.png")
    pixel = extract(replace(CONF, subpixel=False), folder, tmp_path / "out", device="cpu")
    refined = extract(CONF, folder, tmp_path / "out", device="cpu")
    with H5Reader(pixel) as r:
        kpts = r.array(("a.png",), "keypoints")
        assert list(r.array(("a.png",), "image_size")) == [640, 480]
    with H5Reader(refined) as r:
        sub = r.array(("a.png",), "keypoints")
    assert kpts[:, 0].max() < 640 and kpts[:, 0].max() > 600 and kpts.min() > 0
    # pixel centres of a 4x downscaled grid: (j + 0.5) * 4
    assert np.allclose(np.mod(kpts / 4 - 0.5, 1), 0)
    # sub-pixel refinement moves keypoints by at most half a (downscaled) pixel, and some do move
    shift = np.abs(sub - kpts)
    assert shift.max() <= 2.0 + 1e-5 and (shift > 0.01).mean() > 0.3


def test_corrupt_images_are_skipped_and_reported(image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (image_folder / "notes.txt").write_text("hello")
    path = extract(CONF, image_folder, tmp_path / "out", device="cpu")
    skipped = json_attr(path, "skipped")
    assert list(skipped) == ["broken.jpg"] and "broken.jpg" in skipped["broken.jpg"]
    assert json_attr(path, "last_run")["computed"] == 4
    assert json_attr(path, "ignored_files") == ["notes.txt"]


def test_changed_options_use_another_file_and_same_options_resume(image_folder, tmp_path):
    a = extract(CONF, image_folder, tmp_path, device="cpu")
    b = extract(replace(CONF, max_size=128), image_folder, tmp_path, device="cpu")
    assert a != b
    again = extract(CONF, image_folder, tmp_path, device="cpu")
    assert again == a and json_attr(a, "last_run")["reused"] == 4


def test_interrupted_run_resumes_without_redoing_images(image_folder, tmp_path, monkeypatch):
    calls = []
    original = dense_vgg.DenseVGGExtractor.__call__

    def flaky(self, image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, image)

    monkeypatch.setattr(dense_vgg.DenseVGGExtractor, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(CONF, image_folder, tmp_path, device="cpu")
    with h5py.File(features_path(CONF, tmp_path), "r") as f:
        assert len(f.keys()) == 2
    calls.clear()
    monkeypatch.setattr(dense_vgg.DenseVGGExtractor, "__call__", original)
    path = extract(CONF, image_folder, tmp_path, device="cpu")
    run = json_attr(path, "last_run")
    assert run == {**run, "computed": 2, "reused": 2}


@pytest.mark.slow
def test_killed_process_resumes(tmp_path):
    """SIGKILL during extraction, then the same command finishes only the rest."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(textured_image(i, (480, 360))).save(folder / f"{i:02d}.jpg")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "sfmkit",
        "-v",
        "extract",
        str(folder),
        "-o",
        str(out),
        "--weights",
        "random",
        "--max-size",
        "480",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    done = 0
    deadline = time.time() + 120
    assert proc.stderr is not None
    for line in proc.stderr:
        done += "extracted" in line
        if done >= 3 or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 3
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    path = next(out.glob("features-*.h5"))
    run = json_attr(path, "last_run")
    assert run["reused"] >= 3 and run["computed"] == 12 - run["reused"]
    with H5Reader(path) as r:
        assert len(r.items(1)) == 12


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        replace(CONF, max_size=10)
    with pytest.raises(ConfigError):
        replace(CONF, not_an_option=1)
    with pytest.raises(ConfigError):
        replace(get_conf("sift"), max_size=0)
    with pytest.raises(ConfigError, match="precision"):
        replace(CONF, precision="float16")


def test_too_thin_images_are_skipped_not_fatal(image_folder, tmp_path):
    Image.fromarray(textured_image(9, (1600, 40))).save(image_folder / "strip.png")
    path = extract(CONF, image_folder, tmp_path, device="cpu")
    skipped = json_attr(path, "skipped")
    assert list(skipped) == ["strip.png"] and "too small" in skipped["strip.png"]
    assert json_attr(path, "last_run")["computed"] == 4


def test_features_of_another_image_folder_are_not_reused(image_folder, tmp_path):
    path = extract(CONF, image_folder, tmp_path, device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    for p in image_folder.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    # the same images in another place (a moved folder): reused, nothing recomputed
    extract(CONF, other, tmp_path, device="cpu")
    assert json_attr(path, "last_run")["computed"] == 0
    first = sorted(other.iterdir())[0]
    Image.fromarray(textured_image(7, (96, 64))).save(first)  # one image replaced
    with pytest.raises(ConfigError, match="not the ones"):
        extract(CONF, other, tmp_path, device="cpu")


def test_pyramid_levels_are_concatenated_after_level_0(tmp_path):
    folder = tmp_path / "im"
    folder.mkdir()
    Image.fromarray(textured_image(0, (320, 256))).save(folder / "a.png")
    conf = replace(CONF, max_size=320, pyramid=(1.0, 0.5, 0.25, 0.1))  # 0.1: 32x26, too small
    with H5Reader(extract(conf, folder, tmp_path / "out", device="cpu")) as r:
        key = ("a.png",)
        offsets = r.array(key, "pyramid/offsets")
        kpts = r.array(key, "keypoints")
        assert list(offsets) == [0, 32 * 40, 32 * 40 + 16 * 20, 32 * 40 + 16 * 20 + 8 * 10]
        assert len(kpts) == offsets[-1] and r.array(key, "descriptors").shape == (256, offsets[-1])
        assert list(r.array(key, "pyramid/1/grid_shape")) == [16, 20]
        assert r.array(key, "pyramid/2/coarse/descriptors").shape == (512, 4 * 5)
        assert r.optional(key, "pyramid/3/grid_shape") is None
        # level 1 keypoints: one per 16x16 full-resolution cell (8 px cells of the half-size image)
        level1 = kpts[offsets[1] : offsets[2]]
        rows, cols = np.divmod(np.arange(16 * 20), 20)
        assert np.all((level1[:, 0] >= cols * 16 - 1) & (level1[:, 0] <= cols * 16 + 17))
        assert np.all((level1[:, 1] >= rows * 16 - 1) & (level1[:, 1] <= rows * 16 + 17))
    with pytest.raises(ConfigError):
        replace(CONF, pyramid=(0.5, 0.25))
    with pytest.raises(ConfigError):
        replace(CONF, pyramid=(1.0, 0.5, 0.5))


def test_large_captures_are_extracted_smaller_for_the_whole_collection(tmp_path):
    folder = tmp_path / "im"
    folder.mkdir()
    for i, size in enumerate([(640, 480), (640, 480), (320, 240)]):
        Image.fromarray(textured_image(i, size)).save(folder / f"{i}.png")
    rule = replace(CONF, large_images=(600, 96))  # median longer side 640 >= 600: 96 px
    path = extract(rule, folder, tmp_path / "out", device="cpu")
    assert json_attr(path, "extraction_size") == 96 and json_attr(path, "last_run")["extraction_size"] == 96
    with H5Reader(path) as r:  # one size for all: the 320-px image is extracted at 96 px too
        assert list(r.array(("2.png",), "grid_shape")) == [9, 12]
        assert list(r.array(("0.png",), "grid_shape")) == [9, 12]
        assert list(r.array(("0.png",), "image_size")) == [640, 480]
    # --max-size turns the rule and the enlargement off; the rule never extracts above max_size
    assert with_max_size(rule, 160).large_images is None and with_max_size(rule, 160).upscale == 1.0
    assert extraction_size(with_max_size(rule, 160), 10_000) == 160
    assert extraction_size(replace(rule, large_images=(600, 200)), 10_000) == 160
    assert extraction_size(get_conf("sift"), 10_000) == get_conf("sift").max_size
    # more small images move the median below the threshold: the file keeps its one size
    for i in range(3, 6):
        Image.fromarray(textured_image(i, (320, 240))).save(folder / f"{i}.png")
    assert extract(rule, folder, tmp_path / "out", device="cpu") == path
    assert json_attr(path, "last_run")["computed"] == 3 and json_attr(path, "extraction_size") == 96
    with H5Reader(path) as r:
        assert list(r.array(("5.png",), "grid_shape")) == [9, 12]
    extract(rule, folder, tmp_path / "out", device="cpu", overwrite=True)  # starts again: the rule
    assert json_attr(path, "extraction_size") == 160


def test_small_images_are_enlarged_towards_the_extraction_size(tmp_path):
    """A 160x120 image extracted at up to 640 px is read at 2x (the ``upscale`` cap); its
    keypoints come back in the file's pixels."""
    folder = tmp_path / "im"
    folder.mkdir()
    Image.fromarray(textured_image(0, (160, 120))).save(folder / "0.png")
    path = extract(replace(CONF, max_size=640, large_images=None), folder, tmp_path / "out", device="cpu")
    with H5Reader(path) as r:
        assert list(r.array(("0.png",), "grid_shape")) == [30, 40]  # pool3 of 320x240
        assert np.allclose(r.array(("0.png",), "scale"), 0.5)
        keypoints = r.array(("0.png",), "keypoints")
    assert keypoints.min() >= 0 and keypoints[:, 0].max() <= 160 and keypoints[:, 1].max() <= 120
    # --max-size: never enlarged
    plain = extract(with_max_size(CONF, 640), folder, tmp_path / "plain", device="cpu")
    with H5Reader(plain) as r:
        assert list(r.array(("0.png",), "grid_shape")) == [15, 20]
