"""``sfmkit localize``: find a close-up inside a wide image with FTFY, and write the boxes
(JSON, best first, full-resolution source pixels) and a picture of them."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sfmkit.errors import SfmkitError
from sfmkit.io.images import read_image
from sfmkit.localize.search import Found, LocalizeConf, check_query, localize
from sfmkit.models.ftfy import load_network
from sfmkit.utils.device import resolve_device
from sfmkit.utils.files import write_text_atomic

logger = logging.getLogger(__name__)

#: The FTFY model shipped with sfmkit (trained by ``sfmkit train localize``; see its card).
SHIPPED_FTFY = Path(__file__).resolve().parents[1] / "models" / "data" / "ftfy-small.pt"
#: Longer side of the picture of the boxes.
PICTURE_SIDE = 1600
COLOURS = ((255, 40, 40), (255, 160, 0), (240, 240, 0), (0, 200, 255), (180, 90, 255))


@dataclass
class LocalizeResult:
    found: Found
    json_path: Path
    picture: Path
    seconds: float
    model: str


def draw_boxes(source: np.ndarray, found: Found, path: Path) -> Path:
    """The source (at most :data:`PICTURE_SIDE` px) with the boxes, the best one thickest."""
    image = Image.fromarray(source)
    scale = min(1.0, PICTURE_SIDE / max(image.size))
    if scale < 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    draw = ImageDraw.Draw(image)
    for rank in range(len(found.boxes) - 1, -1, -1):
        box = found.boxes[rank] * scale
        colour = COLOURS[rank % len(COLOURS)]
        draw.rectangle(tuple(float(v) for v in box), outline=colour, width=4 if rank == 0 else 2)
        draw.text(
            (float(box[0]) + 3, float(box[1]) + 2), f"{rank + 1}: {found.confidence[rank]:.2f}", fill=colour
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def run_localize(
    query: Path,
    source: Path,
    out_dir: Path,
    conf: LocalizeConf = LocalizeConf(),
    *,
    model: Path | None = None,
    json_path: Path | None = None,
    device: str = "auto",
) -> LocalizeResult:
    """Read both images, search the close-up, write ``boxes.json`` (or ``json_path``) and
    ``boxes.png`` in ``out_dir``."""
    path = SHIPPED_FTFY if model is None else Path(model)
    if model is None and not path.is_file():
        raise SfmkitError(
            "this sfmkit has no trained FTFY model yet: train one with 'sfmkit train localize' "
            "and pass it with --model"
        )
    net, card = load_network("ftfy", path)
    net = net.to(resolve_device(device))
    start = time.perf_counter()
    q, s = read_image(query), read_image(source)
    check_query(q.size, s.size, f"{query} in {source}")
    found = localize(net, q.rgb, s.rgb, conf)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    json_path = Path(json_path) if json_path is not None else out_dir / "boxes.json"
    payload = {"query": str(query), "source": str(source), "model": card["source"], **found.as_json()}
    write_text_atomic(json_path, json.dumps(payload, indent=1))
    picture = draw_boxes(s.rgb, found, out_dir / "boxes.png")
    logger.info(
        "%s in %s: best box %s (confidence %.3f)", query, source, found.boxes[0].round(1), found.confidence[0]
    )
    return LocalizeResult(found, json_path, picture, seconds, card["source"])
