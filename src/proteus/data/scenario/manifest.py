"""Split manifests: the JSON record of a scenario's class order and sample ids per task.

4. **Manifest.** The resulting class order and sample ids per task are saved as a JSON manifest
   and can be reused (``manifest=...``) so different methods see exactly the same split.

Manifests that use mixing or recurrence are written as version 2, so that readers which predate
``own_classes`` and ``recurrence_of`` refuse them; version 1 and 2 manifests are both read.

This module reads, writes and checks manifests; turning one into tasks (``_assemble``) is
in :mod:`.protocol`, since a freshly built scenario goes through the same step.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from proteus.data.base import DataError, LabeledData
from proteus.registry import ConfigError

if TYPE_CHECKING:
    from proteus.data.scenario.protocol import ScenarioOptions


MANIFEST_VERSION = 1  # plain class-incremental manifests (disjoint classes)
MIXED_MANIFEST_VERSION = 2  # manifests with similarity mixing or recurrence (docstring)
_READABLE_VERSIONS = (MANIFEST_VERSION, MIXED_MANIFEST_VERSION)
_MANIFEST_KEYS = ("version", "source", "num_samples", "seed", "class_order", "class_names", "tasks")
_TASK_KEYS = ("index", "classes", "original_classes", "train_ids", "test_ids")


def load_manifest(path: str | os.PathLike) -> dict:
    """Read and check a split manifest; every problem is a :class:`DataError` naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: split manifest not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read split manifest: {exc}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: manifest must be a JSON object")
    for key in _MANIFEST_KEYS:
        if key not in manifest:
            raise DataError(f"{path}: manifest is missing key '{key}'")
    if manifest["version"] not in _READABLE_VERSIONS:
        raise DataError(f"{path}: manifest version {manifest['version']!r}, expected one of "
                        f"{list(_READABLE_VERSIONS)}")
    if not isinstance(manifest["tasks"], list) or not manifest["tasks"]:
        raise DataError(f"{path}: 'tasks' must be a non-empty list")
    for i, task in enumerate(manifest["tasks"]):
        for key in _TASK_KEYS:
            if not isinstance(task, dict) or key not in task:
                raise DataError(f"{path}: manifest is missing key 'tasks[{i}].{key}'")
    return manifest


def write_manifest(manifest: dict, path: str | os.PathLike) -> None:
    """Write ``manifest`` as JSON atomically (temp file in the same folder, then replace), so a
    crash never leaves a half-written manifest that a later run would reuse."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_reuse(data: LabeledData, o: ScenarioOptions, manifest: dict, path: str) -> None:
    """A loaded manifest fits ``data`` (source, size) and the scenario options that are set."""
    if manifest["source"] != data.source:
        raise DataError(f"{path}: manifest was built for source {manifest['source']!r}, "
                        f"data is {data.source!r}")
    if manifest["num_samples"] != len(data):
        raise DataError(f"{path}: manifest was built for {manifest['num_samples']} samples, "
                        f"data has {len(data)}")
    if o.num_tasks is not None and o.num_tasks != len(manifest["tasks"]):
        raise ConfigError(f"scenario: num_tasks={o.num_tasks} but manifest {path} has "
                          f"{len(manifest['tasks'])} tasks")
    # options that say which scenario is wanted must agree with the manifest's, when set
    for key, value, default in (("tasks_by", o.tasks_by, "classes"),
                                ("similarity_mix", o.similarity_mix, None),
                                ("recurrence", o.recurrence, 0),
                                ("val_fraction", o.val_fraction, 0.0)):
        recorded = manifest.get(key, default)
        if value != default and value != recorded:
            raise ConfigError(f"scenario: {key}={value!r} but manifest {path} was built with "
                              f"{key}={recorded!r}")
