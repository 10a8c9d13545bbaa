"""Parquet and Hugging Face ``save_to_disk`` readers: small files written here, error paths."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from proteus.data import DATASETS, ScenarioOptions, build_scenario
from proteus.data.base import DataError
from proteus.registry import ConfigError

# --------------------------------------------------------------------------------------------
# helpers


def write_parquet(path: Path, columns: dict, schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def png(value: int, size: tuple[int, int] = (4, 3), mode: str = "RGB") -> bytes:
    """An encoded PNG of ``size`` (width, height) filled with ``value``."""
    buf = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buf, "PNG")
    return buf.getvalue()


def pil(value: int, size: tuple[int, int] = (4, 3)) -> Image.Image:
    return Image.new("RGB", size, (value, 0, 255 - value))


def save_dict(path: Path, splits: dict[str, dict], features: datasets.Features | None = None):
    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(cols, features=features)
                               for name, cols in splits.items()})
    dd.save_to_disk(str(path))
    return path


def save_dataset(path: Path, cols: dict, features: datasets.Features | None = None) -> Path:
    datasets.Dataset.from_dict(cols, features=features).save_to_disk(str(path))
    return path


def parquet(path: Path, **options):
    return DATASETS.build("parquet", {"path": str(path), **options})


def hf(path: Path, **options):
    return DATASETS.build("hf-datasets", {"path": str(path), **options})


def test_registered_with_summaries():
    assert {"parquet", "hf-datasets"} <= set(DATASETS.names())
    assert DATASETS.get("parquet").summary and DATASETS.get("hf-datasets").summary


@pytest.mark.parametrize("name", ["parquet", "hf-datasets"])
@pytest.mark.parametrize("columns", [{}, {"text_column": "t", "image_column": "i"}])
def test_exactly_one_content_column_is_a_config_error(name, columns):
    with pytest.raises(ConfigError, match="exactly one of text_column"):
        DATASETS.parse_options(name, {"path": "x", **columns}, "data.0")


# --------------------------------------------------------------------------------------------
# parquet: texts


def test_parquet_text_with_string_labels(tmp_path):
    path = write_parquet(tmp_path / "reviews.parquet", {
        "text": ["  great film ", "dull", "loved it", "meh"],
        "label": ["pos", "neg", "pos", " neutral "],
        "other": [1, 2, 3, 4],
    })
    d = parquet(path, text_column="text")
    assert d.items == ["great film", "dull", "loved it", "meh"]  # stripped like text-table
    assert d.class_names == ["neg", "neutral", "pos"]
    assert d.labels.tolist() == [2, 0, 2, 1]
    assert d.modality == "text" and d.official_split is None
    assert d.source == "parquet:reviews.parquet"
    assert d.ids.tolist() == [0, 1, 2, 3]


def test_parquet_integer_labels_sort_numerically(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"body": ["a", "b", "c", "d"],
                                                  "y": [10, 2, 0, 2]})
    d = parquet(path, text_column="body", label_column="y")
    assert d.class_names == ["0", "2", "10"]
    assert d.labels.tolist() == [2, 1, 0, 1]


def test_parquet_folder_concatenates_files_in_name_order(tmp_path):
    folder = tmp_path / "shards"
    write_parquet(folder / "part-1.parquet", {"text": ["c"], "label": ["x"]})
    write_parquet(folder / "part-0.parquet", {"text": ["a", "b"], "label": ["y", "x"]})
    write_parquet(folder / ".hidden.parquet", {"text": ["h"], "label": ["h"]})
    (folder / "README.md").write_text("not data")
    d = parquet(folder, text_column="text")
    assert d.items == ["a", "b", "c"]
    assert d.class_names == ["x", "y"] and d.labels.tolist() == [1, 0, 0]
    assert d.source == "parquet:shards"


# --------------------------------------------------------------------------------------------
# parquet: images


def test_parquet_image_bytes_are_decoded(tmp_path):
    path = write_parquet(tmp_path / "img.parquet", {
        "image": [png(10), png(200), png(50)],
        "label": ["b", "a", "b"],
    })
    d = parquet(path, image_column="image")
    assert d.modality == "image"
    assert isinstance(d.items, np.ndarray) and d.items.dtype == np.uint8
    assert d.items.shape == (3, 3, 4, 3)  # N x H x W x RGB
    assert d.items[1, 0, 0].tolist() == [200, 0, 55]
    assert d.class_names == ["a", "b"] and d.labels.tolist() == [1, 0, 1]


def test_parquet_grey_images_stay_grey_and_mixed_sets_become_rgb(tmp_path):
    grey = write_parquet(tmp_path / "grey.parquet", {"image": [png(7, mode="L")] * 2,
                                                     "label": [0, 1]})
    d = parquet(grey, image_column="image")
    assert d.items.shape == (2, 3, 4) and int(d.items[0, 0, 0]) == 7
    mixed = write_parquet(tmp_path / "mixed.parquet", {"image": [png(7, mode="L"), png(9)],
                                                       "label": [0, 1]})
    d = parquet(mixed, image_column="image")
    assert d.items.shape == (2, 3, 4, 3) and d.items[0, 0, 0].tolist() == [7, 7, 7]


def test_parquet_hf_image_structs_with_bytes_or_path(tmp_path):
    (tmp_path / "pics").mkdir()
    pil(120).save(tmp_path / "pics" / "a.png")
    path = write_parquet(tmp_path / "hf.parquet", {
        "image": [{"bytes": png(30), "path": "ignored.png"},
                  {"bytes": None, "path": "pics/a.png"}],  # not embedded: read from the file
        "label": ["x", "y"],
    })
    d = parquet(path, image_column="image")
    assert d.items.shape == (2, 3, 4, 3)
    assert d.items[0, 0, 0].tolist() == [30, 0, 225] and d.items[1, 0, 0].tolist() == [120, 0, 135]


def test_parquet_image_paths_are_kept_as_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    pil(1).save(tmp_path / "imgs" / "a.png")
    pil(2).save(tmp_path / "b.png")
    path = write_parquet(tmp_path / "paths.parquet", {
        "file": ["imgs/a.png", str(tmp_path / "b.png")], "label": ["cat", "dog"]})
    d = parquet(path, image_column="file")
    assert d.items == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "b.png")]
    assert d.modality == "image" and d.class_names == ["cat", "dog"]


# --------------------------------------------------------------------------------------------
# parquet: errors


def test_parquet_missing_column_names_file_and_columns(tmp_path):
    path = write_parquet(tmp_path / "r.parquet", {"text": ["a"], "y": ["x"]})
    with pytest.raises(DataError) as err:
        parquet(path, text_column="text")
    msg = str(err.value)
    assert str(path) in msg and "'label'" in msg and "['text', 'y']" in msg


def test_parquet_folder_names_the_file_without_the_column(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"text": ["a"], "label": ["x"]})
    bad = write_parquet(tmp_path / "b.parquet", {"body": ["b"], "label": ["x"]})
    with pytest.raises(DataError, match=f"{bad}: no column 'text'"):
        parquet(tmp_path, text_column="text")


@pytest.mark.parametrize("label", [None, "   "])
def test_parquet_empty_label_names_file_and_record(tmp_path, label):
    path = write_parquet(tmp_path / "r.parquet", {"text": ["a", "b"], "label": ["x", label]},
                         pa.schema([("text", pa.string()), ("label", pa.string())]))
    with pytest.raises(DataError, match=f"{path}: record 1: empty label in column 'label'"):
        parquet(path, text_column="text")


@pytest.mark.parametrize("text", [None, " "])
def test_parquet_empty_text_names_file_and_record(tmp_path, text):
    path = write_parquet(tmp_path / "r.parquet", {"text": [text, "b"], "label": ["x", "y"]},
                         pa.schema([("text", pa.string()), ("label", pa.string())]))
    with pytest.raises(DataError, match=f"{path}: record 0: empty text in column 'text'"):
        parquet(path, text_column="text")


def test_parquet_unreadable_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=f"{path}: not a readable Parquet file"):
        parquet(path, text_column="text")


def test_parquet_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        parquet(tmp_path / "none.parquet", text_column="text")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.parquet files"):
        parquet(tmp_path / "empty", text_column="text")


def test_parquet_float_labels_and_mixed_label_types_are_refused(tmp_path):
    path = write_parquet(tmp_path / "f.parquet", {"text": ["a"], "label": [0.5]})
    with pytest.raises(DataError, match="record 0: label 0.5 .* must be strings or integers"):
        parquet(path, text_column="text")
    folder = tmp_path / "mixed"
    write_parquet(folder / "a.parquet", {"text": ["a"], "label": [1]})
    b = write_parquet(folder / "b.parquet", {"text": ["b"], "label": ["1"]})
    with pytest.raises(DataError, match=f"{b}: record 0: .* is a string, but earlier labels "
                                        "are integers"):
        parquet(folder, text_column="text")


def test_parquet_images_of_different_sizes_name_the_record(tmp_path):
    path = write_parquet(tmp_path / "img.parquet", {
        "image": [png(1), png(2), png(3, size=(5, 3))], "label": [0, 0, 1]})
    with pytest.raises(DataError, match=f"{path}: record 2: image is 5x3 .* record 0 is 4x3"):
        parquet(path, image_column="image")


def test_parquet_undecodable_or_missing_image_names_the_record(tmp_path):
    path = write_parquet(tmp_path / "img.parquet", {"image": [png(1), b"garbage"],
                                                    "label": [0, 1]})
    with pytest.raises(DataError, match=f"{path}: record 1: cannot decode the image bytes"):
        parquet(path, image_column="image")
    path = write_parquet(tmp_path / "none.parquet", {"image": [png(1), None], "label": [0, 1]},
                         pa.schema([("image", pa.binary()), ("label", pa.int64())]))
    with pytest.raises(DataError, match=f"{path}: record 1: no image in column 'image'"):
        parquet(path, image_column="image")
    path = write_parquet(tmp_path / "paths.parquet", {"image": ["nope.png"], "label": [0]})
    with pytest.raises(DataError, match=f"{path}: record 0: image file .*nope.png not found"):
        parquet(path, image_column="image")


def test_parquet_image_column_of_numbers_is_refused(tmp_path):
    path = write_parquet(tmp_path / "n.parquet", {"image": [1, 2], "label": [0, 1]})
    with pytest.raises(DataError, match=f"{path}: column 'image' holds int64; expected encoded"):
        parquet(path, image_column="image")


# --------------------------------------------------------------------------------------------
# hf-datasets


TEXT_FEATURES = datasets.Features({"sentence": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=["zebra", "ant", "owl"])})


def test_hf_dataset_dict_with_class_label_and_test_split(tmp_path):
    path = save_dict(tmp_path / "ds", {
        "train": {"sentence": ["one", " two ", "three"], "label": [2, 0, 1]},
        "test": {"sentence": ["four", "five"], "label": [0, 0]},
        "validation": {"sentence": ["six"], "label": [1]},
    }, TEXT_FEATURES)
    d = hf(path, split="train", test_split="test", text_column="sentence")
    assert d.items == ["one", "two", "three", "four", "five"]
    assert d.class_names == ["zebra", "ant", "owl"]  # the ClassLabel's ids and names, unsorted
    assert d.labels.tolist() == [2, 0, 1, 0, 0]
    assert d.official_split.tolist() == [0, 0, 0, 1, 1]
    assert d.modality == "text" and d.source == "hf-datasets:ds:train"


def test_hf_split_without_test_split_has_no_official_split(tmp_path):
    path = save_dict(tmp_path / "ds", {"train": {"sentence": ["a", "b"], "label": [1, 1]},
                                       "test": {"sentence": ["c"], "label": [0]}}, TEXT_FEATURES)
    d = hf(path, split="test", text_column="sentence")
    assert d.items == ["c"] and d.official_split is None and d.labels.tolist() == [0]


def test_hf_plain_dataset_with_string_labels(tmp_path):
    path = save_dataset(tmp_path / "plain", {"text": ["x", "y", "z"], "topic": ["b", "a", "b"]})
    d = hf(path, text_column="text", label_column="topic")
    assert d.items == ["x", "y", "z"]
    assert d.class_names == ["a", "b"] and d.labels.tolist() == [1, 0, 1]
    assert d.official_split is None and d.source == "hf-datasets:plain"


def test_hf_image_feature_is_decoded(tmp_path):
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})
    path = save_dict(tmp_path / "imgs", {
        "train": {"img": [pil(10), pil(20), pil(30)], "label": [0, 1, 0]},
        "test": {"img": [pil(40)], "label": [1]},
    }, features)
    d = hf(path, split="train", test_split="test", image_column="img")
    assert d.modality == "image" and d.items.dtype == np.uint8
    assert d.items.shape == (4, 3, 4, 3)
    assert d.items[:, 0, 0, 0].tolist() == [10, 20, 30, 40]
    assert d.class_names == ["cat", "dog"] and d.official_split.tolist() == [0, 0, 0, 1]


def test_hf_official_split_reaches_the_scenario(tmp_path):
    path = save_dict(tmp_path / "ds", {
        "train": {"sentence": [f"tr{i}" for i in range(6)], "label": [0, 1, 2] * 2},
        "test": {"sentence": [f"te{i}" for i in range(3)], "label": [0, 1, 2]},
    }, TEXT_FEATURES)
    d = hf(path, split="train", test_split="test", text_column="sentence")
    sc = build_scenario(d, ScenarioOptions(num_tasks=3), seed=0)
    assert sorted(i for t in sc.tasks for i in t.test.ids.tolist()) == [6, 7, 8]


def test_hf_dataset_dict_needs_a_known_split(tmp_path):
    path = save_dict(tmp_path / "ds", {"train": {"sentence": ["a"], "label": [0]},
                                       "test": {"sentence": ["b"], "label": [0]}}, TEXT_FEATURES)
    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\]; set split"):
        hf(path, text_column="sentence")
    with pytest.raises(DataError, match=r"no split 'dev'; splits found: \['test', 'train'\]"):
        hf(path, split="train", test_split="dev", text_column="sentence")
    with pytest.raises(DataError, match="split and test_split are both 'train'"):
        hf(path, split="train", test_split="train", text_column="sentence")


def test_hf_plain_dataset_refuses_split(tmp_path):
    path = save_dataset(tmp_path / "plain", {"text": ["x"], "label": ["a"]})
    with pytest.raises(DataError, match="single Dataset, not a DatasetDict"):
        hf(path, split="train", text_column="text")


def test_hf_missing_column_names_folder_split_and_columns(tmp_path):
    path = save_dict(tmp_path / "ds", {"train": {"sentence": ["a"], "label": [0]}},
                     TEXT_FEATURES)
    with pytest.raises(DataError) as err:
        hf(path, split="train", text_column="text")
    msg = str(err.value)
    assert f"{path} (split 'train')" in msg and "no column 'text'" in msg
    assert "['label', 'sentence']" in msg


def test_hf_no_label_and_empty_values_name_the_record(tmp_path):
    path = save_dict(tmp_path / "ds", {"train": {"sentence": ["a", "b"], "label": [0, 1]},
                                       "test": {"sentence": ["c", "d"], "label": [1, -1]}},
                     TEXT_FEATURES)
    with pytest.raises(DataError, match=r"\(split 'test'\): record 1: empty label in ClassLabel "
                                        "column 'label'"):
        hf(path, split="train", test_split="test", text_column="sentence")
    path = save_dataset(tmp_path / "plain", {"text": ["x", "y"], "label": ["a", ""]})
    with pytest.raises(DataError, match=f"{path}: record 1: empty label in column 'label'"):
        hf(path, text_column="text")
    path = save_dataset(tmp_path / "notext", {"text": ["x", None], "label": ["a", "b"]})
    with pytest.raises(DataError, match=f"{path}: record 1: empty text in column 'text'"):
        hf(path, text_column="text")


def test_hf_class_label_names_must_agree_between_splits(tmp_path):
    path = tmp_path / "ds"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["a"], "label": [0]}, TEXT_FEATURES),
        "test": datasets.Dataset.from_dict({"sentence": ["b"], "label": [0]}, datasets.Features({
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["ant", "zebra", "owl"])})),
    }).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"\(split 'test'\): label column 'label' is a "
                                        r"ClassLabel with names \['ant', 'zebra', 'owl'\], but"):
        hf(path, split="train", test_split="test", text_column="sentence")
    plain = tmp_path / "plain"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["a"], "label": ["zebra"]}),
        "test": datasets.Dataset.from_dict({"sentence": ["b"], "label": [0]}, TEXT_FEATURES),
    }).save_to_disk(str(plain))
    with pytest.raises(DataError, match=r"\(split 'test'\): label column 'label' is a "
                                        r"ClassLabel .* it is not a ClassLabel"):
        hf(plain, split="train", test_split="test", text_column="sentence")


def test_hf_unreadable_folder(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.arrow").write_bytes(b"nope")
    with pytest.raises(DataError, match=f"{tmp_path / 'junk'}: cannot load a dataset saved with "
                                        "save_to_disk"):
        hf(tmp_path / "junk", text_column="text")
    with pytest.raises(DataError, match="saved dataset folder not found"):
        hf(tmp_path / "missing", text_column="text")
