"""Dataset readers: each turns files on disk (or a seed) into one :class:`LabeledData`.

Every reader is registered in :data:`DATASETS` with a pydantic options model, so a config such as
``{"name": "wordnet", "options": {"min_count": 340}}`` is validated before any file is opened.
Readers raise :class:`DataError` for anything wrong with the input, always naming the file (and
the record or line where there is one), so a broken asset is fixed without reading this code.

One module per reader; a reader registers itself when its module is imported, so this package
imports them all. :data:`DATASETS` and the helpers several readers share (idx files, the
class-folder scan) live in ``_common``. A new reader is a new module here plus one import line.
"""

from __future__ import annotations

from proteus.data.readers._common import DATASETS, DEFAULT_IMAGE_EXTENSIONS, read_idx
from proteus.data.readers.cifar100 import CIFAR100Options, read_cifar100
from proteus.data.readers.cub200 import CUB200Options, read_cub200
from proteus.data.readers.fashion_mnist import (
    FASHION_CLASSES,
    FashionMNISTOptions,
    read_fashion_mnist,
)
from proteus.data.readers.image_folder import ImageFolderOptions, read_image_folder
from proteus.data.readers.mnist5k import MNIST5kOptions, read_mnist_5k
from proteus.data.readers.mnist_clutter import MNISTClutterOptions, read_mnist_5k_clutter
from proteus.data.readers.synthetic import FILLER_WORDS, SyntheticOptions, read_synthetic
from proteus.data.readers.tabular import (
    HFDatasetsOptions,
    ParquetOptions,
    read_hf_datasets,
    read_parquet,
)
from proteus.data.readers.text_table import TextTableOptions, read_text_table
from proteus.data.readers.vtab import VTABOptions, read_vtab
from proteus.data.readers.wordnet import (
    LEXNAMES,
    RELATIONS,
    WordNetOptions,
    WordNetRelationsOptions,
    read_wordnet,
    read_wordnet_examples,
    read_wordnet_relations,
)

__all__ = [
    "CIFAR100Options", "CUB200Options", "DATASETS", "DEFAULT_IMAGE_EXTENSIONS", "FASHION_CLASSES",
    "FILLER_WORDS", "FashionMNISTOptions", "HFDatasetsOptions", "ImageFolderOptions", "LEXNAMES",
    "MNIST5kOptions", "MNISTClutterOptions", "ParquetOptions", "RELATIONS", "SyntheticOptions",
    "TextTableOptions", "VTABOptions", "WordNetOptions", "WordNetRelationsOptions",
    "read_cifar100", "read_cub200", "read_fashion_mnist", "read_hf_datasets", "read_idx",
    "read_image_folder", "read_mnist_5k", "read_mnist_5k_clutter", "read_parquet", "read_synthetic",
    "read_text_table", "read_vtab", "read_wordnet", "read_wordnet_examples",
    "read_wordnet_relations",
]
