"""What ``proteus learn`` and ``proteus predict`` read from the command line, and how predict
writes its answers.

``learn`` takes data the readers know: an image folder (``root/<class>/<image>``), a text table
(``.csv``/``.tsv``/``.jsonl``), a ``.parquet`` file, or a YAML file holding one data source
(``{name: reader, ...options}``, as under ``data:`` in a config). ``predict`` takes image files
and folders (searched recursively), or for a text model text files (one text a line), tables
(one ``--column``) and ``--text`` strings. Errors name the input and the record.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .config import Component, apply_overrides
from .data import DATASETS, DataError, LabeledData, concat
from .data.readers import DEFAULT_IMAGE_EXTENSIONS
from .data.readers.text_table import _csv_rows, _jsonl_rows
from .registry import ConfigError

TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl"}


def _source_for(path: Path) -> dict[str, Any]:
    """The data-source config a path stands for."""
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{path}: a data-source file must be a mapping with 'name' (a "
                              "reader) and its options, as under 'data:' in a config")
        return raw
    if path.is_dir():
        return {"name": "image-folder", "root": str(path)}
    if path.suffix.lower() in TABLE_SUFFIXES:
        return {"name": "text-table", "path": str(path)}
    if path.suffix.lower() == ".parquet":
        return {"name": "parquet", "path": str(path), "text_column": "text"}
    raise DataError(f"{path}: not an image folder, a text table (.csv/.tsv/.jsonl), a .parquet "
                    "file or a YAML data source")


def read_learn_data(paths: list[str], modality: str, overrides: list[str]) -> LabeledData:
    """Read every DATA argument of ``proteus learn`` (``overrides``: reader options)."""
    parts = []
    for i, text in enumerate(paths):
        path = Path(text)
        if not path.exists():
            raise DataError(f"{path}: not found")
        raw = apply_overrides(_source_for(path), overrides)
        component = Component.of(DATASETS, raw, f"data {path}")
        parts.append(DATASETS.create(component.name, component.typed(DATASETS)))
    data = parts[0] if len(parts) == 1 else concat(parts)
    if len(data) == 0:
        raise DataError(f"{', '.join(paths)}: no samples")
    return data


# -- predict inputs ---------------------------------------------------------------------------
def read_inputs(paths: list[str], modality: str, column: str = "text",
                texts: list[str] | None = None) -> tuple[list[str], list]:
    """(names, items): what each answer is about (a path, ``file:line``), and the items."""
    names: list[str] = []
    items: list = []
    if modality == "text":
        for i, text in enumerate(texts or []):
            names.append(f"--text {i}")
            items.append(text)
    elif texts:
        raise DataError("--text is for text models; this model classifies images")
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise DataError(f"{path}: not found")
        if modality == "image":
            for file in _images(path):
                names.append(str(file))
                items.append(str(file))
        else:
            for name, value in _texts(path, column):
                names.append(name)
                items.append(value)
    if not items:
        raise DataError("nothing to predict: give image files or folders, or for a text model "
                        "text files, tables or --text")
    for name, value in zip(names, items):
        if modality == "text" and not str(value).strip():
            raise DataError(f"{name}: empty text")
    return names, items


def _images(path: Path) -> list[Path]:
    exts = set(DEFAULT_IMAGE_EXTENSIONS)
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise DataError(f"{path}: no images ({', '.join(sorted(exts))}) in this folder")
    return found


def _texts(path: Path, column: str) -> list[tuple[str, str]]:
    if path.is_dir():
        raise DataError(f"{path}: a folder; a text model reads text files and tables")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:  # the text-table reader's row parsers: same errors, same lines
        rows = _jsonl_rows(path) if suffix == ".jsonl" else _csv_rows(path)
        out = []
        for n, row in rows:
            if column not in row:
                raise DataError(f"{path}: line {n}: no column '{column}'; columns: "
                                f"{', '.join(row)} (--column names it)")
            out.append((f"{path}:{n}", str(row[column] or "")))
        return out
    try:
        content = path.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not content.strip():
        raise DataError(f"{path}: empty file")
    return [(f"{path}:{n}", line) for n, line in enumerate(content.splitlines(), 1)
            if line.strip()]


# -- predict output ---------------------------------------------------------------------------
FIELDS = ("input", "class", "class_id", "task", "score")


def write_predictions(model, names: list[str], items: list, *, fmt: str = "jsonl",
                      output: str | None = None, progress: bool = True, batch: int = 256) -> int:
    """Predict in batches (a progress bar on long inputs) and write one record per input."""
    target = Path(output) if output else None
    fh = target.open("w", newline="") if target else sys.stdout
    try:
        writer = csv.DictWriter(fh, FIELDS) if fmt == "csv" else None
        if writer:
            writer.writeheader()
        bar = tqdm(total=len(items), desc="predict", unit="input", file=sys.stderr,
                   disable=not progress or len(items) <= batch)
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            try:
                pred = model.predict(chunk)
            except DataError as exc:
                raise DataError(f"{_which(names, start, len(chunk))}: {exc}") from None
            tasks, scores = pred["task_ids"], pred["scores"]
            for j in range(len(chunk)):
                record = {"input": names[start + j], "class": pred["class_names"][j],
                          "class_id": int(pred["class_ids"][j]),
                          "task": None if tasks is None else int(tasks[j]),
                          "score": None if scores is None else round(float(scores[j]), 6)}
                if writer:
                    writer.writerow(record)
                else:
                    fh.write(json.dumps(record) + "\n")
            bar.update(len(chunk))
        bar.close()
    finally:
        if target:
            fh.close()
    return len(items)


def _which(names: list[str], start: int, n: int) -> str:
    return names[start] if n == 1 else f"inputs {names[start]} … {names[start + n - 1]}"
