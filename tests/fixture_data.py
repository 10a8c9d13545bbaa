"""Writers of small dataset fixtures in their real on-disk formats, shared by several tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def cifar_folder(root: Path, classes: int = 4) -> Path:
    """The cifar-100-python release: root/{meta,train,test}, pickled dicts with bytes keys."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    names = [f"class{c}".encode() for c in range(classes)]
    with open(root / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": [b"all"]}, fh)
    for split, n in (("train", 6), ("test", 3)):
        labels = [c for c in range(classes) for _ in range(n)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(root / split, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": labels,
                         b"coarse_labels": [0] * len(labels),
                         b"filenames": [b"x.png"] * len(labels)}, fh)
    return root
