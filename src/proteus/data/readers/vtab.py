"""The class-incremental "VTAB" folders of RanPAC / APER / PILOT (one folder per dataset)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from proteus.data.base import DataError, LabeledData, concat
from proteus.data.readers._common import (
    DATASETS,
    DEFAULT_IMAGE_EXTENSIONS,
    _extension_set,
    _has_split_folders,
    _images_by_class,
)
from proteus.registry import Options


_VTAB_LAYOUT = ("expected root/<dataset>/{train,test}/<class>/<image> (one folder per VTAB "
                "dataset) or root/{train,test}/<class>/<image> (a single dataset, named after "
                "root)")


class VTABOptions(Options):
    root: str
    datasets: list[str] | None = Field(None, min_length=1)  # which sub-datasets, in this order
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_IMAGE_EXTENSIONS))


@DATASETS.register("vtab", VTABOptions,
                   "VTAB folders: root/<dataset>/{train,test}/<class>/ or root/{train,test}/"
                   "<class>/; class names 'dataset/class', official train/test")
def read_vtab(options: VTABOptions) -> LabeledData:
    """Image paths from VTAB folders; images are not opened here (the backbone decodes them).

    Layout A (several datasets) is ``root/<dataset>/{train,test}/<class>/<image>``: every
    non-hidden sub-folder of ``root`` is a dataset, taken in sorted order unless ``datasets``
    chooses and orders them. Layout B, chosen when ``root`` itself has ``train/`` and ``test/``,
    is one dataset named after ``root`` (``datasets``, if set, must be exactly that name).
    Classes are numbered dataset by dataset (in dataset order), sorted by name within each, and
    named ``"<dataset>/<class>"``; a dataset's class set is the union of its train and test
    folders. ``official_split`` is 0 for ``train/``, 1 for ``test/``.
    """
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"{root}: VTAB folder not found; {_VTAB_LAYOUT}")
    exts = _extension_set(options.extensions)
    if _has_split_folders(root):
        name = root.name
        if options.datasets is not None and options.datasets != [name]:
            raise DataError(
                f"{root}: holds a single dataset (root/train and root/test), named {name!r} "
                f"after the folder, but datasets={options.datasets} was asked for; "
                f"{_VTAB_LAYOUT}")
        chosen = [(name, root)]
    else:
        available = sorted(p.name for p in root.iterdir()
                           if p.is_dir() and not p.name.startswith("."))
        if not available:
            raise DataError(f"{root}: no dataset folders and no train/ + test/ folders; "
                            f"{_VTAB_LAYOUT}")
        if options.datasets is None:
            names = available
        else:
            if len(set(options.datasets)) != len(options.datasets):
                raise DataError(f"{root}: datasets={options.datasets} names a dataset twice")
            missing = [d for d in options.datasets if d not in available]
            if missing:
                raise DataError(f"{root}: no dataset folder {missing} (datasets found: "
                                f"{available}); {_VTAB_LAYOUT}")
            names = list(options.datasets)
        chosen = []
        for name in names:
            folder = root / name
            if not _has_split_folders(folder):
                raise DataError(f"{folder}: dataset folder has no train/ and test/ folders; "
                                f"{_VTAB_LAYOUT}")
            chosen.append((name, folder))

    parts = [_images_by_class([(0, folder / "train"), (1, folder / "test")], exts,
                              _VTAB_LAYOUT, name, prefix=f"{name}/") for name, folder in chosen]
    return concat(parts, source=f"vtab:{root.name}")  # labels offset dataset by dataset
