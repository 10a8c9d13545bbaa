"""Class-incremental scenario builder: class order, contiguous tasks, per-class split, manifest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from proteus.data.base import DataError, LabeledData
from proteus.data.scenario import (
    Scenario,
    ScenarioOptions,
    build_scenario,
    load_manifest,
)
from proteus.registry import ConfigError


def make_data(num_classes=10, per_class=20, split=None, source="toy", ids=None) -> LabeledData:
    labels = np.repeat(np.arange(num_classes), per_class)
    items = np.zeros((len(labels), 2, 2), dtype=np.uint8)
    items[:, 0, 0] = np.arange(len(labels)) % 256
    return LabeledData(items, labels, [f"c{i}" for i in range(num_classes)], "image",
                       ids=ids, official_split=split, source=source)


def original_label(data: LabeledData, ids) -> np.ndarray:
    label_of = dict(zip(data.ids.tolist(), data.labels.tolist()))
    return np.array([label_of[int(i)] for i in ids])


def test_tasks_are_contiguous_disjoint_blocks_covering_the_classes():
    data = make_data()
    sc = build_scenario(data, ScenarioOptions(num_tasks=5), seed=1993)
    assert len(sc.tasks) == 5
    assert sorted(sc.class_order) == list(range(10))
    seen = []
    for t, task in enumerate(sc.tasks):
        assert task.index == t
        assert task.classes == [2 * t, 2 * t + 1]
        seen.extend(task.classes)
        for part in (task.train, task.test):
            assert set(part.labels.tolist()) == set(task.classes)
            assert part.class_names == sc.class_names
            # relabelled ids point back to the original label through the class order
            orig = original_label(data, part.ids)
            assert (np.array(sc.class_order)[part.labels] == orig).all()
        assert not set(task.train.ids.tolist()) & set(task.test.ids.tolist())
    assert seen == list(range(10))
    assert sc.class_names == [f"c{c}" for c in sc.class_order]


def test_classes_per_task_and_num_classes_use_the_head_of_the_order():
    data = make_data()
    sc = build_scenario(data, ScenarioOptions(classes_per_task=3, num_classes=6,
                                              class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]), seed=0)
    assert sc.class_order == [9, 8, 7, 6, 5, 4]
    assert [t.classes for t in sc.tasks] == [[0, 1, 2], [3, 4, 5]]
    assert set(original_label(data, sc.tasks[1].train.ids)) == {6, 5, 4}
    assert sc.tasks[0].train.class_names == ["c9", "c8", "c7", "c6", "c5", "c4"]


def test_pilot_class_order_and_unshuffled_order():
    data = make_data()
    sc = build_scenario(data, ScenarioOptions(num_tasks=2), seed=1993)
    np.random.seed(1993)  # PILOT: np.random.seed(seed); np.random.permutation(num_classes)
    assert sc.class_order == np.random.permutation(10).tolist()
    plain = build_scenario(data, ScenarioOptions(num_tasks=2, shuffle_classes=False), seed=1993)
    assert plain.class_order == list(range(10))


def test_determinism_and_seed_dependence():
    data = make_data()
    opts = ScenarioOptions(num_tasks=5, train_per_class=10)
    a = build_scenario(data, opts, seed=3)
    b = build_scenario(data, opts, seed=3)
    assert a.manifest == b.manifest
    c = build_scenario(data, opts, seed=4)
    assert c.class_order != a.class_order
    # class_order_seed pins the order while the split still follows the run seed
    fixed = ScenarioOptions(num_tasks=5, class_order_seed=7)
    d, e = build_scenario(data, fixed, seed=3), build_scenario(data, fixed, seed=4)
    assert d.class_order == e.class_order
    assert d.manifest["tasks"][0]["test_ids"] != e.manifest["tasks"][0]["test_ids"]


def test_split_does_not_depend_on_storage_order():
    data = make_data()
    perm = np.random.default_rng(0).permutation(len(data))
    shuffled = data.subset(perm)  # same ids, different storage order
    opts = ScenarioOptions(num_tasks=5, train_per_class=7, test_per_class=2)
    assert (build_scenario(data, opts, seed=5).manifest["tasks"]
            == build_scenario(shuffled, opts, seed=5).manifest["tasks"])


def test_caps_are_respected_per_class_and_small_classes_keep_what_they_have():
    labels = np.array([0] * 30 + [1] * 3)
    data = LabeledData(np.zeros((33, 1)), labels, ["a", "b"], "image", source="caps")
    sc = build_scenario(data, ScenarioOptions(num_tasks=1, shuffle_classes=False,
                                              train_per_class=5, test_per_class=2,
                                              test_fraction=0.5), seed=0)
    task = sc.tasks[0]
    assert np.bincount(task.train.labels, minlength=2).tolist() == [5, 1]  # class b: 3 -> 1 test
    assert np.bincount(task.test.labels, minlength=2).tolist() == [2, 2]
    assert sc.manifest["tasks"][0]["train_counts"] == [5, 1]
    assert sc.manifest["tasks"][0]["test_counts"] == [2, 2]
    assert list(task.train.ids) == sorted(task.train.ids)
    assert not set(task.train.ids.tolist()) & set(task.test.ids.tolist())


def test_cap_is_a_seeded_random_subset():
    data = make_data(num_classes=2, split=np.zeros(40, dtype=np.int8))  # no random split involved
    kept = [build_scenario(data, ScenarioOptions(num_tasks=1, train_per_class=5), seed=s)
            .tasks[0].train.ids.tolist() for s in (0, 1, 0)]
    assert len(kept[0]) == 10 and kept[0] == sorted(kept[0])
    assert kept[0] == kept[2] and kept[0] != kept[1]
    assert kept[0] != [0, 1, 2, 3, 4, 20, 21, 22, 23, 24]  # not simply the first ids


def test_official_split_is_kept():
    split = np.tile(np.array([0] * 15 + [1] * 5, dtype=np.int8), 4)
    data = make_data(num_classes=4, split=split)
    sc = build_scenario(data, ScenarioOptions(num_tasks=2, test_fraction=0.5), seed=0)
    official_test = set(data.ids[split == 1].tolist())
    train = {i for t in sc.tasks for i in t.train.ids.tolist()}
    test = {i for t in sc.tasks for i in t.test.ids.tolist()}
    assert test == official_test  # test_fraction does not re-split official samples
    assert not train & official_test
    assert len(train) == 60


def test_split_less_samples_are_split_per_class_by_fraction():
    # class 0 fully split-less, class 1 mixed: 10 official train + 10 without a split
    split = np.array([-1] * 20 + [0] * 10 + [-1] * 10, dtype=np.int8)
    data = make_data(num_classes=2, split=split)
    sc = build_scenario(data, ScenarioOptions(num_tasks=1, test_fraction=0.25,
                                              shuffle_classes=False), seed=0)
    task = sc.tasks[0]
    assert np.bincount(task.test.labels).tolist() == [5, 2]  # round(.25*20), round(.25*10)
    assert np.bincount(task.train.labels).tolist() == [15, 18]
    assert set(data.ids[split == 0].tolist()) <= set(task.train.ids.tolist())
    # no official split at all: every class is split by the fraction
    sc2 = build_scenario(make_data(num_classes=3, per_class=10),
                         ScenarioOptions(num_tasks=3, test_fraction=0.3), seed=1)
    assert [len(t.test) for t in sc2.tasks] == [3, 3, 3]
    # a tiny fraction still puts one sample of a class with >= 2 samples in test
    sc3 = build_scenario(make_data(num_classes=2, per_class=4),
                         ScenarioOptions(num_tasks=1, test_fraction=0.01), seed=1)
    assert np.bincount(sc3.tasks[0].test.labels).tolist() == [1, 1]


def test_manifest_round_trip(tmp_path):
    data = make_data(ids=np.arange(200) + 1000)  # ids that are not positions
    opts = ScenarioOptions(num_tasks=5, train_per_class=8)
    sc = build_scenario(data, opts, seed=11)
    path = tmp_path / "split" / "manifest.json"
    sc.save_manifest(path)
    assert os.listdir(path.parent) == ["manifest.json"]  # no leftover tmp file
    saved = load_manifest(path)
    assert saved == json.loads(json.dumps(sc.manifest))
    assert all(isinstance(i, int) for i in saved["tasks"][0]["train_ids"])
    # reuse with a different seed: the manifest wins
    again = build_scenario(data, ScenarioOptions(manifest=str(path)), seed=99)
    assert again.class_order == sc.class_order
    for a, b in zip(sc.tasks, again.tasks):
        assert a.classes == b.classes
        assert a.train.ids.tolist() == b.train.ids.tolist()
        assert a.test.ids.tolist() == b.test.ids.tolist()
        assert a.train.labels.tolist() == b.train.labels.tolist()
        assert (a.train.items == b.train.items).all()
    sc.save_manifest(path)  # overwriting is atomic too
    assert os.listdir(path.parent) == ["manifest.json"]


def test_failed_save_leaves_no_tmp_file(tmp_path):
    sc = build_scenario(make_data(), ScenarioOptions(num_tasks=2), seed=0)
    bad = Scenario(sc.tasks, sc.class_order, sc.class_names, {"x": object()})
    with pytest.raises(TypeError):
        bad.save_manifest(tmp_path / "m.json")
    assert os.listdir(tmp_path) == []


def test_manifest_mismatch_errors_name_the_file(tmp_path):
    data = make_data()
    sc = build_scenario(data, ScenarioOptions(num_tasks=2), seed=0)
    path = tmp_path / "m.json"
    sc.save_manifest(path)
    opts = ScenarioOptions(manifest=str(path))
    with pytest.raises(DataError, match=r"m\.json.*source 'toy'.*'other'"):
        build_scenario(make_data(source="other"), opts, seed=0)
    with pytest.raises(DataError, match=r"m\.json.*200 samples.*has 180"):
        build_scenario(make_data(per_class=18), opts, seed=0)
    broken = json.loads(path.read_text())
    broken["tasks"][1]["test_ids"].append(5000)
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"m\.json.*tasks\[1\]\.test_ids.*5000"):
        build_scenario(data, opts, seed=0)


def test_load_manifest_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json.*not found"):
        load_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json.*not valid JSON"):
        load_manifest(bad)
    sc = build_scenario(make_data(), ScenarioOptions(num_tasks=2), seed=0)
    m = json.loads(json.dumps(sc.manifest))
    del m["class_order"]
    bad.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"bad\.json.*'class_order'"):
        load_manifest(bad)
    m = json.loads(json.dumps(sc.manifest))
    del m["tasks"][1]["train_ids"]
    bad.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"bad\.json.*'tasks\[1\]\.train_ids'"):
        load_manifest(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of 'num_tasks' and 'classes_per_task'"),
    ({"num_tasks": 2, "classes_per_task": 5}, "exactly one"),
    ({"num_tasks": 3}, "10 classes cannot be divided evenly into num_tasks=3"),
    ({"classes_per_task": 4}, "10 classes cannot be divided into tasks of classes_per_task=4"),
    ({"num_tasks": 2, "class_order": [0, 1, 42]}, r"class_order.*\[42\]"),
    ({"num_tasks": 2, "class_order": [0, 1, 1, 2]}, "duplicates"),
    ({"num_tasks": 2, "num_classes": 12}, "num_classes=12 but only 10 classes"),
    ({"num_tasks": 2, "test_fraction": 0.0}, r"test_fraction.*\(0, 1\)"),
    ({"num_tasks": 2, "test_fraction": 1.0}, r"test_fraction.*\(0, 1\)"),
    ({"num_tasks": 0}, "'num_tasks' must be at least 1"),
])
def test_option_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_scenario(make_data(), ScenarioOptions(**kwargs), seed=0)


def test_unknown_option_key_is_rejected():
    with pytest.raises(ValueError, match="extra"):
        ScenarioOptions(num_task=5)
