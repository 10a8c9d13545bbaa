"""The one container every reader returns and every later stage consumes.

A :class:`LabeledData` is a flat, indexable collection of samples with integer labels. Images are
either one ``uint8`` array (``N x H x W`` grey or ``N x H x W x 3`` RGB, for small in-memory
datasets) or a list of file paths (decoded lazily by the backbone); texts are a list of strings.
``ids`` are stable sample ids inside the combined source (used by the split manifest and by the
feature cache). ``official_split`` marks the dataset's own train/test split where one exists:
an ``int8`` array with 0 = train, 1 = test, -1 = this sample has no official split (the scenario
builder splits those per class, seeded); ``None`` when no sample has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

Modality = Literal["image", "text"]


class DataError(ValueError):
    """Bad or unreadable input data; the message names the file and the record."""


@dataclass
class LabeledData:
    items: np.ndarray | list  # uint8 image array, list of image paths, or list of texts
    labels: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    modality: Modality
    ids: np.ndarray = field(default=None)  # int64 stable sample ids, default arange(N)
    official_split: np.ndarray | None = None  # int8: 0 train, 1 test, -1 none; None = no split
    source: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.labels)
        if len(self.items) != n:
            raise DataError(f"{self.source or 'data'}: {len(self.items)} items but {n} labels")
        if self.ids is None:
            self.ids = np.arange(n, dtype=np.int64)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if self.official_split is not None:
            self.official_split = np.asarray(self.official_split, dtype=np.int8)
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(
                f"{self.source or 'data'}: labels must lie in [0, {len(self.class_names)}), "
                f"found {self.labels.min()}..{self.labels.max()}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: Sequence[int] | np.ndarray) -> "LabeledData":
        """Samples at ``index`` (positions, not ids), keeping class names and ids."""
        index = np.asarray(index, dtype=np.int64)
        return LabeledData(
            items=take(self.items, index),
            labels=self.labels[index],
            class_names=self.class_names,
            modality=self.modality,
            ids=self.ids[index],
            official_split=None if self.official_split is None else self.official_split[index],
            source=self.source,
        )

    def with_labels(self, labels: np.ndarray, class_names: list[str]) -> "LabeledData":
        """The same samples relabelled (used to map labels to class-order positions)."""
        return LabeledData(self.items, labels, class_names, self.modality, self.ids,
                           self.official_split, self.source)


def take(items: np.ndarray | list, index: np.ndarray) -> np.ndarray | list:
    if isinstance(items, np.ndarray):
        return items[index]
    return [items[i] for i in index]


def concat(parts: list[LabeledData], source: str = "") -> LabeledData:
    """Concatenate sources, offsetting each one's labels past the previous ones' classes.

    Fashion-MNIST (10 classes) + MNIST-5k (10 classes) gives 20 classes: MNIST digit d becomes
    label 10 + d. Ids are renumbered 0..N-1 over the concatenation; a part without an official
    split contributes -1 entries to ``official_split``.
    """
    if not parts:
        raise DataError("no data sources given")
    modalities = {p.modality for p in parts}
    if len(modalities) != 1:
        raise DataError(f"cannot combine sources of different modalities: {sorted(modalities)}")
    labels, names, offset = [], [], 0
    for p in parts:
        labels.append(p.labels + offset)
        names.extend(p.class_names)
        offset += p.num_classes
    if all(isinstance(p.items, np.ndarray) for p in parts) and len(
        {p.items.shape[1:] for p in parts}
    ) == 1:
        items: np.ndarray | list = np.concatenate([p.items for p in parts])
    else:
        items = [x for p in parts for x in _as_list(p.items)]
    split = None
    if any(p.official_split is not None for p in parts):
        split = np.concatenate([
            np.full(len(p), -1, dtype=np.int8) if p.official_split is None
            else p.official_split.astype(np.int8)
            for p in parts
        ])
    return LabeledData(items, np.concatenate(labels), names, parts[0].modality,
                       official_split=split, source=source or "+".join(p.source for p in parts))


def _as_list(items: np.ndarray | list) -> list:
    return list(items) if isinstance(items, np.ndarray) else items


def stack(parts: list[LabeledData]) -> LabeledData:
    """Concatenate subsets of one dataset (same classes, no label offsets), keeping ids."""
    if not parts:
        raise DataError("nothing to stack")
    items = (np.concatenate([p.items for p in parts])
             if all(isinstance(p.items, np.ndarray) for p in parts)
             else [x for p in parts for x in _as_list(p.items)])
    split = (None if any(p.official_split is None for p in parts)
             else np.concatenate([p.official_split for p in parts]))
    return LabeledData(items, np.concatenate([p.labels for p in parts]), parts[0].class_names,
                       parts[0].modality, np.concatenate([p.ids for p in parts]), split,
                       parts[0].source)
