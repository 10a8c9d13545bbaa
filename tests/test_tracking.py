"""Experiment tracking extras: per-task metrics to TensorBoard and MLflow, read back."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config_dict
from proteus.config import validate
from proteus.engine import run


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    raw = tiny_config_dict(root / "runs", name="tracked",
                           tracking={"tensorboard": True, "mlflow": str(root / "mlruns"),
                                     "mlflow_experiment": "tiny"})
    results = run(validate(raw))
    return root, results


def test_tensorboard_has_every_task(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, results = tracked
    events = EventAccumulator(str(root / "runs" / "tracked" / "tensorboard"))
    events.Reload()
    seen = events.Scalars("accuracy_seen")
    assert [e.step for e in seen] == [0, 1, 2]
    assert [round(e.value, 6) for e in seen] == [round(v, 6) for v in results["accuracy_seen"]]
    final = events.Scalars("final/final_accuracy")
    assert final[0].value == pytest.approx(results["metrics"]["final_accuracy"])


def test_mlflow_file_store_has_params_and_metrics(tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    root, results = tracked
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(root / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.params["learner.name"] == "simplecil"
    history = client.get_metric_history(found.info.run_id, "accuracy_seen")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
    assert found.data.metrics["final_final_accuracy"] == pytest.approx(
        results["metrics"]["final_accuracy"])


def test_tracking_is_off_by_default_and_validated(tmp_path):
    raw = tiny_config_dict(tmp_path / "runs", name="plain")
    assert validate(raw).tracking.tensorboard is False
    from proteus.registry import ConfigError

    with pytest.raises(ConfigError, match="tracking.tensorbord"):
        validate({**raw, "tracking": {"tensorbord": True}})
    assert json.dumps(validate(raw).resolved()["tracking"])
