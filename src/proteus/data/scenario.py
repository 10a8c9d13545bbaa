"""Class-incremental scenarios: a seeded class order cut into contiguous blocks of classes.

Protocol (PILOT / class-incremental convention):

1. **Seeded class order.** The class ids present in the data are permuted with
   ``np.random.RandomState(seed).permutation`` (PILOT's ``np.random.seed(seed);
   np.random.permutation``; its default seed is 1993), unless an explicit ``class_order`` is given
   or ``shuffle_classes`` is off. ``num_classes`` keeps only the first N classes of that order.
2. **Relabelling and contiguous blocks.** Labels become positions in the class order, so task 0
   holds classes ``0..k-1``, task 1 holds ``k..2k-1`` and so on; each task's train and test sets
   contain only its own classes.
3. **Per-class split.** Samples with an official split keep it; the rest are split per class by a
   seeded permutation (``round(test_fraction * n)`` to test, at least 1 when ``n >= 2``). Optional
   caps then keep a seeded random subset per class. Every class draws from its own stream derived
   from ``SeedSequence([seed, class id, purpose])``, so nothing depends on iteration order.
4. **Manifest.** The resulting class order and sample ids per task are saved as a JSON manifest
   and can be reused (``manifest=...``) so different methods see exactly the same split.

The learner is evaluated after every task on the test sets of all tasks seen so far.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.registry import ConfigError, Options

MANIFEST_VERSION = 1
_MANIFEST_KEYS = ("version", "source", "num_samples", "seed", "class_order", "class_names", "tasks")
_TASK_KEYS = ("index", "classes", "original_classes", "train_ids", "test_ids")
_SPLIT, _TRAIN_CAP, _TEST_CAP = 0, 1, 2  # purposes of the per-class random streams


class ScenarioOptions(Options):
    num_tasks: int | None = None  # exactly one of num_tasks / classes_per_task must be set
    classes_per_task: int | None = None
    class_order: list[int] | None = None  # explicit order of original label ids (no shuffling)
    shuffle_classes: bool = True  # seeded permutation of class ids (PILOT convention)
    class_order_seed: int | None = None  # None -> the run seed (PILOT default seed is 1993)
    num_classes: int | None = None  # use only the first N classes of the order
    train_per_class: int | None = None  # seeded cap on train samples per class
    test_per_class: int | None = None  # seeded cap on test samples per class
    test_fraction: float = 0.2  # per-class split for samples without an official split
    split_seed: int | None = None  # None -> the run seed
    manifest: str | None = None  # reuse a saved split manifest instead of building one


@dataclass
class Task:
    index: int
    classes: list[int]  # positions in the class order (the relabelled ids), a contiguous block
    train: LabeledData  # labels relabelled to class-order positions, class_names in class order
    test: LabeledData


@dataclass
class Scenario:
    tasks: list[Task]
    class_order: list[int]  # original label ids, in order
    class_names: list[str]  # names in class-order positions
    manifest: dict

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def save_manifest(self, path: str | os.PathLike) -> None:
        """Write the manifest as JSON atomically (temp file in the same folder, then replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def build_scenario(data: LabeledData, options: ScenarioOptions, seed: int) -> Scenario:
    """Cut ``data`` into class-incremental tasks (see the module docstring for the protocol)."""
    if len(data) == 0:
        raise DataError(f"{data.source or 'data'}: no samples to build a scenario from")
    if options.manifest is not None:
        return _from_manifest(data, options, load_manifest(options.manifest), options.manifest)
    _check_options(options, seed)
    order = _class_order(data, options, seed)
    per_task = _per_task(len(order), options)
    split_seed = seed if options.split_seed is None else options.split_seed
    tasks = []
    for t in range(len(order) // per_task):
        block = order[t * per_task:(t + 1) * per_task]
        splits = [_split_class(data, c, options, split_seed) for c in block]
        tasks.append({
            "index": t,
            "classes": list(range(t * per_task, (t + 1) * per_task)),
            "original_classes": block,
            "train_ids": sorted(i for train, _ in splits for i in train),
            "test_ids": sorted(i for _, test in splits for i in test),
            # what each class actually got (a cap larger than a class keeps what it has)
            "train_counts": [len(train) for train, _ in splits],
            "test_counts": [len(test) for _, test in splits],
        })
    manifest = {
        "version": MANIFEST_VERSION,
        "source": data.source,
        "num_samples": len(data),
        "seed": seed,
        "class_order_seed": seed if options.class_order_seed is None else options.class_order_seed,
        "split_seed": split_seed,
        "class_order": order,
        "class_names": [data.class_names[c] for c in order],
        "tasks": tasks,
    }
    return _assemble(data, manifest, where=data.source or "data")


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
    if manifest["version"] != MANIFEST_VERSION:
        raise DataError(f"{path}: manifest version {manifest['version']!r}, "
                        f"expected {MANIFEST_VERSION}")
    if not isinstance(manifest["tasks"], list) or not manifest["tasks"]:
        raise DataError(f"{path}: 'tasks' must be a non-empty list")
    for i, task in enumerate(manifest["tasks"]):
        for key in _TASK_KEYS:
            if not isinstance(task, dict) or key not in task:
                raise DataError(f"{path}: manifest is missing key 'tasks[{i}].{key}'")
    return manifest


# -- helpers ---------------------------------------------------------------------------------


def _check_options(o: ScenarioOptions, seed: int) -> None:
    if (o.num_tasks is None) == (o.classes_per_task is None):
        raise ConfigError("scenario: set exactly one of 'num_tasks' and 'classes_per_task' "
                          f"(got num_tasks={o.num_tasks}, classes_per_task={o.classes_per_task})")
    for key in ("num_tasks", "classes_per_task", "num_classes", "train_per_class",
                "test_per_class"):
        value = getattr(o, key)
        if value is not None and value < 1:
            raise ConfigError(f"scenario: '{key}' must be at least 1, got {value}")
    if not 0.0 < o.test_fraction < 1.0:
        raise ConfigError(f"scenario: 'test_fraction' must lie in (0, 1), got {o.test_fraction}")
    for key, value in (("seed", seed), ("class_order_seed", o.class_order_seed),
                       ("split_seed", o.split_seed)):
        if value is not None and value < 0:
            raise ConfigError(f"scenario: '{key}' must be non-negative, got {value}")


def _class_order(data: LabeledData, o: ScenarioOptions, seed: int) -> list[int]:
    present = np.unique(data.labels)
    if o.class_order is not None:
        order = list(o.class_order)
        unknown = sorted(set(order) - set(present.tolist()))
        if unknown or len(set(order)) != len(order):
            raise ConfigError(
                "scenario: 'class_order' must list distinct label ids present in the data "
                f"(0..{data.num_classes - 1}); "
                + (f"unknown or absent: {unknown}" if unknown else "it has duplicates"))
        where = "class_order"
    elif o.shuffle_classes:
        order_seed = seed if o.class_order_seed is None else o.class_order_seed
        order = present[np.random.RandomState(order_seed).permutation(len(present))].tolist()
        where = "the data"
    else:
        order, where = present.tolist(), "the data"
    if o.num_classes is not None:
        if o.num_classes > len(order):
            raise ConfigError(f"scenario: num_classes={o.num_classes} but only {len(order)} "
                              f"classes are available in {where}")
        order = order[:o.num_classes]
    return [int(c) for c in order]


def _per_task(num_classes: int, o: ScenarioOptions) -> int:
    if o.num_tasks is not None:
        if num_classes % o.num_tasks:
            raise ConfigError(f"scenario: {num_classes} classes cannot be divided evenly into "
                              f"num_tasks={o.num_tasks} tasks")
        return num_classes // o.num_tasks
    if num_classes % o.classes_per_task:
        raise ConfigError(f"scenario: {num_classes} classes cannot be divided into tasks of "
                          f"classes_per_task={o.classes_per_task} "
                          f"({num_classes / o.classes_per_task:g} tasks)")
    return o.classes_per_task


def _rng(seed: int, cls: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, cls, purpose]))


def _split_class(data: LabeledData, cls: int, o: ScenarioOptions, seed: int):
    """Sample ids of class ``cls`` for train and test: official split, seeded split, caps."""
    pos = np.flatnonzero(data.labels == cls)
    pos = pos[np.argsort(data.ids[pos], kind="stable")]  # canonical order, not storage order
    ids = data.ids[pos]
    split = (np.full(len(ids), -1, np.int8) if data.official_split is None
             else data.official_split[pos])
    free = _rng(seed, cls, _SPLIT).permutation(ids[split == -1])
    n_test = 0 if len(free) < 2 else min(len(free) - 1, max(1, round(o.test_fraction * len(free))))
    train = np.concatenate([ids[split == 0], free[n_test:]])
    test = np.concatenate([ids[split == 1], free[:n_test]])
    train = _cap(np.sort(train), o.train_per_class, _rng(seed, cls, _TRAIN_CAP))
    test = _cap(np.sort(test), o.test_per_class, _rng(seed, cls, _TEST_CAP))
    return train.tolist(), test.tolist()


def _cap(ids: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or len(ids) <= cap:
        return ids
    return rng.choice(ids, size=cap, replace=False)  # the task sorts ids afterwards


def _from_manifest(data: LabeledData, o: ScenarioOptions, manifest: dict, path: str) -> Scenario:
    if manifest["source"] != data.source:
        raise DataError(f"{path}: manifest was built for source {manifest['source']!r}, "
                        f"data is {data.source!r}")
    if manifest["num_samples"] != len(data):
        raise DataError(f"{path}: manifest was built for {manifest['num_samples']} samples, "
                        f"data has {len(data)}")
    if o.num_tasks is not None and o.num_tasks != len(manifest["tasks"]):
        raise ConfigError(f"scenario: num_tasks={o.num_tasks} but manifest {path} has "
                          f"{len(manifest['tasks'])} tasks")
    return _assemble(data, manifest, where=str(path))


def _assemble(data: LabeledData, manifest: dict, where: str) -> Scenario:
    """Tasks from a manifest: map ids back to positions and labels to class-order positions."""
    order = [int(c) for c in manifest["class_order"]]
    bad = [c for c in order if not 0 <= c < data.num_classes]
    if bad:
        raise DataError(f"{where}: class_order has label ids {bad} outside "
                        f"0..{data.num_classes - 1}")
    names = [data.class_names[c] for c in order]
    if manifest["class_names"] != names:
        raise DataError(f"{where}: manifest class_names {manifest['class_names']} do not match "
                        f"the data's {names}")
    position = np.full(data.num_classes, -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    index_of = {int(i): p for p, i in enumerate(data.ids.tolist())}
    tasks = []
    for t, spec in enumerate(manifest["tasks"]):
        classes = [int(c) for c in spec["classes"]]
        if [int(position[c]) for c in spec["original_classes"]] != classes:
            raise DataError(f"{where}: tasks[{t}] classes {classes} do not match original_classes "
                            f"{spec['original_classes']} under class_order")
        overlap = sorted(set(spec["train_ids"]) & set(spec["test_ids"]))
        if overlap:
            raise DataError(f"{where}: tasks[{t}] has ids in both train and test, "
                            f"e.g. {overlap[:5]}")
        parts = []
        for key in ("train_ids", "test_ids"):
            missing = [i for i in spec[key] if i not in index_of]
            if missing:
                raise DataError(f"{where}: tasks[{t}].{key} has ids not in the data, e.g. "
                                f"{missing[:5]} (data ids span {data.ids.min()}..{data.ids.max()})")
            part = data.subset([index_of[i] for i in spec[key]])
            relabelled = position[part.labels]
            if not np.isin(relabelled, classes).all():
                raise DataError(f"{where}: tasks[{t}].{key} holds samples of classes outside the "
                                f"task's {spec['original_classes']}")
            parts.append(part.with_labels(relabelled, names))
        tasks.append(Task(t, classes, parts[0], parts[1]))
    return Scenario(tasks, order, names, manifest)
