"""The dataset registry and the helpers several readers share.

:data:`DATASETS` lives here, below every reader module, so each reader registers itself on
import without importing the package that re-exports it. The helpers: the idx format
(MNIST / Fashion-MNIST) and the class-folder scan behind ``image-folder`` and ``vtab``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.registry import Registry


DATASETS: Registry[LabeledData] = Registry("dataset")


# --------------------------------------------------------------------------------------------
# idx files (MNIST / Fashion-MNIST)

# dtype code -> big-endian numpy dtype, as in the idx specification
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzip-compressed if its name ends in ``.gz``.

    Layout: two zero bytes, a dtype code byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the data in C order, big-endian.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        # a truncated or corrupt .gz surfaces here, not as a short read
        raise DataError(f"{path}: cannot read ({exc})") from None

    if len(raw) < 4:
        raise DataError(f"{path}: file is {len(raw)} bytes, too short for the 4-byte idx magic")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: bad idx magic {raw[:4].hex()}: the first two bytes must be zero "
            "(is this an idx file?)"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown idx dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: file is {len(raw)} bytes, too short for the header of {ndim} dimensions"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        raise DataError(
            f"{path}: expected {expected} bytes of data for shape {tuple(shape)}, found {found}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native order, and a writable copy


# --------------------------------------------------------------------------------------------
# Class folders (image-folder, vtab)

DEFAULT_IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"]


def _extension_set(extensions: list[str]) -> set[str]:
    return {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}


def _has_split_folders(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _class_folders(folder: Path, exts: set[str], layout: str) -> list[tuple[str, list[str]]]:
    """``(class name, sorted image paths)`` per non-hidden class folder of ``folder``."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class folders; {layout}")
    out = []
    for cls in classes:
        files = sorted(str(f) for f in cls.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts)
        if not files:
            raise DataError(f"{cls}: class folder has no images with extensions "
                            f"{sorted(exts)}; {layout}")
        out.append((cls.name, files))
    return out


def _images_by_class(parts: list[tuple[int, Path]], exts: set[str], layout: str, source: str,
                     prefix: str = "") -> LabeledData:
    """Image paths of ``(split code, folder of class folders)`` parts; the class set is the union
    of the parts' classes, sorted, named ``prefix + class``."""
    found = [(code, cls, files) for code, folder in parts
             for cls, files in _class_folders(folder, exts, layout)]
    class_names = sorted({cls for _, cls, _ in found})
    index = {name: i for i, name in enumerate(class_names)}
    items, labels, split = [], [], []
    for code, cls, files in found:
        items.extend(files)
        labels.extend([index[cls]] * len(files))
        split.extend([code] * len(files))
    return LabeledData(items=items, labels=np.array(labels, dtype=np.int64),
                       class_names=[prefix + c for c in class_names], modality="image",
                       official_split=np.array(split, dtype=np.int8), source=source)
