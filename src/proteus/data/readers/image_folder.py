"""Image paths from class folders (root/<class>/ or root/{train,test}/<class>/)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import (
    DATASETS,
    DEFAULT_IMAGE_EXTENSIONS,
    _extension_set,
    _has_split_folders,
    _images_by_class,
)
from proteus.registry import Options


_FOLDER_LAYOUT = ("expected root/<class>/<image> or root/train/<class>/<image> + "
                  "root/test/<class>/<image>")


class ImageFolderOptions(Options):
    root: str
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_IMAGE_EXTENSIONS))


@DATASETS.register("image-folder", ImageFolderOptions,
                   "Images in class folders (root/<class>/ or root/{train,test}/<class>/)")
def read_image_folder(options: ImageFolderOptions) -> LabeledData:
    """Image paths from class folders; images are not opened here (the backbone decodes them).

    Layout A is ``root/<class>/<image>``, no official split. Layout B, chosen when ``root`` has
    both ``train/`` and ``test/`` folders (how the PILOT archives ship ImageNet-R/A), is
    ``root/{train,test}/<class>/<image>`` with official split 0/1; the class set is the union of
    both sides. Hidden files and folders are ignored; extensions match case-insensitively.
    """
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; {_FOLDER_LAYOUT}")
    exts = _extension_set(options.extensions)
    if _has_split_folders(root):
        parts = [(0, root / "train"), (1, root / "test")]
    else:
        parts = [(-1, root)]
    data = _images_by_class(parts, exts, _FOLDER_LAYOUT, f"image-folder:{root.name}")
    if parts[0][0] == -1:
        data.official_split = None
    return data
