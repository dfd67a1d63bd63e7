"""Example images for the pages (the Inverse tab's "Example image"): procedural scenes of the suite, written as PNGs.

    python -m studio.shapes.samples --out assets/samples --n 24
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from studio.shapes.scenes import make_scene


def write_samples(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"scene-{k:03d}.png"
        Image.fromarray(make_scene(np.random.default_rng(seed + k)).image).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("assets/samples"))
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="scene k uses seed + k (as the Inverse tab's old scene seed)")
    args = parser.parse_args(argv)
    print(f"wrote {len(write_samples(args.out, args.n, args.seed))} images to {args.out}")


if __name__ == "__main__":
    main()
