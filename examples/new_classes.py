"""Write an image folder of classes the offline demo has never seen, for ``proteus learn``.

The demo preset learns all 20 classes of Fashion-MNIST + MNIST-5k. The classes written here are
new ones made from the same offline assets: colour-inverted Fashion-MNIST images of the chosen
classes ("inverted sneaker", ...), white garments on black becoming black on white, which the
demo model must learn as a new task. Images come from the official *test* split, which the demo
trains on nowhere.

    python examples/new_classes.py new-classes/          # 2 classes x 60 PNG files
    proteus learn runs/vision-fmnist-mnist-proteus-s1993/model new-classes/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from proteus.data import DATASETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--classes", nargs="+", default=["Sneaker", "Bag"],
                        help="Fashion-MNIST class names to invert")
    parser.add_argument("--per-class", type=int, default=60)
    args = parser.parse_args(argv)
    data = DATASETS.build("fashion-mnist", {})
    for name in args.classes:
        if name not in data.class_names:
            parser.error(f"unknown class {name!r}; Fashion-MNIST has {data.class_names}")
        rows = np.flatnonzero((data.labels == data.class_names.index(name))
                              & (data.official_split == 1))[: args.per_class]
        folder = args.output / f"inverted {name.lower()}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            Image.fromarray(255 - data.items[row]).save(folder / f"{i:04d}.png")
        print(f"wrote {len(rows)} images to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
