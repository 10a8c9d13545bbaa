"""MNIST-5k digits drawn over Fashion-MNIST clutter: a vision source where frozen ImageNet
features lose much of what the digits say, and adapting the backbone has room to win it back.

Each digit image is laid over one Fashion-MNIST image (any of the 70,000, chosen by a fixed
seed, its label unused), dimmed by ``background``, by the pixelwise maximum: the digit's strokes
stay intact, the garment fills the rest. It follows the "MNIST with background images" variants
of Larochelle et al. (2007), with the offline Fashion-MNIST images as the backgrounds. The
composition is this dataset's definition, so it is written here; no library ships it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from proteus.data.base import LabeledData
from proteus.data.readers._common import DATASETS
from proteus.data.readers.fashion_mnist import FashionMNISTOptions, read_fashion_mnist
from proteus.data.readers.mnist5k import MNIST5kOptions, read_mnist_5k
from proteus.registry import Options


class MNISTClutterOptions(Options):
    # where Fashion-MNIST lies (the Debian package dataset-fashion-mnist)
    fashion_root: str = FashionMNISTOptions().root
    # the clutter's brightness relative to Fashion-MNIST's own (1: as it is; 0 would be MNIST-5k)
    background: float = Field(1.0, gt=0, le=1)
    # draws each digit's background; fixed, so that every run seed sees the same images (the run
    # seed draws the split, as for mnist-5k)
    seed: int = 0


@DATASETS.register("mnist-5k-clutter", MNISTClutterOptions,
                   "MNIST-5k over Fashion-MNIST clutter (pixelwise max), 28x28 grey, 10 digits, "
                   "no split")
def read_mnist_5k_clutter(options: MNISTClutterOptions) -> LabeledData:
    digits = read_mnist_5k(MNIST5kOptions())
    fashion = read_fashion_mnist(FashionMNISTOptions(root=options.fashion_root))
    pick = np.random.default_rng(options.seed).integers(0, len(fashion), len(digits))
    clutter = np.rint(fashion.items[pick] * options.background).astype(np.uint8)
    return LabeledData(
        items=np.maximum(digits.items, clutter),
        labels=digits.labels,
        class_names=digits.class_names,
        modality="image",
        official_split=None,
        source="mnist-5k-clutter",
    )
