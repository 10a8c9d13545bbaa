"""Class-incremental scenario builder: class order, contiguous tasks, per-class split, manifest."""

from __future__ import annotations

import json
import os
from collections import Counter

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


# -- tasks by dataset, VTAB-Sim-S mixing, VTAB-Rec-R recurrence ---------------------------------


def make_vtab(datasets: dict[str, int], train: int = 20, test: int = 5,
              source: str = "vtab:toy") -> LabeledData:
    """Class names '<dataset>/c<i>' numbered dataset by dataset (as the vtab reader writes them),
    an official split of ``train`` + ``test`` samples per class."""
    labels, names, split = [], [], []
    for name, k in datasets.items():
        for j in range(k):
            labels += [len(names)] * (train + test)
            split += [0] * train + [1] * test
            names.append(f"{name}/c{j}")
    items = np.zeros((len(labels), 1), dtype=np.uint8)
    return LabeledData(items, labels, names, "image", official_split=split, source=source)


def dataset_of(sc: Scenario, position: int) -> str:
    return sc.class_names[position].split("/")[0]


BY_DATASET = {"tasks_by": "dataset", "shuffle_classes": False}
FIVE = {"a": 2, "b": 3, "c": 4, "d": 2, "e": 3}
GROUPS = {"g1": ["a", "b", "c"], "g2": ["d", "e"]}  # "e" is left out below for a pure task


def test_tasks_by_dataset_follow_the_data_or_the_given_order():
    data = make_vtab(FIVE)
    sc = build_scenario(data, ScenarioOptions(**BY_DATASET), seed=1993)
    assert [t.dataset for t in sc.tasks] == ["a", "b", "c", "d", "e"]
    assert [len(t.classes) for t in sc.tasks] == [2, 3, 4, 2, 3]  # tasks of their datasets' sizes
    assert sc.class_order == list(range(14))  # classes in dataset order, nothing shuffled
    assert [t.classes for t in sc.tasks][:2] == [[0, 1], [2, 3, 4]]
    for task in sc.tasks:
        assert task.own_classes == task.classes and task.recurrence_of is None
        for part in (task.train, task.test):
            assert {dataset_of(sc, c) for c in part.labels} == {task.dataset}
    assert sc.manifest["version"] == 1 and sc.manifest["tasks_by"] == "dataset"
    assert sc.manifest["datasets"] == ["a", "b", "c", "d", "e"]
    assert sc.manifest["class_order_seed"] is None
    # a given order, leaving a dataset out; classes follow it, dataset by dataset
    sc = build_scenario(data, ScenarioOptions(**BY_DATASET, dataset_order=["e", "a", "c", "b"],
                                              num_tasks=4), seed=0)
    assert [t.dataset for t in sc.tasks] == ["e", "a", "c", "b"]
    assert sc.class_order == [11, 12, 13, 0, 1, 5, 6, 7, 8, 2, 3, 4]
    assert [t.classes for t in sc.tasks] == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert [sc.class_names[c] for c in sc.tasks[0].classes] == ["e/c0", "e/c1", "e/c2"]


def mix_options(s: int = 50, groups=None, **kw) -> ScenarioOptions:
    return ScenarioOptions(**BY_DATASET, similarity_mix=s,
                           dataset_groups=groups or {"g1": ["a", "b", "c"], "g2": ["d"]}, **kw)


@pytest.mark.parametrize("s", [25, 50, 75])
def test_similarity_mix_proportions_groups_and_pure_test_sets(s):
    data = make_vtab(FIVE, train=40, test=5)
    sc = build_scenario(data, mix_options(s), seed=3)
    group = {"a": "g1", "b": "g1", "c": "g1", "d": "g2"}
    label_of = dict(zip(data.ids.tolist(), data.labels.tolist()))
    tested = {i for t in sc.tasks for i in t.test.ids.tolist()}
    for task, spec in zip(sc.tasks, sc.manifest["tasks"]):
        n = len(task.train)
        own = FIVE[task.dataset] * 40
        assert n == own  # the training set keeps its size
        sources = [dataset_of(sc, c) for c in task.train.labels]
        foreign = sum(d != task.dataset for d in sources)
        counts = Counter(sources)
        assert dict(counts) == {d: k for d, k in spec["composition"].items() if k}
        assert list(spec["composition"])[0] == task.dataset  # own dataset first
        if task.dataset in ("a", "b", "c"):
            assert abs(foreign - n * s / 100) <= 0.5  # S% within rounding
            assert {group[d] for d in sources} == {"g1"}  # all from the same group
            mates = set(spec["composition"]) - {task.dataset}
            assert mates == {"a", "b", "c"} - {task.dataset}
            # shared equally among the mates
            assert max(counts[m] for m in mates) - min(counts[m] for m in mates) <= 1
        else:  # d is alone in its group, e in none: pure
            assert foreign == 0 and spec["composition"] == {task.dataset: n}
        # label space: own classes plus the mixed-in samples' own classes, which keep their labels
        assert set(task.train.labels.tolist()) == set(task.classes)
        assert set(task.own_classes) <= set(task.classes)
        assert {dataset_of(sc, c) for c in task.own_classes} == {task.dataset}
        assert set(task.own_classes) <= set(task.train.labels.tolist())  # every own class kept
        assert (np.array(sc.class_order)[task.train.labels]
                == [label_of[i] for i in task.train.ids.tolist()]).all()
        # test sets stay pure: own classes only, and never trained on by any task
        assert set(task.test.labels.tolist()) <= set(task.own_classes)
        assert not tested & set(task.train.ids.tolist())
        assert len(task.test) == FIVE[task.dataset] * 5
    assert sc.manifest["similarity_mix"] == s and sc.manifest["version"] == 2
    assert sc.manifest["dataset_groups"] == {"g1": ["a", "b", "c"], "g2": ["d"]}
    owners = [c for t in sc.tasks for c in t.own_classes]
    assert sorted(owners) == list(range(14))  # every class owned by exactly one task


def test_similarity_mix_is_deterministic_and_its_manifest_round_trips(tmp_path):
    data = make_vtab(FIVE, train=30)
    a, b = build_scenario(data, mix_options(), seed=5), build_scenario(data, mix_options(), seed=5)
    assert a.manifest == b.manifest
    c = build_scenario(data, mix_options(), seed=6)
    assert c.manifest["tasks"][0]["train_ids"] != a.manifest["tasks"][0]["train_ids"]
    path = tmp_path / "sim.json"
    a.save_manifest(path)
    assert load_manifest(path) == json.loads(json.dumps(a.manifest))
    again = build_scenario(data, ScenarioOptions(manifest=str(path)), seed=99)
    for x, y in zip(a.tasks, again.tasks):
        assert (x.index, x.classes, x.own_classes, x.dataset) == (y.index, y.classes,
                                                                  y.own_classes, y.dataset)
        assert x.train.ids.tolist() == y.train.ids.tolist()
        assert x.train.labels.tolist() == y.train.labels.tolist()
        assert x.test.ids.tolist() == y.test.ids.tolist()
    # a manifest built with another S is refused when S is asked for explicitly
    with pytest.raises(ConfigError, match=r"similarity_mix=25 but manifest .*sim\.json.*50"):
        build_scenario(data, ScenarioOptions(manifest=str(path), similarity_mix=25), seed=0)


def test_similarity_mix_passes_a_short_mates_deficit_on():
    # a: 2 x 40 train; b: 1 class x 2 samples; c: 4 x 40. a needs 40 from b and c: b gives 2
    labels, names, split = [], [], []
    for name, k, n in (("a", 2, 40), ("b", 1, 2), ("c", 4, 40)):
        for j in range(k):
            labels += [len(names)] * (n + 1)
            split += [0] * n + [1]
            names.append(f"{name}/c{j}")
    data = LabeledData(np.zeros((len(labels), 1)), labels, names, "image", official_split=split)
    sc = build_scenario(data, mix_options(groups={"g": ["a", "b", "c"]}), seed=0,
                        runnable_only=False)  # b's tiny task draws a low class: ids drop
    assert sc.manifest["tasks"][0]["composition"] == {"a": 40, "b": 2, "c": 38}
    with pytest.raises(DataError, match=r"similarity_mix=75 needs .* group mates of dataset 'c'"):
        build_scenario(data, mix_options(75, groups={"g": ["b", "c"]}), seed=0)


def test_runnable_check_refuses_a_class_space_that_drops():
    # groups interleaved: a draws from c (the highest ids), then b (another group) stays below
    data = make_vtab({"a": 2, "b": 2, "c": 2}, train=10)
    opts = mix_options(groups={"g1": ["a", "c"], "g2": ["b"]})
    with pytest.raises(ConfigError, match=r"task 1 \(b\) trains on classes up to id 3, below id "
                                          r"5 of task 0.*consecutive"):
        build_scenario(data, opts, seed=0)
    sc = build_scenario(data, opts, seed=0, runnable_only=False)
    assert [max(t.classes) for t in sc.tasks] == [5, 3, 5]
    ordered = ScenarioOptions(**{**opts.model_dump(), "dataset_order": ["b", "a", "c"]})
    assert len(build_scenario(data, ordered, seed=0).tasks) == 3  # consecutive group: fine


def test_recurrence_is_built_but_refused_for_runs(tmp_path):
    data = make_vtab(FIVE, train=12, test=6)
    opts = ScenarioOptions(**BY_DATASET, recurrence=3)
    with pytest.raises(ConfigError, match=r"recur.*not run yet.*retriev.*runnable_only=False"):
        build_scenario(data, opts, seed=1)
    sc = build_scenario(data, opts, seed=1, runnable_only=False)
    assert len(sc.tasks) == 8 and sc.manifest["recurrence"] == 3 and sc.manifest["version"] == 2
    first: dict[str, int] = {}
    for task, spec in zip(sc.tasks, sc.manifest["tasks"]):
        if task.dataset in first:  # a recurrence: after its first occurrence, same classes
            assert task.recurrence_of == first[task.dataset] < task.index
            assert task.classes == sc.tasks[first[task.dataset]].classes
        else:
            assert task.recurrence_of is None
            first[task.dataset] = task.index
    assert list(first) == ["a", "b", "c", "d", "e"]  # the base order is kept
    for name in first:  # occurrences are disjoint and together hold the dataset's data
        occ = [t for t in sc.tasks if t.dataset == name]
        for part in ("train", "test"):
            ids = [set(getattr(t, part).ids.tolist()) for t in occ]
            assert sum(len(x) for x in ids) == len(set().union(*ids))
            assert len(set().union(*ids)) == FIVE[name] * (12 if part == "train" else 6)
        if len(occ) > 1:
            assert all(len(t.test) > 0 and len(t.train) > 0 for t in occ)
    again = build_scenario(data, opts, seed=1, runnable_only=False)
    assert again.manifest == sc.manifest
    path = tmp_path / "rec.json"
    sc.save_manifest(path)
    reuse = ScenarioOptions(manifest=str(path))
    with pytest.raises(ConfigError, match="recur"):
        build_scenario(data, reuse, seed=0)
    loaded = build_scenario(data, reuse, seed=0, runnable_only=False)
    assert [t.recurrence_of for t in loaded.tasks] == [t.recurrence_of for t in sc.tasks]
    # more recurrences than tasks: rounds of seeded permutations, class blocks work too
    blocks = ScenarioOptions(num_tasks=2, recurrence=5)
    rec = build_scenario(make_data(num_classes=4, per_class=20), blocks, seed=0,
                         runnable_only=False)
    assert len(rec.tasks) == 7
    assert sorted(Counter(tuple(t.classes) for t in rec.tasks).values()) == [3, 4]
    with pytest.raises(DataError, match="too many to give each of them test samples"):
        build_scenario(make_data(num_classes=2, per_class=5), ScenarioOptions(
            num_tasks=1, recurrence=2), seed=0, runnable_only=False)


def test_manifest_checks_for_mixed_and_recurring_tasks(tmp_path):
    data = make_vtab(FIVE, train=10)
    sc = build_scenario(data, mix_options(), seed=0)
    path = tmp_path / "m.json"
    bad = json.loads(json.dumps(sc.manifest))
    bad["tasks"][1]["train_ids"].append(bad["tasks"][0]["test_ids"][0])  # a test id trained on
    bad["tasks"][1]["classes"] = sorted(set(bad["tasks"][1]["classes"]) | {0})
    bad["tasks"][1]["original_classes"] = [sc.class_order[c] for c in bad["tasks"][1]["classes"]]
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"m\.json: ids that one task tests on are in some task's "
                                        "training set"):
        build_scenario(data, ScenarioOptions(manifest=str(path)), seed=0)
    bad = json.loads(json.dumps(sc.manifest))
    bad["tasks"][1]["own_classes"] = bad["tasks"][0]["own_classes"]  # b's label space has a's
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"tasks\[1\] owns classes that task\(s\) \[0\] own "
                                        "already; only a recurring task"):
        build_scenario(data, ScenarioOptions(manifest=str(path)), seed=0)
    bad["tasks"][1]["own_classes"] = [13]  # a class of e, not in b's label space
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"tasks\[1\] own_classes \[13\] are not all among"):
        build_scenario(data, ScenarioOptions(manifest=str(path)), seed=0)
    bad = json.loads(json.dumps(sc.manifest))
    bad["version"] = 3
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"manifest version 3, expected one of \[1, 2\]"):
        load_manifest(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks_by": "dataset"}, "set shuffle_classes: false"),
    ({**BY_DATASET, "classes_per_task": 2}, "'classes_per_task' do not apply"),
    ({**BY_DATASET, "num_classes": 4, "class_order": [0]}, "'class_order', 'num_classes' do not"),
    ({**BY_DATASET, "num_tasks": 3}, r"num_tasks=3 but .* one task per dataset: 5 \(a, b, c"),
    ({**BY_DATASET, "dataset_order": ["a", "x"]}, r"dataset_order names \['x'\], not datasets"),
    ({**BY_DATASET, "dataset_order": ["a", "a"]}, "names a dataset twice"),
    ({"num_tasks": 2, "dataset_order": ["a"]}, "set tasks_by: dataset"),
    ({"num_tasks": 2, "similarity_mix": 50, "dataset_groups": GROUPS}, "needs tasks_by: dataset"),
    ({**BY_DATASET, "similarity_mix": 50}, "set dataset_groups"),
    ({**BY_DATASET, "dataset_groups": GROUPS}, "only matter with similarity_mix"),
    ({**BY_DATASET, "similarity_mix": 0, "dataset_groups": GROUPS}, r"must lie in 1\.\.99"),
    ({**BY_DATASET, "similarity_mix": 100, "dataset_groups": GROUPS}, r"must lie in 1\.\.99"),
    ({**BY_DATASET, "similarity_mix": 50, "dataset_groups": {"x": ["a"], "y": ["a", "b"]}},
     "dataset 'a' in groups 'x' and 'y'"),
    ({**BY_DATASET, "similarity_mix": 50, "dataset_groups": {"x": []}}, r"\['x'\] is empty"),
    ({**BY_DATASET, "similarity_mix": 50, "dataset_groups": {"x": ["a", "eurosat"]}},
     r"names \['eurosat'\], not datasets of this scenario"),
    ({**BY_DATASET, "similarity_mix": 50, "dataset_groups": {"x": ["a"], "y": ["b"]}},
     "needs two datasets of one group"),
    ({**BY_DATASET, "recurrence": -1}, "'recurrence' must be at least 0"),
    ({**BY_DATASET, "recurrence": 2, "similarity_mix": 50, "dataset_groups": GROUPS},
     "cannot be combined"),
])
def test_dataset_mixing_and_recurrence_option_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_scenario(make_vtab(FIVE), ScenarioOptions(**kwargs), seed=0)


def test_tasks_by_dataset_needs_dataset_prefixes():
    with pytest.raises(ConfigError, match=r"needs class names '<dataset>/<class>' \(as the vtab "
                                          r"reader writes them\); toy has 10 class\(es\) without"):
        build_scenario(make_data(), ScenarioOptions(**BY_DATASET), seed=0)
