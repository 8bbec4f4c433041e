"""GetNet against the plain Siamese baseline (issue 16): the same data and budget, several seeds,
on the digits protocol and on held-out rendered scenes. Every step is an ``sfmkit`` command, so
the run is what a user would type; finished outputs are reused (delete the folder to redo).

    python benchmarks/pair_verify.py -o bench_out/pairs --protocol digits scenes \
        [--seeds 0 1 2] [--variants getnet siamese getnet-joint] [--steps 1200]

Protocols:

- ``digits``: ``build-pair-set --digits`` (training: 10,000 pairs, 10 fonts; test: 2,000 pairs,
  5 other fonts) at 60x60; ``--source fashion`` for Fashion-MNIST (Debian's package).
- ``scenes``: rendered scenes (``sfmkit synth``, all three kinds) with ``build-gl3d-labels``
  from the exact mesh; training seeds 100.., test seeds 21.. (never trained on);
  ``build-pair-set`` at ``--size``.

- ``real`` (``--real IMAGES...``, evaluation only, with the ``scenes`` models): each real image
  folder is reconstructed by ``sfmkit reconstruct``, labelled by ``build-gl3d-labels
  --mesh-from-model``, and all of them make one pair set (negatives across the folders).

Prints one JSON line per model and the markdown table of ``evaluate pairs`` per protocol.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SFMKIT = [sys.executable, "-m", "sfmkit", "--no-progress", "-q"]
VARIANTS = {
    "getnet": ["--stn", "--alternate", "200"],
    "getnet-joint": ["--stn", "--alternate", "0"],
    "getnet-unguided": ["--stn", "--alternate", "200", "--region-weight", "0"],
    "getnet-stack": ["--stn", "--alternate", "200", "--pairing", "stack"],
    "getnet-correlation": ["--stn", "--alternate", "200", "--pairing", "correlation"],
    "siamese": ["--no-stn"],
}
KINDS = ("orbit", "facade", "aerial")


def run(*args: object) -> None:
    cmd = [*SFMKIT, *(str(a) for a in args)]
    print("+", " ".join(cmd[3:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def scenes(root: Path, seeds: list[int], n_images: int, size: str) -> list[Path]:
    labels = []
    for seed in seeds:
        kind = KINDS[seed % len(KINDS)]
        scene = root / f"{kind}-{seed}"
        if not (scene / "model").is_dir():
            run(
                "synth",
                scene,
                "--scene",
                kind,
                "-n",
                n_images,
                "--size",
                size,
                "--seed",
                seed,
                "--points",
                8000,
            )
        if not (scene / "labels.h5").is_file():
            run("build-gl3d-labels", scene / "model", "--mesh", scene / "mesh.ply", "--plot-pairs", 0)
        labels.append(scene / "labels.h5")
    return labels


def data(args: argparse.Namespace, protocol: str) -> tuple[Path, Path, str]:
    out = args.output / protocol
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / "train.h5", out / "test.h5"
    if protocol == "digits":
        for path, split, n in ((train, "train", 10000), (test, "test", 2000)):
            if not path.is_file():
                run("build-pair-set", "--digits", n, "--split", split, "--source", args.source, "-o", path)
        return train, test, "digits"
    train_labels = scenes(
        out / "train", list(range(100, 100 + args.train_scenes)), args.n_images, args.render
    )
    test_labels = scenes(out / "test", list(range(21, 21 + args.test_scenes)), args.n_images, args.render)
    if not train.is_file():
        run("build-pair-set", *train_labels, "-o", train, "--size", args.size, "--seed", 0)
    if not test.is_file():
        run("build-pair-set", *test_labels, "-o", test, "--size", args.size, "--seed", 1)
    return train, test, "scenes"


def real_set(args: argparse.Namespace) -> Path:
    out = args.output / "real"
    labels = []
    for images in args.real:
        name = images.parent.name if images.name in ("images", "mapping") else images.name
        work = out / name
        if not (work / "sfm" / "images.bin").is_file():
            run("reconstruct", images, "-o", work)
        if not (work / "labels.h5").is_file():
            run(
                "build-gl3d-labels",
                work / "sfm",
                "--mesh-from-model",
                "--images",
                images,
                "-o",
                work / "labels.h5",
                "--plot-pairs",
                0,
            )
        labels.append(work / "labels.h5")
    test = out / "test.h5"
    if not test.is_file():
        run("build-pair-set", *labels, "-o", test, "--size", args.size, "--seed", 1)
    return test


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/pairs"))
    parser.add_argument(
        "--protocol", nargs="+", default=["digits", "scenes"], choices=["digits", "scenes", "real"]
    )
    parser.add_argument("--real", nargs="+", type=Path, default=[], help="real image folders (protocol real)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["getnet", "siamese"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--source", default="glyphs", help="digits glyph source: glyphs or fashion")
    parser.add_argument("--train-scenes", type=int, default=48)
    parser.add_argument("--test-scenes", type=int, default=6)
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--render", default="320x240", help="render size of the scenes")
    parser.add_argument("--size", type=int, default=96, help="pair-set image side for the scenes")
    args = parser.parse_args()
    for protocol in args.protocol:
        if protocol == "real":  # the scene models, on real pairs
            train, _, arch = data(args, "scenes")
            test = real_set(args)
        else:
            train, test, arch = data(args, protocol)
        trained = "scenes" if protocol == "real" else protocol
        models = []
        for variant in args.variants:
            for seed in args.seeds:
                model = args.output / trained / f"{variant}-s{seed}.pt"
                if not model.is_file():
                    run(
                        "train",
                        "pair-verify",
                        train,
                        "-o",
                        model,
                        "--arch",
                        arch,
                        *VARIANTS[variant],
                        "--steps",
                        args.steps,
                        "--batch",
                        args.batch,
                        "--seed",
                        seed,
                    )
                models.append(model)
        ev = args.output / protocol / "eval"
        run("evaluate", "pairs", test, *[x for m in models for x in ("--model", m)], "-o", ev)
        results = json.loads((ev / "results.json").read_text())
        for row in results["models"]:
            card = json.loads(Path(row["model"]).with_suffix(".json").read_text())
            print(json.dumps({"protocol": protocol, **row, "train_seconds": card["seconds"]}))
        print(f"\n### {protocol}\n")
        print((ev / "results.md").read_text())


if __name__ == "__main__":
    main()
