"""End to end: SimpleCIL on a tiny random ViT over synthetic images, 6 classes in 3 tasks.

Three runs are shared by the whole module (each takes a few seconds on a CPU): a base run through
``proteus.run``, the same config again through the CLI under another name, and a run that reuses
the base run's split manifest with a different seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import proteus
from proteus.cli import main
from proteus.config import validate
from proteus.data import ScenarioOptions, build_scenario, stack
from proteus.assemble import load_data

from conftest import TINY_NUM_CLASSES, TINY_NUM_TASKS, assembled, assert_matches_last_column

METRIC_KEYS = ("final_accuracy", "average_incremental_accuracy", "average_accuracy",
               "average_forgetting", "backward_transfer")
T = TINY_NUM_TASKS


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_tiny_config):
    root = tmp_path_factory.mktemp("engine")
    # 1. the base run, in process
    base_raw = make_tiny_config(root / "a", name="base")
    base_results = proteus.run(validate(base_raw))
    base_dir = root / "a" / "base"

    # 2. the same config again through the CLI, other name and output dir
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(base_raw))
    code = main(["run", str(preset), "--name", "again", "--output-dir", str(root / "b")])
    assert code == 0
    again_dir = root / "b" / "again"

    # 3. the base split reused through scenario.manifest, under another seed, no model saved
    reuse_raw = make_tiny_config(
        root / "c", name="reuse", seed=5, save_model=False,
        scenario={"manifest": str(base_dir / "split_manifest.json")})
    reuse_results = proteus.run(validate(reuse_raw))
    return {"base_raw": base_raw, "base": base_dir, "base_results": base_results,
            "again": again_dir, "reuse": root / "c" / "reuse", "reuse_results": reuse_results,
            "reuse_raw": reuse_raw}


# ---------------------------------------------------------------------------------------------
# the run directory


def test_run_directory_has_every_output(runs):
    run_dir = runs["base"]
    for name in ("config.yaml", "class_order.json", "split_manifest.json", "metrics.jsonl",
                 "results.json", "report.md", "model/manifest.json", "model/v0001/model.json",
                 "model/v0001/serve.safetensors"):
        path = run_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    pngs = sorted(run_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"accuracy_matrix.png", "accuracy_curve.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # atomic writes leave no temp files or half-replaced model directories behind
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert not (run_dir / "checkpoint").exists()  # a complete run needs no checkpoint
    assert "base" in (run_dir / "report.md").read_text()


def test_returned_results_equal_results_json(runs):
    on_disk = read_json(runs["base"] / "results.json")
    assert json.loads(json.dumps(runs["base_results"])) == on_disk


def test_config_yaml_is_the_resolved_config_and_reloads(runs):
    written = yaml.safe_load((runs["base"] / "config.yaml").read_text())
    assert written == read_json(runs["base"] / "results.json")["config"]
    assert written["backbone"]["patch_size"] == 4  # defaults are filled in
    assert written["scenario"]["test_fraction"] == 0.2
    assert validate(written).resolved() == written


def test_class_order_file(runs):
    order = read_json(runs["base"] / "class_order.json")
    assert sorted(order["class_order"]) == list(range(TINY_NUM_CLASSES))
    assert order["class_names"] == [f"class {c}" for c in order["class_order"]]
    per = TINY_NUM_CLASSES // T
    assert order["tasks"] == [list(range(t * per, (t + 1) * per)) for t in range(T)]


# ---------------------------------------------------------------------------------------------
# results and metrics


def test_accuracy_matrix_shape_and_undefined_cells(runs):
    acc = read_json(runs["base"] / "results.json")["accuracy_matrix"]
    assert len(acc) == T and all(len(row) == T for row in acc)
    # acc[i][t]: accuracy on task i after learning task t, defined only for i <= t
    for i in range(T):
        for t in range(T):
            if i > t:
                assert acc[i][t] is None, (i, t)
            else:
                assert isinstance(acc[i][t], float) and 0.0 <= acc[i][t] <= 1.0, (i, t)


def test_metrics_follow_from_matrix(runs):
    results = read_json(runs["base"] / "results.json")
    metrics = results["metrics"]
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], float), key
    assert metrics.get("task_retrieval_accuracy") is None  # simplecil infers no task
    acc = np.array([[np.nan if v is None else v for v in row] for row in results["accuracy_matrix"]])
    seen = np.array(results["accuracy_seen"])
    assert len(seen) == T
    n_test = np.array([t["num_test"] for t in results["tasks"]])
    for t in range(T):  # A_t is weighted by test-set size
        assert seen[t] == pytest.approx((acc[: t + 1, t] * n_test[: t + 1]).sum()
                                        / n_test[: t + 1].sum())
    assert metrics["final_accuracy"] == pytest.approx(seen[-1])
    assert metrics["average_incremental_accuracy"] == pytest.approx(seen.mean())
    assert metrics["average_accuracy"] == pytest.approx(acc[:, -1].mean())
    forgetting = np.mean([np.max(acc[i, i:T - 1]) - acc[i, T - 1] for i in range(T - 1)])
    assert metrics["average_forgetting"] == pytest.approx(forgetting)
    bwt = np.mean([acc[i, T - 1] - acc[i, i] for i in range(T - 1)])
    assert metrics["backward_transfer"] == pytest.approx(bwt)


def test_results_describe_tasks_and_parameters(runs):
    results = read_json(runs["base"] / "results.json")
    assert [t["index"] for t in results["tasks"]] == list(range(T))
    for task in results["tasks"]:
        # 40 samples per class, 20% test, two classes per task
        assert task["num_train"] == 2 * 32 and task["num_test"] == 2 * 8
    assert results["learner"] == "simplecil" and results["backbone"] == "tiny-vit"
    assert results["parameters"]["stored_bytes"] == TINY_NUM_CLASSES * 32 * 4  # 6 x 32 float32
    assert len(results["timing"]) == T
    # the task-IL pass runs once, after the last task, and is timed apart from eval_s
    assert ["task_il_eval_s" in step for step in results["timing"]] == [False] * (T - 1) + [True]


def test_task_il_accuracy_is_reported_for_simplecil(runs):
    metrics = read_json(runs["base"] / "results.json")["metrics"]
    assert isinstance(metrics["task_il_accuracy"], float)
    assert metrics["final_accuracy"] <= metrics["task_il_accuracy"] <= 1.0
    report = (runs["base"] / "report.md").read_text()
    assert "task-IL accuracy (task given)" in report


def test_metrics_jsonl_has_one_line_per_task(runs):
    lines = (runs["base"] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == T
    results = read_json(runs["base"] / "results.json")
    for t, text in enumerate(lines):
        line = json.loads(text)
        assert line["task"] == t
        assert line["accuracy_seen"] == pytest.approx(results["accuracy_seen"][t])
        column = [results["accuracy_matrix"][i][t] for i in range(t + 1)]
        assert line["accuracy_per_task"] == pytest.approx(column)
        assert line["train_s"] >= 0 and line["eval_s"] >= 0


def test_accuracy_above_chance(runs):
    results = read_json(runs["base"] / "results.json")
    per = TINY_NUM_CLASSES // T
    assert results["accuracy_matrix"][0][0] >= 1.0 / per + 0.25  # 2-way first task
    assert results["metrics"]["final_accuracy"] > 1.0 / TINY_NUM_CLASSES + 0.15


# ---------------------------------------------------------------------------------------------
# reproducibility and split reuse


def test_same_config_twice_gives_identical_results(runs):
    a = read_json(runs["base"] / "results.json")
    b = read_json(runs["again"] / "results.json")
    assert b["name"] == "again"
    assert a["metrics"] == b["metrics"]
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["class_order"] == b["class_order"]
    assert read_json(runs["base"] / "split_manifest.json") == read_json(
        runs["again"] / "split_manifest.json")


def test_manifest_reuse_gives_the_same_tasks(runs):
    base = read_json(runs["base"] / "results.json")
    reuse = runs["reuse_results"]
    assert reuse["seed"] == 5
    assert reuse["class_order"] == base["class_order"]
    assert reuse["tasks"] == base["tasks"]
    assert read_json(runs["reuse"] / "class_order.json") == read_json(
        runs["base"] / "class_order.json")
    assert read_json(runs["reuse"] / "split_manifest.json")["tasks"] == read_json(
        runs["base"] / "split_manifest.json")["tasks"]
    # same split, same frozen backbone: the same accuracies
    assert reuse["accuracy_matrix"] == base["accuracy_matrix"]
    # and the manifest mattered: seed 5 on its own orders the classes differently
    config = validate(runs["base_raw"])
    fresh = build_scenario(load_data(config.data), ScenarioOptions(num_tasks=T), seed=5)
    assert fresh.class_order != base["class_order"]


def test_save_model_false_writes_no_model(runs):
    assert not (runs["reuse"] / "model").exists()
    assert (runs["reuse"] / "results.json").is_file()


# ---------------------------------------------------------------------------------------------
# CLI report and the saved model


def test_cli_report_re_renders(runs, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(runs["base"], run_dir)
    (run_dir / "report.md").unlink()
    for png in run_dir.glob("*.png"):
        png.unlink()
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "base" in report
    assert (run_dir / "accuracy_matrix.png").is_file()
    assert (run_dir / "accuracy_curve.png").is_file()
    assert "report.md" in "".join(capsys.readouterr().err.split())


def test_cli_report_on_a_non_run_dir_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json" in "".join(capsys.readouterr().err.split())


def _test_set(runs):
    run = assembled(runs["base_raw"], runs["base"] / "split_manifest.json", backbone=False,
                    learner=False)
    return run.config, run.scenario


def test_loaded_model_predicts_like_the_run(runs):
    config, scenario = _test_set(runs)
    test = stack([t.test for t in scenario.tasks])
    model = proteus.load_model(runs["base"] / "model", device="cpu")
    assert model.class_names == scenario.class_names
    out = model.predict(test.items)
    ids = np.asarray(out["class_ids"])
    assert ids.shape == (len(test),)
    assert out["class_names"] == [scenario.class_names[c] for c in ids]
    assert out["task_ids"] is None

    # per-task accuracy of the reloaded model = the last column of the run's matrix
    acc = read_json(runs["base"] / "results.json")["accuracy_matrix"]
    assert_matches_last_column(ids, scenario, acc)

    # and exactly the predictions of a freshly trained learner on the same split
    fresh_run = assembled(runs["base_raw"], runs["base"] / "split_manifest.json")
    learner, ctx = fresh_run.learner, fresh_run.ctx
    for task in scenario.tasks:
        learner.learn_task(task, ctx)
    fresh = learner.predict(test, ctx).classes
    assert np.array_equal(fresh, ids)


def test_loaded_model_predicts_a_few_items_in_any_batch_size(runs):
    _, scenario = _test_set(runs)
    test = scenario.tasks[-1].test
    model = proteus.load_model(runs["base"] / "model", device="cpu")
    whole = np.asarray(model.predict(test.items)["class_ids"])
    model.batch_size = 3
    assert np.array_equal(np.asarray(model.predict(test.items[:5])["class_ids"]), whole[:5])
    assert np.asarray(model.predict(test.items[:0])["class_ids"]).shape == (0,)
