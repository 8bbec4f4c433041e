"""``sfmkit pair-verify``: do two images show the same surface, and where? GetNet's score and
decision, both predicted regions (pixels of each input image) as JSON, and a picture of the two
images side by side with their regions drawn."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from sfmkit.errors import SfmkitError
from sfmkit.io.images import read_image
from sfmkit.retrieval.pair_filter import PairCheck, PairFilterConf, check_pairs, load_images, load_verifier
from sfmkit.utils.files import write_text_atomic

#: Height of each image in the picture.
PICTURE_HEIGHT = 480


@dataclass
class PairVerifyResult:
    check: PairCheck
    json_path: Path
    picture: Path
    model: Path
    seconds: float


def draw_regions(a: Path, b: Path, check: PairCheck, path: Path) -> Path:
    """Both images side by side (each :data:`PICTURE_HEIGHT` px high), each with its region."""
    tiles = []
    for image_path, box in ((a, check.region_a), (b, check.region_b)):
        loaded = read_image(image_path, max_size=2 * PICTURE_HEIGHT)
        tile = Image.fromarray(loaded.rgb)
        scale = PICTURE_HEIGHT / tile.height
        tile = tile.resize((max(1, round(tile.width * scale)), PICTURE_HEIGHT), Image.Resampling.BILINEAR)
        f = tile.width / loaded.size[0]
        ImageDraw.Draw(tile).rectangle(tuple(v * f for v in box), outline=(255, 40, 40), width=4)
        tiles.append(tile)
    canvas = Image.new("RGB", (tiles[0].width + tiles[1].width + 8, PICTURE_HEIGHT + 28), (0, 0, 0))
    canvas.paste(tiles[0], (0, 28))
    canvas.paste(tiles[1], (tiles[0].width + 8, 28))
    verdict = "same surface" if check.same else "different"
    ImageDraw.Draw(canvas).text((6, 6), f"{verdict}: score {check.score:.3f}", fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def run_pair_verify(
    a: Path,
    b: Path,
    out_dir: Path,
    *,
    model: Path | None = None,
    threshold: float = 0.5,
    json_path: Path | None = None,
    device: str = "auto",
) -> PairVerifyResult:
    """Check one pair; write ``pair.json`` (or ``json_path``) and ``pair.png`` in ``out_dir``."""
    start = time.perf_counter()
    PairFilterConf(threshold=threshold)  # a score in (0, 1), or a clear error
    a, b = Path(a), Path(b)
    for p in (a, b):
        if not p.is_file():
            raise SfmkitError(f"{p} does not exist or is not a file: give two image files")
    net, card, path = load_verifier(model, device)
    loaded = load_images(Path("/"), [str(a.resolve()), str(b.resolve())], net.conf.size, net.conf.channels)
    (check,) = check_pairs(net, card, loaded, [(str(a.resolve()), str(b.resolve()))], threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_out = write_text_atomic(
        Path(json_path) if json_path else out_dir / "pair.json", json.dumps(check.as_json(), indent=1)
    )
    picture = draw_regions(a, b, check, out_dir / "pair.png")
    return PairVerifyResult(check, json_out, picture, path, time.perf_counter() - start)
