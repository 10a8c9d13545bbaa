"""Fashion-MNIST in the idx format (the Debian package dataset-fashion-mnist ships it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS, read_idx
from proteus.registry import Options


FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_HINT = ("the Debian package dataset-fashion-mnist provides it "
                 "(apt install dataset-fashion-mnist)")


class FashionMNISTOptions(Options):
    root: str = "/usr/share/datasets/fashion-mnist"


@DATASETS.register("fashion-mnist", FashionMNISTOptions,
                   "Fashion-MNIST, 70,000 28x28 grey images, 10 classes, official train/test")
def read_fashion_mnist(options: FashionMNISTOptions) -> LabeledData:
    """Fashion-MNIST from ``root/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (idx format).

    Items are train then test; ``official_split`` is 0 for the 60,000 train, 1 for the 10,000 test.
    """
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"{root}: Fashion-MNIST folder not found; {_FASHION_HINT}")
    images, labels, split = [], [], []
    for code, part in ((0, "train"), (1, "t10k")):
        x_path = _find_idx(root, f"{part}-images-idx3-ubyte")
        y_path = _find_idx(root, f"{part}-labels-idx1-ubyte")
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{x_path}: expected uint8 images of shape (N, 28, 28), "
                            f"found {x.dtype} {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{y_path}: expected a 1-d label vector, found shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{y_path}: {len(y)} labels but {x_path.name} has {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= len(FASHION_CLASSES)):
            bad = int(np.argmax((y < 0) | (y >= len(FASHION_CLASSES))))
            raise DataError(f"{y_path}: label {int(y[bad])} at record {bad} is outside 0..9")
        images.append(x)
        labels.append(y.astype(np.int64))
        split.append(np.full(len(y), code, dtype=np.int8))
    return LabeledData(
        items=np.concatenate(images),
        labels=np.concatenate(labels),
        class_names=list(FASHION_CLASSES),
        modality="image",
        official_split=np.concatenate(split),
        source="fashion-mnist",
    )


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root / (stem + '.gz')}: file not found (nor {stem} un-gzipped); "
                    f"{_FASHION_HINT}")
