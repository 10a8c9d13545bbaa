"""scenario.val_fraction: a seeded per-class validation split taken from the training samples.

It never overlaps the test (or training) samples, never changes the test set, is recorded in the
split manifest and reused from it, and a run reports validation metrics beside the test ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_config_dict
from proteus.config import validate
from proteus.data.base import DataError
from proteus.data.scenario import ScenarioOptions, build_scenario, load_manifest
from proteus.engine import run
from proteus.registry import ConfigError
from test_scenario import make_data, original_label


def _ids(data) -> set[int]:
    return set(data.ids.tolist())


@pytest.mark.parametrize("split", [None, "official"])
def test_validation_comes_from_training_data_and_leaves_the_test_set_alone(split):
    official = None
    if split == "official":  # half of each class is an official test sample
        official = np.tile(np.repeat([0, 1], 10), 10).astype(np.int8)
    data = make_data(split=official)
    plain = build_scenario(data, ScenarioOptions(num_tasks=5), seed=3)
    held = build_scenario(data, ScenarioOptions(num_tasks=5, val_fraction=0.25), seed=3)
    for a, b in zip(plain.tasks, held.tasks):
        assert a.test.ids.tolist() == b.test.ids.tolist()  # the test set is unchanged
        assert a.val is None and b.val is not None
        assert not _ids(b.val) & _ids(b.test) and not _ids(b.val) & _ids(b.train)
        assert _ids(b.val) | _ids(b.train) == _ids(a.train)  # taken from training samples only
        for c in b.own_classes:  # per class, a quarter of its training samples
            n_train = int((a.train.labels == c).sum())
            assert int((b.val.labels == c).sum()) == round(0.25 * n_train)
        assert set(original_label(data, b.val.ids)) == {held.class_order[c]
                                                         for c in b.own_classes}
    every_test = set().union(*(_ids(t.test) for t in held.tasks))
    every_val = set().union(*(_ids(t.val) for t in held.tasks))
    assert not every_test & every_val
    # seeded: the same seed, the same split; another split seed, another one
    again = build_scenario(data, ScenarioOptions(num_tasks=5, val_fraction=0.25), seed=3)
    assert [t.val.ids.tolist() for t in again.tasks] == [t.val.ids.tolist() for t in held.tasks]
    other = build_scenario(data, ScenarioOptions(num_tasks=5, val_fraction=0.25, split_seed=4),
                           seed=3)
    assert [t.val.ids.tolist() for t in other.tasks] != [t.val.ids.tolist() for t in held.tasks]


def test_the_manifest_records_the_split_and_reuse_checks_it(tmp_path):
    data = make_data()
    held = build_scenario(data, ScenarioOptions(num_tasks=5, val_fraction=0.2), seed=3)
    path = tmp_path / "manifest.json"
    held.save_manifest(path)
    saved = load_manifest(path)
    assert saved["val_fraction"] == 0.2 and all("val_ids" in t for t in saved["tasks"])
    reused = build_scenario(data, ScenarioOptions(manifest=str(path)), seed=99)
    assert [t.val.ids.tolist() for t in reused.tasks] == [t.val.ids.tolist() for t in held.tasks]
    with pytest.raises(ConfigError, match="val_fraction=0.3"):
        build_scenario(data, ScenarioOptions(manifest=str(path), val_fraction=0.3), seed=3)
    # an existing manifest without a validation split keeps its test set and gets none
    plain = build_scenario(data, ScenarioOptions(num_tasks=5), seed=3)
    plain.save_manifest(tmp_path / "plain.json")
    again = build_scenario(data, ScenarioOptions(manifest=str(tmp_path / "plain.json")), seed=3)
    assert all(t.val is None for t in again.tasks)
    assert [t.test.ids.tolist() for t in again.tasks] == [t.test.ids.tolist() for t in plain.tasks]


def test_a_manifest_whose_validation_ids_are_test_ids_is_refused(tmp_path):
    data = make_data()
    held = build_scenario(data, ScenarioOptions(num_tasks=5, val_fraction=0.2), seed=3)
    manifest = json.loads(json.dumps(held.manifest))
    manifest["tasks"][1]["val_ids"].append(manifest["tasks"][1]["test_ids"][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="bad.json: validation ids are also training or test"):
        build_scenario(data, ScenarioOptions(manifest=str(path)), seed=3)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_validation_fraction_outside_0_1_is_an_error(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        build_scenario(make_data(), ScenarioOptions(num_tasks=5, val_fraction=fraction), seed=3)


def test_a_run_reports_validation_metrics_beside_the_test_ones(tmp_path):
    raw = tiny_config_dict(tmp_path, name="val", learner={"name": "simplecil"},
                           scenario={"num_tasks": 3, "val_fraction": 0.25})
    results = run(validate(raw))
    val = results["validation"]
    assert len(val["accuracy_seen"]) == 3 and 0.0 <= val["metrics"]["final_accuracy"] <= 1.0
    assert val["num_samples"] == sum(t["num_val"] for t in results["tasks"])
    lines = [json.loads(x) for x in (tmp_path / "val" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [round(x["val_accuracy_seen"], 6) for x in lines] == [round(v, 6) for v in
                                                                 val["accuracy_seen"]]
    # the model trained on the training part only: no validation id among the training ids
    manifest = json.loads((tmp_path / "val" / "split_manifest.json").read_text())
    for task in manifest["tasks"]:
        assert not set(task["val_ids"]) & set(task["train_ids"])
