"""The digits protocol of GetNet (Yu et al., Table I, "distorted MNIST"): a 28 x 28 glyph pasted
at a random position into a 60 x 60 noisy background; a pair is *same* when both glyphs are of
one class. The shared region of each image is the glyph's box.

Two glyph sources, both offline:

- ``glyphs``: digits 0-9 drawn by sfmkit from the TrueType fonts matplotlib bundles (DejaVu,
  STIX, Computer Modern), each with a random rotation, shear, scale and stroke offset. The
  fonts are split: ``train`` draws from :data:`TRAIN_FONTS`, ``test`` from :data:`TEST_FONTS`,
  so a test never shows a typeface seen in training.
- ``fashion``: Fashion-MNIST (10 classes of 28 x 28 clothing images), from Debian's package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); ``train`` reads its
  training file, ``test`` its test file.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.pairsets import KINDS, PairSet
from sfmkit.utils.progress import track

SOURCES = ("glyphs", "fashion")
SPLITS = ("train", "test")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
GLYPH = 28
TRAIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
)
TEST_FONTS = (
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneralBol.ttf",
    "cmtt10.ttf",
)


@cache
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), px)


def draw_glyph(digit: int, font: str, rng: np.random.Generator) -> np.ndarray:
    """One distorted digit, (28, 28) uint8, white on black, roughly centred."""
    big = 4 * GLYPH
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    f = _font(font, int(big * rng.uniform(0.65, 0.85)))
    stroke = int(rng.integers(0, 4))
    x0, y0, x1, y1 = draw.textbbox((0, 0), str(digit), font=f, stroke_width=stroke)
    draw.text(
        ((big - (x1 - x0)) / 2 - x0, (big - (y1 - y0)) / 2 - y0),
        str(digit),
        fill=255,
        font=f,
        stroke_width=stroke,
        stroke_fill=255,
    )
    angle = np.deg2rad(rng.uniform(-20, 20))
    shear = rng.uniform(-0.25, 0.25)
    scale = rng.uniform(0.85, 1.1)
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) / scale
    centre = np.array([big / 2, big / 2])
    offset = centre - m @ centre
    canvas = canvas.transform(
        (big, big), Image.Transform.AFFINE, (*m[0], offset[0], *m[1], offset[1]), Image.Resampling.BILINEAR
    )
    # fit the ink into a 20-ish pixel box centred in 28 x 28, as MNIST does
    box = canvas.getbbox() or (0, 0, big, big)
    ink = canvas.crop(box)
    side = rng.uniform(18, 22) / max(ink.size)
    ink = ink.resize(
        (max(1, round(ink.width * side)), max(1, round(ink.height * side))), Image.Resampling.LANCZOS
    )
    out = Image.new("L", (GLYPH, GLYPH), 0)
    out.paste(ink, ((GLYPH - ink.width) // 2, (GLYPH - ink.height) // 2))
    return np.asarray(out)


@cache
def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise SfmkitError(
            f"Fashion-MNIST is not at {FASHION_DIR}: install Debian's package "
            "(apt install dataset-fashion-mnist), or use --source glyphs"
        )
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, GLYPH, GLYPH)
    with gzip.open(labels_path) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def digits_pair_set(
    n_pairs: int,
    *,
    source: str = "glyphs",
    split: str = "train",
    seed: int = 0,
    size: int = 60,
    noise: float = 0.35,
) -> PairSet:
    """``n_pairs`` pairs, half of them same-class, each image a glyph at a random place in noise.

    ``noise`` is the amplitude of the uniform background noise (0-1 of the full range); the
    glyph is added on top and clipped.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown digits source {source!r}; choose one of {list(SOURCES)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if n_pairs < 1 or size < GLYPH or not 0 <= noise <= 1:
        raise ConfigError(f"digits pairs need n >= 1, size >= {GLYPH} and noise in [0, 1]")
    rng = np.random.default_rng([seed, SPLITS.index(split), SOURCES.index(source)])
    fonts = TRAIN_FONTS if split == "train" else TEST_FONTS
    if source == "fashion":
        pool, pool_labels = _fashion(split)
        by_class = [np.flatnonzero(pool_labels == c) for c in range(10)]

    def glyph(cls: int) -> np.ndarray:
        if source == "fashion":
            return pool[rng.choice(by_class[cls])]
        return draw_glyph(cls, fonts[int(rng.integers(len(fonts)))], rng)

    images = np.empty((2 * n_pairs, 1, size, size), np.uint8)
    region = np.empty((n_pairs, 2, 4), np.float32)
    group = np.empty(2 * n_pairs, np.int32)
    same = np.arange(n_pairs) % 2 == 0
    rng.shuffle(same)
    for p in track(range(n_pairs), "digit pairs"):
        a = int(rng.integers(10))
        b = a if same[p] else int((a + rng.integers(1, 10)) % 10)
        for k, cls in enumerate((a, b)):
            canvas = rng.uniform(0, noise * 255, (size, size))
            x, y = (int(v) for v in rng.integers(0, size - GLYPH + 1, 2))
            canvas[y : y + GLYPH, x : x + GLYPH] += glyph(cls)
            images[2 * p + k, 0] = np.clip(canvas, 0, 255).astype(np.uint8)
            region[p, k] = np.array([x, y, x + GLYPH, y + GLYPH], np.float32) / size
            group[2 * p + k] = cls
    pairs = np.arange(2 * n_pairs, dtype=np.int32).reshape(-1, 2)
    return PairSet(
        images=images,
        names=[f"{c}/{i}" for i, c in enumerate(group)],
        group=group,
        pairs=pairs,
        same=same.astype(np.uint8),
        kind=np.where(same, KINDS["strong"], KINDS["negative-other"]).astype(np.uint8),
        overlap=same.astype(np.float32),
        region=region,
        attrs={},
    )
