"""CIFAR-100, the "python version" release (cifar-100-python/), read with a restricted
unpickler.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


_CIFAR_LAYOUT = ("expected root/{train,test,meta} from the CIFAR-100 python release "
                 "(the cifar-100-python/ folder of cifar-100-python.tar.gz)")

# The CIFAR files are pickles, and unpickling runs whatever callable a pickle names: a crafted
# file could run os.system on load. So only the globals the real files need to rebuild their
# uint8 arrays are resolved (numpy.core.* as written by the original Python 2 pickles,
# numpy._core.* as numpy >= 2 re-pickles them); every other global is refused before it is
# looked up, so nothing it names can run.
_PICKLE_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path) -> None:
        super().__init__(fh, encoding="bytes")  # Python 2 str -> bytes, as the keys are
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED_GLOBALS:
            raise DataError(
                f"{self._path}: refused to unpickle global {module}.{name}: only numpy array "
                "reconstruction is allowed in a CIFAR-100 file (unpickling untrusted data can "
                "run code)")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found; {_CIFAR_LAYOUT}")
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{path}: pickle is empty or truncated; {_CIFAR_LAYOUT}") from None
    except Exception as exc:  # a malformed pickle can fail with almost any exception type
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); "
                        f"{_CIFAR_LAYOUT}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _cifar_key(obj: dict, key: str, path: Path):
    # the release's keys are bytes (Python 2 str); accept str keys from a re-pickled copy too
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    found = sorted(k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in obj)
    raise DataError(f"{path}: missing key {key!r}; keys found: {found}")


class CIFAR100Options(Options):
    root: str
    label: Literal["fine", "coarse"] = "fine"


@DATASETS.register("cifar-100", CIFAR100Options,
                   "CIFAR-100 python release, 60,000 32x32 RGB images, 100 fine or 20 coarse "
                   "classes, official train/test")
def read_cifar100(options: CIFAR100Options) -> LabeledData:
    """CIFAR-100 from ``root/{train,test,meta}`` (pickled dicts with bytes keys).

    Each ``data`` row is 3072 uint8 values: the 1024 red, then green, then blue values of a
    32x32 image in row-major order; items are ``(N, 32, 32, 3)`` RGB, train (50,000) then test
    (10,000), with ``official_split`` 0 / 1. ``label`` picks ``fine_labels`` (100 classes) or
    ``coarse_labels`` (20 superclasses); class names come from ``meta``.
    """
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR-100 folder not found; {_CIFAR_LAYOUT}")
    meta_path = root / "meta"
    meta = _load_cifar_pickle(meta_path)
    names_key = f"{options.label}_label_names"
    raw_names = _cifar_key(meta, names_key, meta_path)
    if not isinstance(raw_names, (list, tuple)) or not raw_names or not all(
            isinstance(n, (bytes, str)) for n in raw_names):
        raise DataError(f"{meta_path}: {names_key!r} must be a non-empty list of names")
    try:
        class_names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in raw_names]
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta_path}: {names_key!r} has a name that is not UTF-8 ({exc})") \
            from None
    num_classes = len(class_names)

    images, labels, split = [], [], []
    for code, part in ((0, "train"), (1, "test")):
        path = root / part
        obj = _load_cifar_pickle(path)
        data = _cifar_key(obj, "data", path)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
            found = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                     else type(data).__name__)
            raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), "
                            f"found {found}")
        if data.dtype != np.uint8:
            raise DataError(f"{path}: 'data' must be uint8, found {data.dtype} {data.shape}")
        label_key = f"{options.label}_labels"
        try:
            y = np.asarray(_cifar_key(obj, label_key, path))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: {label_key!r} is not a list of ints ({exc})") from None
        if y.ndim != 1 or (len(y) and not np.issubdtype(y.dtype, np.integer)):
            raise DataError(f"{path}: {label_key!r} must be a flat list of ints, "
                            f"found {y.dtype} {y.shape}")
        if len(y) != len(data):
            raise DataError(f"{path}: {len(y)} {label_key} but 'data' has {len(data)} images")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            bad = int(np.argmax((y < 0) | (y >= num_classes)))
            raise DataError(f"{path}: {label_key[:-1]} {int(y[bad])} at record {bad} is outside "
                            f"0..{num_classes - 1} ({num_classes} names in {meta_path.name})")
        # row = R plane, G plane, B plane, each 32x32 row-major -> (N, 3, 32, 32) -> NHWC
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y.astype(np.int64))
        split.append(np.full(len(y), code, dtype=np.int8))
    return LabeledData(
        items=np.ascontiguousarray(np.concatenate(images)),
        labels=np.concatenate(labels),
        class_names=class_names,
        modality="image",
        official_split=np.concatenate(split),
        source="cifar-100",
    )
