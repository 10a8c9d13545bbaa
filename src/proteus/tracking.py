"""Experiment tracking as optional extras: per-task metrics to TensorBoard and MLflow.

Off by default. ``tracking.tensorboard: true`` writes event files to ``<run dir>/tensorboard``;
``tracking.mlflow: URI`` logs the resolved config as parameters and every task's metrics as
steps to an MLflow tracking URI (a local folder such as ``mlruns`` needs no server). Both libraries
are imported only when asked for, with an error naming the extra to install when they are missing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from .registry import Options


class TrackingOptions(Options):
    tensorboard: bool = False
    mlflow: str | None = None  # tracking URI or a local folder, e.g. "mlruns"
    mlflow_experiment: str = Field("proteus", min_length=1)


def _scalars(line: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics line, flattened: accuracy, retrieval, timing, per-task."""
    out = {}
    for key, value in line.items():
        if key in ("task", "extras"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        elif key == "accuracy_per_task":
            out.update({f"accuracy_task_{i}": float(v) for i, v in enumerate(value)})
    return {k: v for k, v in out.items() if not math.isnan(v)}


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"tracking.{extra} needs the '{extra}' package ({exc}); install it with "
                       f"pip install 'proteus-cl[tracking]'")


class TensorBoardTracker:
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", exc) from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log_task(self, line: dict[str, Any]) -> None:
        for key, value in _scalars(line).items():
            self.writer.add_scalar(key, value, global_step=int(line["task"]))
        self.writer.flush()

    def close(self, results: dict[str, Any]) -> None:
        for key, value in results.get("metrics", {}).items():
            if isinstance(value, (int, float)) and not math.isnan(value):
                self.writer.add_scalar(f"final/{key}", float(value), global_step=0)
        self.writer.close()


class MLflowTracker:
    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, Any]):
        try:
            import mlflow
        except ImportError as exc:
            raise _missing("mlflow", exc) from None
        self.mlflow = mlflow
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).resolve().as_uri()  # a plain folder: MLflow's local file store
        if uri.startswith("file:"):
            # MLflow 3 asks file stores to opt in; the file store is what needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_task(self, line: dict[str, Any]) -> None:
        self.mlflow.log_metrics(_scalars(line), step=int(line["task"]))

    def close(self, results: dict[str, Any]) -> None:
        final = {f"final_{k}": float(v) for k, v in results.get("metrics", {}).items()
                 if isinstance(v, (int, float)) and not math.isnan(v)}
        self.mlflow.log_metrics(final)
        self.mlflow.end_run()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                out.update(_flat(item, f"{name}.{i}."))
        else:
            out[name] = value
    return out


def open_trackers(config, run_dir: Path) -> list:
    """The trackers ``config.tracking`` asks for (none by default)."""
    o: TrackingOptions = config.tracking
    trackers: list = []
    if o.tensorboard:
        trackers.append(TensorBoardTracker(run_dir / "tensorboard"))
    if o.mlflow:
        trackers.append(MLflowTracker(o.mlflow, o.mlflow_experiment, str(config.name),
                                      _flat(config.resolved())))
    return trackers
