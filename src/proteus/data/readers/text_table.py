"""Labelled texts from a CSV/TSV file with a header row or a JSON-lines file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


class TextTableOptions(Options):
    path: str
    text_column: str = "text"
    label_column: str = "label"
    format: Literal["auto", "csv", "jsonl"] = "auto"


_TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".tab": "csv",
                  ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@DATASETS.register("text-table", TextTableOptions,
                   "Labelled texts from a CSV/TSV (with header) or JSON-lines file")
def read_text_table(options: TextTableOptions) -> LabeledData:
    """Texts and labels from a table: CSV/TSV with a header row, or one JSON object per line.

    ``format: auto`` picks by extension (.csv, .tsv/.tab tab-separated, .jsonl/.json/.ndjson).
    Class names are the sorted unique label values as strings.
    """
    path = Path(options.path)
    if not path.is_file():
        raise DataError(f"{path}: text table not found")
    fmt = options.format
    if fmt == "auto":
        fmt = _TABLE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: cannot tell the format from the extension "
                            f"{path.suffix!r}; use {sorted(_TABLE_FORMATS)} or set format")
    rows = _csv_rows(path) if fmt == "csv" else _jsonl_rows(path)

    texts, raw_labels = [], []
    for lineno, row in rows:
        for column in (options.text_column, options.label_column):
            if column not in row:
                raise DataError(f"{path}: line {lineno}: no column {column!r}; "
                                f"columns found: {sorted(row)}")
        text, label = row[options.text_column], row[options.label_column]
        text = "" if text is None else str(text).strip()
        label = "" if label is None else str(label).strip()
        if not text:
            raise DataError(f"{path}: line {lineno}: empty text in column "
                            f"{options.text_column!r}")
        if not label:
            raise DataError(f"{path}: line {lineno}: empty label in column "
                            f"{options.label_column!r}")
        texts.append(text)
        raw_labels.append(label)
    if not texts:
        raise DataError(f"{path}: no rows")
    class_names = sorted(set(raw_labels))
    index = {name: i for i, name in enumerate(class_names)}
    return LabeledData(
        items=texts,
        labels=np.array([index[lab] for lab in raw_labels], dtype=np.int64),
        class_names=class_names,
        modality="text",
        official_split=None,
        source=f"text-table:{path.name}",
    )


def _csv_rows(path: Path):
    """Yield ``(line number, row dict)``; line numbers count the header as line 1."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file, expected a header row")
        try:
            for row in reader:
                # a header-only check would miss the column; report it with the columns seen
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: {exc}") from None


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: bad JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, "
                                f"found {type(row).__name__}")
            yield lineno, row
