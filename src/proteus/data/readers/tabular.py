"""Columnar sources: Parquet files and Hugging Face ``datasets`` saved with ``save_to_disk``.

Both readers reduce their input to Arrow tables (one per Parquet file, one per HF split) and
build the :class:`LabeledData` the same way, following ``text-table`` and ``image-folder``:

* ``label_column`` holds strings or integers. Class names are the distinct label values as
  strings, sorted (integers numerically, so label ``k`` of a ``0..K-1`` column stays class ``k``);
  an HF ``ClassLabel`` column keeps its own ids and ``names`` instead.
* ``text_column`` gives texts (stripped, as ``text-table`` stores them).
* ``image_column`` gives images, by Arrow type: strings are image paths, kept as paths like
  ``image-folder`` does (relative ones resolve against the Parquet file's folder or the saved
  dataset's folder; each must exist); binary values (encoded PNG/JPEG/...) and HF ``Image``
  structs ``{bytes, path}`` are decoded with PIL into one ``uint8`` array, grey ``N x H x W`` or
  ``N x H x W x 3`` RGB (grey images are promoted to RGB when the set mixes both; other modes
  are converted to RGB). Nothing is resized, so all decoded images must share one size.

A missing column, an empty text or label, an image that does not decode and an unreadable file
each raise :class:`DataError` naming the file (and split) and the record, numbered from 0 within
that file or split. ``pyarrow`` and ``datasets`` are imported only when these readers run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import model_validator

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


class _ColumnOptions(Options):
    path: str
    text_column: str | None = None  # exactly one of text_column / image_column
    image_column: str | None = None
    label_column: str = "label"

    @model_validator(mode="after")
    def _one_content_column(self):
        # checked with the config, before any file is opened
        if (self.text_column is None) == (self.image_column is None):
            raise ValueError("set exactly one of text_column (texts) and image_column (images)")
        return self


class ParquetOptions(_ColumnOptions):
    pass


class HFDatasetsOptions(_ColumnOptions):
    split: str | None = None  # which split of a DatasetDict; unset for a single Dataset
    test_split: str | None = None  # a DatasetDict's official test split, appended as split 1


@dataclass
class _Part:
    where: str  # the file (and split) that errors name
    table: Any  # pyarrow.Table holding at least the content and label columns
    folder: Path  # relative image paths resolve against it
    code: int  # official split of every row: 0 train, 1 test, -1 none


@DATASETS.register("parquet", ParquetOptions,
                   "Labelled texts or images from a Parquet file or a folder of *.parquet files")
def read_parquet(options: ParquetOptions) -> LabeledData:
    """Rows of ``path`` (one ``.parquet`` file, or every non-hidden ``*.parquet`` file of a folder
    in sorted name order, concatenated); no official split.

    Only the content and label columns are read, and each file is checked for them on its own,
    so a folder whose files disagree names the file that lacks one.
    """
    try:
        # lazy: only this reader needs pyarrow, and importing it costs time on every run
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet: pyarrow is not installed; pip install pyarrow") from None
    path = Path(options.path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() == ".parquet")
        if not files:
            raise DataError(f"{path}: folder has no *.parquet files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: Parquet file or folder not found")
    content = options.text_column or options.image_column
    parts = []
    for file in files:
        try:
            names = pq.read_schema(file).names
            _check_columns(str(file), names, (content, options.label_column))
            table = pq.read_table(file, columns=[content, options.label_column])
        except DataError:
            raise
        except Exception as exc:  # pyarrow reports a bad file as ArrowInvalid, OSError, ...
            raise DataError(f"{file}: not a readable Parquet file "
                            f"({type(exc).__name__}: {exc})") from None
        parts.append(_Part(str(file), table, file.parent, -1))
    data = _build(parts, options, class_names=None, source=f"parquet:{path.name}")
    data.official_split = None
    return data


@DATASETS.register("hf-datasets", HFDatasetsOptions,
                   "Labelled texts or images from a Hugging Face dataset saved with save_to_disk")
def read_hf_datasets(options: HFDatasetsOptions) -> LabeledData:
    """A ``Dataset`` or one split of a ``DatasetDict`` written by ``save_to_disk``.

    A ``DatasetDict`` needs ``split``; with ``test_split`` the items are ``split`` then
    ``test_split`` with ``official_split`` 0 / 1, otherwise there is no official split (the
    scenario builder splits per class). A plain ``Dataset`` takes neither. A ``ClassLabel`` label
    column keeps its ids and names (both splits must share them); a ``-1`` label (HF's "no
    label", as in unlabelled test splits) is an error naming the record.
    """
    try:
        # lazy: only this reader needs datasets, and importing it takes about a second
        import datasets
    except ImportError:
        raise DataError("hf-datasets: the datasets library is not installed; "
                        "pip install datasets") from None
    path = Path(options.path)
    if not path.is_dir():
        raise DataError(f"{path}: saved dataset folder not found "
                        "(expected a folder written by Dataset.save_to_disk or "
                        "DatasetDict.save_to_disk)")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # not a saved dataset (FileNotFoundError), bad JSON or Arrow, ...
        raise DataError(f"{path}: cannot load a dataset saved with save_to_disk "
                        f"({type(exc).__name__}: {exc})") from None

    if isinstance(loaded, datasets.DatasetDict):
        available = sorted(loaded)
        if options.split is None:
            raise DataError(f"{path}: holds a DatasetDict with splits {available}; set split "
                            "(and test_split for the official test split)")
        # without a test split nothing is official: the scenario builder splits per class
        chosen = [(options.split, -1 if options.test_split is None else 0)]
        if options.test_split is not None:
            if options.test_split == options.split:
                raise DataError(f"{path}: split and test_split are both {options.split!r}")
            chosen.append((options.test_split, 1))
        for name, _ in chosen:
            if name not in loaded:
                raise DataError(f"{path}: no split {name!r}; splits found: {available}")
        selected = [(f"{path} (split {name!r})", loaded[name], code) for name, code in chosen]
        source = f"hf-datasets:{path.name}:{options.split}"
    else:
        if options.split is not None or options.test_split is not None:
            raise DataError(f"{path}: holds a single Dataset, not a DatasetDict, so split and "
                            "test_split do not apply; remove them")
        selected = [(str(path), loaded, -1)]
        source = f"hf-datasets:{path.name}"

    content = options.text_column or options.image_column
    parts, class_names = [], None
    for k, (where, ds, code) in enumerate(selected):
        _check_columns(where, ds.column_names, (content, options.label_column))
        feature = ds.features[options.label_column]
        names = ([str(n) for n in feature.names] if isinstance(feature, datasets.ClassLabel)
                 else None)
        # ClassLabel ids mean something only under their names: both splits must share them
        if k and names != class_names:
            first = selected[0][0]
            raise DataError(f"{where}: label column {options.label_column!r} is "
                            + (f"a ClassLabel with names {names}" if names else "not a ClassLabel")
                            + f", but in {first} it is "
                            + (f"one with names {class_names}" if class_names else
                               "not a ClassLabel"))
        class_names = names
        # the Arrow storage: HF Image columns stay {bytes, path} structs, ClassLabel stays ints
        table = ds.select_columns([content, options.label_column]).with_format("arrow")[:]
        parts.append(_Part(where, table, path, code))
    data = _build(parts, options, class_names, source)
    if all(part.code == -1 for part in parts):
        data.official_split = None
    return data


# -- shared: Arrow tables -> LabeledData ------------------------------------------------------


def _check_columns(where: str, found: list[str], needed: tuple[str, ...]) -> None:
    for column in needed:
        if column not in found:
            raise DataError(f"{where}: no column {column!r}; columns found: {sorted(found)}")


def _build(parts: list[_Part], options: _ColumnOptions, class_names: list[str] | None,
           source: str) -> LabeledData:
    """Items, labels and official split of all parts, in part order then row order."""
    raw_labels: list[tuple[Any, str, int]] = []  # (value, where, record)
    items: list = []
    image_kind = None  # "path" or "decoded", the same for every part
    for part in parts:
        raw_labels.extend((value, part.where, i) for i, value in
                          enumerate(part.table.column(options.label_column).to_pylist()))
        if options.text_column is not None:
            items.extend(_texts(part, options.text_column))
        else:
            kind, images = _images(part, options.image_column)
            if image_kind is not None and kind != image_kind:
                raise DataError(f"{part.where}: column {options.image_column!r} holds "
                                f"{_KIND_WORDS[kind]}, but {parts[0].where} holds "
                                f"{_KIND_WORDS[image_kind]}")
            image_kind = kind
            items.extend(images)
    if not raw_labels:
        raise DataError(f"{parts[0].where if len(parts) == 1 else options.path}: no rows")
    if class_names is None:
        labels, class_names = _labels_by_value(raw_labels, options.label_column)
    else:
        labels = _class_label_ids(raw_labels, options.label_column, len(class_names))
    if image_kind == "decoded":
        items = _stack_images(items)
    split = np.concatenate([np.full(part.table.num_rows, part.code, dtype=np.int8)
                            for part in parts])
    return LabeledData(
        items=items,
        labels=labels,
        class_names=class_names,
        modality="text" if options.text_column is not None else "image",
        official_split=split,
        source=source,
    )


def _labels_by_value(raw: list[tuple[Any, str, int]], column: str) -> tuple[np.ndarray, list[str]]:
    """Plain label values: all strings (sorted as strings) or all integers (sorted as numbers)."""
    values = []
    kind = None
    for value, where, i in raw:
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            raise DataError(f"{where}: record {i}: empty label in column {column!r}")
        this = ("string" if isinstance(value, str) else
                "integer" if isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                else None)
        if this is None:
            raise DataError(f"{where}: record {i}: label {value!r} in column {column!r} is a "
                            f"{type(value).__name__}; labels must be strings or integers")
        if kind is not None and this != kind:
            raise DataError(f"{where}: record {i}: label {value!r} in column {column!r} is "
                            f"{_A[this]} {this}, but earlier labels are {kind}s")
        kind = this
        values.append(value)
    distinct = sorted(set(values))
    index = {v: k for k, v in enumerate(distinct)}
    return (np.array([index[v] for v in values], dtype=np.int64),
            [str(v) for v in distinct])


_A = {"string": "a", "integer": "an"}


def _class_label_ids(raw: list[tuple[Any, str, int]], column: str, n: int) -> np.ndarray:
    for value, where, i in raw:
        if value is None or value == -1:
            raise DataError(f"{where}: record {i}: empty label in ClassLabel column {column!r} "
                            f"({value!r}, HF's 'no label')")
        if not 0 <= value < n:
            raise DataError(f"{where}: record {i}: label {value} in ClassLabel column "
                            f"{column!r} is outside 0..{n - 1}")
    return np.array([value for value, _, _ in raw], dtype=np.int64)


def _texts(part: _Part, column: str) -> list[str]:
    texts = []
    for i, value in enumerate(part.table.column(column).to_pylist()):
        text = "" if value is None else str(value).strip()
        if not text:
            raise DataError(f"{part.where}: record {i}: empty text in column {column!r}")
        texts.append(text)
    return texts


_KIND_WORDS = {"path": "image paths", "decoded": "encoded images"}


def _images(part: _Part, column: str) -> tuple[str, list]:
    """``("path", [str])`` for a column of paths, else ``("decoded", [(array, where, record)])``."""
    import pyarrow as pa  # installed with datasets too; lazy for the same reason as above

    col = part.table.column(column)
    kind_type = col.type
    if pa.types.is_string(kind_type) or pa.types.is_large_string(kind_type):
        paths = []
        for i, value in enumerate(col.to_pylist()):
            if value is None or not str(value).strip():
                raise DataError(f"{part.where}: record {i}: empty image path in column "
                                f"{column!r}")
            path = _resolve(value, part.folder)
            if not path.is_file():
                raise DataError(f"{part.where}: record {i}: image file {path} not found "
                                f"(column {column!r})")
            paths.append(str(path))
        return "path", paths
    is_struct = pa.types.is_struct(kind_type) and kind_type.get_field_index("bytes") >= 0
    if not (is_struct or pa.types.is_binary(kind_type) or pa.types.is_large_binary(kind_type)):
        raise DataError(f"{part.where}: column {column!r} holds {kind_type}; expected encoded "
                        "image bytes, Hugging Face Image structs {bytes, path} or image paths")
    images = []
    for i, value in enumerate(col.to_pylist()):
        data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else \
            (value, None)
        if data is None and not path:
            raise DataError(f"{part.where}: record {i}: no image in column {column!r}")
        images.append((_decode(data, path, part, i, column), part.where, i))
    return "decoded", images


def _resolve(path: str, folder: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else folder / p


def _decode(data: bytes | None, path: str | None, part: _Part, i: int, column: str) -> np.ndarray:
    """One image as ``H x W`` (grey) or ``H x W x 3`` (everything else, converted to RGB)."""
    from PIL import Image, UnidentifiedImageError

    # an HF Image that was not embedded stores only its path: open the file instead
    source = io.BytesIO(data) if data is not None else _resolve(path, part.folder)
    if data is None and not source.is_file():
        raise DataError(f"{part.where}: record {i}: image file {source} not found "
                        f"(column {column!r})")
    try:
        with Image.open(source) as img:
            img.load()
            img = img.convert("L") if img.mode in ("1", "L", "LA", "I", "I;16", "F") \
                else img.convert("RGB")
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        what = "bytes" if data is not None else f"file {source}"
        raise DataError(f"{part.where}: record {i}: cannot decode the image {what} in column "
                        f"{column!r} ({type(exc).__name__}: {exc})") from None


def _stack_images(decoded: list[tuple[np.ndarray, str, int]]) -> np.ndarray:
    """One uint8 array; grey images become RGB when the set mixes both, sizes must agree."""
    first, first_where, first_i = decoded[0]
    for img, where, i in decoded:
        if img.shape[:2] != first.shape[:2]:
            raise DataError(f"{where}: record {i}: image is {img.shape[1]}x{img.shape[0]} "
                            f"(width x height), but {first_where} record {first_i} is "
                            f"{first.shape[1]}x{first.shape[0]}; all images of one dataset "
                            "must share one size (nothing is resized; resize them first)")
    rgb = any(img.ndim == 3 for img, _, _ in decoded)
    return np.stack([np.repeat(img[..., None], 3, axis=2) if rgb and img.ndim == 2 else img
                     for img, _, _ in decoded])
