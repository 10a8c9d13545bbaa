"""CUB-200-2011 birds from the release's index files (images.txt, classes.txt, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


_CUB_LAYOUT = ("expected the CUB_200_2011 release: root/images.txt ('<image id> <path>'), "
               "root/image_class_labels.txt ('<image id> <class id>'), "
               "root/train_test_split.txt ('<image id> <1 train | 0 test>'), "
               "root/classes.txt ('<class id> <name>') and root/images/<path>")


class CUB200Options(Options):
    root: str
    check_files: bool = True  # stat every root/images/<path> (no image is opened)


@DATASETS.register("cub-200", CUB200Options,
                   "CUB-200-2011 birds, 11,788 images, 200 classes, official train/test split")
def read_cub200(options: CUB200Options) -> LabeledData:
    """Image paths of CUB-200-2011 from its index files; images are not opened here.

    ``classes.txt`` gives the classes (labels follow ascending class id; names drop the
    ``"001."`` prefix, e.g. ``"Black_footed_Albatross"``); ``images.txt``,
    ``image_class_labels.txt`` and ``train_test_split.txt`` are keyed by image id. Items are
    ``root/images/<path>`` in ascending image id; ``official_split`` is 0 where
    ``train_test_split.txt`` says 1 (train) and 1 where it says 0 (test).
    """
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"{root}: CUB-200-2011 folder not found; {_CUB_LAYOUT}")
    classes = _cub_table(root / "classes.txt", "class id", "class name")
    paths = _cub_table(root / "images.txt", "image id", "image path")
    class_of = _cub_table(root / "image_class_labels.txt", "image id", "class id")
    is_train = _cub_table(root / "train_test_split.txt", "image id", "is_training_image")
    if not classes:
        raise DataError(f"{root / 'classes.txt'}: no classes; {_CUB_LAYOUT}")
    if not paths:
        raise DataError(f"{root / 'images.txt'}: no images; {_CUB_LAYOUT}")

    class_ids = sorted(classes)
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    class_names = [_cub_class_name(classes[cid][0]) for cid in class_ids]
    items, labels, split = [], [], []
    for image_id in paths:  # ascending image id
        rel, path_line = paths[image_id]
        for table, name in ((class_of, "image_class_labels.txt"),
                            (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DataError(f"{root / name}: no line for image id {image_id} "
                                f"(images.txt line {path_line}); {_CUB_LAYOUT}")
        cid, cid_line = class_of[image_id]
        if cid not in label_of:
            raise DataError(f"{root / 'image_class_labels.txt'}: line {cid_line}: class id "
                            f"{cid!r} is not in classes.txt")
        flag, flag_line = is_train[image_id]
        if flag not in ("0", "1"):
            raise DataError(f"{root / 'train_test_split.txt'}: line {flag_line}: "
                            f"is_training_image must be 1 (train) or 0 (test), found {flag!r}")
        path = root / "images" / rel
        if options.check_files and not path.is_file():
            raise DataError(f"{path}: image file not found (images.txt line {path_line}); "
                            f"{_CUB_LAYOUT}")
        items.append(str(path))
        labels.append(label_of[cid])
        split.append(0 if flag == "1" else 1)
    for table, name in ((class_of, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
        extra = sorted(set(table) - set(paths), key=_cub_sort_key)
        if extra:
            raise DataError(f"{root / name}: line {table[extra[0]][1]}: image id {extra[0]} "
                            "is not in images.txt")
    return LabeledData(
        items=items,
        labels=np.array(labels, dtype=np.int64),
        class_names=class_names,
        modality="image",
        official_split=np.array(split, dtype=np.int8),
        source="cub-200",
    )


def _cub_sort_key(key: str):
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def _cub_table(path: Path, key_name: str, value_name: str) -> dict[str, tuple[str, int]]:
    """``key -> (value, line number)`` from a ``'<key> <value>'`` file, ordered by key.

    Keys are compared as strings (numeric ids sort numerically); a duplicate key or a line
    without two fields is an error naming the file and line.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; {_CUB_LAYOUT}")
    table: dict[str, tuple[str, int]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                fields = line.strip().split(maxsplit=1)
                if len(fields) != 2:
                    raise DataError(f"{path}: line {lineno}: expected '<{key_name}> "
                                    f"<{value_name}>', found {line.strip()!r}; {_CUB_LAYOUT}")
                key, value = fields[0], fields[1].strip()
                if key in table:
                    raise DataError(f"{path}: line {lineno}: {key_name} {key} repeats line "
                                    f"{table[key][1]}")
                table[key] = (value, lineno)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); {_CUB_LAYOUT}") from None
    return dict(sorted(table.items(), key=lambda kv: _cub_sort_key(kv[0])))


def _cub_class_name(raw: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black_footed_Albatross"``."""
    head, dot, rest = raw.partition(".")
    return rest if dot and head.isdigit() and rest else raw
