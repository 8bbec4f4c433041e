"""Listing and decoding images.

Coordinates: an image of width W and height H covers ``[0, W] x [0, H]``; the centre of the
top-left pixel is ``(0.5, 0.5)`` (COLMAP's convention, used for every keypoint sfmkit
stores). Sizes are ``(W, H)`` *after* applying the EXIF orientation, which is how every stage
and the COLMAP model see an image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sfmkit.errors import ConfigError, ImageReadError, SfmkitError
from sfmkit.io.h5 import H5Reader
from sfmkit.io.pairs import check_names

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".pnm"}
)
#: Images with more pixels than this are refused (a decompression-bomb guard, 400 MP).
DEFAULT_MAX_PIXELS = 400_000_000
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}
_PIL_LIMIT_LOCK = threading.Lock()


#: RGB weights of the luminance (ITU-R BT.601, as OpenCV and PIL).
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImageListing:
    """Images found under a folder.

    Attributes:
        root: the image folder.
        names: image paths relative to ``root`` (POSIX separators), sorted.
        ignored: files whose extension is not an image extension (``K.txt``, ...).
    """

    root: Path
    names: list[str]
    ignored: list[str]


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image, resized for a network or detector.

    Attributes:
        rgb: (h, w, 3) uint8, the resized image.
        size: (W, H) of the full-resolution image after EXIF orientation.
        scale: (sx, sy) = full-resolution size / resized size; a point ``p`` in resized
            coordinates is ``p * scale`` in full-resolution coordinates.
    """

    rgb: np.ndarray
    size: tuple[int, int]
    scale: tuple[float, float]

    def gray(self) -> np.ndarray:
        """(h, w) float32 luminance in [0, 255] (:data:`LUMA` weights)."""
        return self.rgb.astype(np.float32) @ np.array(LUMA, np.float32)


def list_images(root: Path, image_list: Sequence[str] | None = None) -> ImageListing:
    """Find the images under ``root`` (recursively), or check an explicit list of names.

    Raises:
        SfmkitError: the folder does not exist, holds no images, or ``image_list`` names a
            missing file or the same image twice.
    """
    root = Path(root)
    if not root.exists():
        raise SfmkitError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise SfmkitError(f"{root} is not a folder: pass the folder that holds the images")
    if image_list is not None:
        return _check_image_list(root, image_list)
    names, ignored = [], []
    for rel in _walk_files(root):
        (names if rel.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(rel.as_posix())
    if not names:
        raise SfmkitError(
            f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "pass the folder that holds the photos"
        )
    _warn_case_collisions(names)
    check_names(names, root)
    if ignored:
        logger.info("ignoring %d non-image file(s) in %s: %s", len(ignored), root, ignored[:5])
    return ImageListing(root, names, ignored)


def _walk_files(root: Path) -> list[Path]:
    """Files under ``root`` relative to it, sorted; hidden files and folders skipped.
    Symbolic links to folders are followed (each real folder once, so a link loop ends)."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            logger.warning("%s links to a folder already listed (%s); not listed twice", top, real)
            continue
        seen.add(real)
        # real folders before links, each group by name: an image reachable both ways is
        # listed under the same name on every run
        dirs[:] = sorted(
            (d for d in dirs if not d.startswith(".")),
            key=lambda d: (os.path.islink(os.path.join(top, d)), d),
        )
        rel_top = Path(top).relative_to(root)
        for name in files:
            if not name.startswith(".") and os.path.isfile(os.path.join(top, name)):
                found.append(rel_top / name)
    return sorted(found)


def _check_image_list(root: Path, image_list: Sequence[str]) -> ImageListing:
    # names are taken exactly (a leading space can be part of one); white space around a
    # name that exists only without it is the list's, not the name's
    image_list = [
        n if (root / n).is_file() or not (root / n.strip()).is_file() else n.strip() for n in image_list
    ]
    # a line starting with '#' is a comment unless it names an image
    image_list = [n for n in image_list if not n.startswith("#") or (root / n).is_file()]
    seen: dict[str, int] = defaultdict(int)
    for name in image_list:
        seen[name] += 1
    duplicates = sorted(n for n, c in seen.items() if c > 1)
    if duplicates:
        raise SfmkitError(f"the image list names these images more than once: {duplicates[:10]}")
    unsafe = [n for n in image_list if Path(n).is_absolute() or ".." in Path(n).parts or n.startswith("./")]
    if unsafe:
        raise SfmkitError(
            f"image list entries must be paths relative to {root}, without '..' or './': {unsafe[:5]}"
        )
    missing = [n for n in image_list if not (root / n).is_file()]
    if missing:
        raise SfmkitError(
            f"{len(missing)} listed image(s) not found under {root}: {missing[:5]}; list names "
            "relative to the image folder"
        )
    if not image_list:
        raise SfmkitError("the image list is empty")
    check_names(image_list, root)
    return ImageListing(root, list(image_list), [])


def _warn_case_collisions(names: list[str]) -> None:
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[name.lower()].append(name)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes:
        logger.warning(
            "image names that differ only in case (they clash on Windows/macOS file systems "
            "and in COLMAP databases moved there): %s",
            clashes[:5],
        )


#: Item attribute of a stage file holding the fingerprint of the image it was computed from.
FINGERPRINT = "image_fingerprint"

#: Bytes hashed at each end of an image file by :func:`image_fingerprint`.
_FINGERPRINT_BYTES = 1 << 18


def image_fingerprint(path: Path) -> str:
    """A cheap identity of an image file: its size and a BLAKE2b digest of its first and last
    256 KiB. Stored with each image's features, so that a later stage can tell that an image
    folder is the one the features came from, wherever either folder has moved."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=12)
    with path.open("rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()}"


def stored_fingerprints(path: Path, names: Sequence[str]) -> dict[str, str | None]:
    """The image fingerprints recorded in the stage file ``path`` for those of ``names`` it
    holds (None where an older sfmkit recorded none)."""
    with H5Reader(path) as reader:
        return {n: reader.attrs((n,)).get(FINGERPRINT) for n in names if reader.has((n,))}


def check_fingerprints(
    stored: Mapping[str, str | None], image_dir: Path, made: Path, recorded_dir: str | None = None
) -> None:
    """Refuse an image folder whose images differ from those ``made`` (a stage file) was
    computed from; ``stored`` maps image names to their recorded fingerprints. Where an older
    sfmkit recorded none, the folder must be the one it recorded (``recorded_dir``)."""
    image_dir = Path(image_dir)
    differ = []
    for name, value in stored.items():
        if not value:
            if recorded_dir and Path(recorded_dir) != image_dir.resolve():
                differ.append(name)
            continue
        path = image_dir / name
        if not path.is_file() or image_fingerprint(path) != value:
            differ.append(name)
    if differ:
        raise ConfigError(
            f"{len(differ)} image(s) in {image_dir} are not the ones {made} was computed from "
            f"(first: {differ[0]}); pass the image folder the features were extracted from, or "
            "pass --overwrite (or another -o) to start again from these images"
        )


def exif_camera(path: Path) -> str:
    """``make model`` from the EXIF data of ``path`` ("" when absent or unreadable); opens the
    file without decoding pixels, so any image size is fine and Pillow warns of nothing."""
    try:
        with _open(Path(path), max_pixels=2**62) as image:
            exif = image.getexif()
            return f"{exif.get(0x010F, '')} {exif.get(0x0110, '')}".strip()
    except Exception:  # noqa: BLE001 - EXIF is optional metadata
        return ""


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` lazily, turning every decoder failure into :class:`ImageReadError`."""
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed files
        raise ImageReadError(
            f"{path}: not a readable image ({exc.__class__.__name__}: {exc}); remove it or "
            "replace it with a valid JPEG/PNG/TIFF"
        ) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageReadError(
            f"{path}: {width}x{height} is {width * height / 1e6:.0f} MP, more than the "
            f"{max_pixels / 1e6:.0f} MP limit; downscale it, or raise the limit (--max-pixels)"
        )
    if width < 16 or height < 16:
        raise ImageReadError(f"{path}: {width}x{height} is too small to extract features from")
    return image


def upright_exif(path: Path) -> bytes:
    """The EXIF block of ``path`` for a copy written from :func:`read_image`'s pixels: the
    camera make, model and focal-length tags kept (angle-based, so valid at any size), the
    orientation removed (the pixels are already upright). Empty when absent or unreadable."""
    try:
        with _open(Path(path), max_pixels=2**62) as image:
            exif = image.getexif()
            exif.get_ifd(0x8769)  # load the Exif sub-IFD (focal lengths) so that it is written
            exif.pop(_EXIF_ORIENTATION, None)
            return exif.tobytes() if len(exif) else b""
    except Exception:  # noqa: BLE001 - EXIF is optional metadata
        return b""


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        logger.warning("%s: unreadable EXIF block, orientation ignored", image.filename)
        return 1


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) after EXIF orientation, read from the header only."""
    with _open(Path(path), max_pixels) as image:
        width, height = image.size
        if _orientation(image) in _SWAPS_AXES:
            width, height = height, width
    return width, height


#: smallest enlargement :func:`target_size` makes (a smaller one adds blur, not detail)
MIN_ENLARGEMENT = 1.25


def target_size(size: tuple[int, int], max_size: int | None, upscale: float = 1.0) -> tuple[int, int]:
    """Size with the longer side at most ``max_size``; a smaller image is enlarged towards
    ``max_size`` by at most ``upscale`` (1: never enlarged), and only by ``MIN_ENLARGEMENT`` or more."""
    width, height = size
    longer = max(width, height)
    if max_size is None or longer == max_size:
        return width, height
    ratio = max_size / longer if longer > max_size else min(upscale, max_size / longer)
    if 1.0 <= ratio < MIN_ENLARGEMENT:
        return width, height
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode (L, P, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float32)
        high = float(array.max()) if array.size else 0.0
        if high > 255.0:
            array = array * (255.0 / (65535.0 if high <= 65535.0 else high))
        gray = np.clip(array + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    try:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, image).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot convert pixel mode {image.mode} to RGB ({exc})") from exc


def read_image(
    path: Path, max_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, upscale: float = 1.0
) -> LoadedImage:
    """Decode ``path`` to 8-bit RGB, apply its EXIF orientation and resize it (see
    :func:`target_size`; enlarged by bicubic interpolation).

    Grayscale, palette, CMYK, alpha and 16-bit images are converted to RGB; JPEGs are decoded
    at a reduced scale when that suffices (fast and light for huge images).

    Raises:
        ImageReadError: the file is missing, corrupt, not an image or too large.
    """
    path = Path(path)
    with _open(path, max_pixels) as image:
        orientation = _orientation(image)
        raw_w, raw_h = image.size
        size = (raw_h, raw_w) if orientation in _SWAPS_AXES else (raw_w, raw_h)
        out_w, out_h = target_size(size, max_size, upscale)
        try:
            if image.format == "JPEG" and out_w < size[0]:
                request = (out_h, out_w) if orientation in _SWAPS_AXES else (out_w, out_h)
                image.draft("RGB", request)
            image.load()  # the first frame of multi-frame files
            rgb = _to_rgb(image, path)
            rgb = _apply_orientation(rgb, orientation)
            if rgb.size != (out_w, out_h):
                rgb = rgb.resize((out_w, out_h), Image.Resampling.BICUBIC)
            array = np.asarray(rgb, dtype=np.uint8).copy()
        except ImageReadError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed data
            raise ImageReadError(
                f"{path}: the file is truncated or corrupt ({exc.__class__.__name__}: {exc}); "
                "re-export or remove it"
            ) from exc
    return LoadedImage(array, size, (size[0] / out_w, size[1] / out_h))


_TRANSPOSES = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation tag (values 2-8), as viewers display the image."""
    for op in _TRANSPOSES.get(orientation, ()):
        image = image.transpose(op)
    return image
