"""Class-incremental scenarios: options, tasks, and the builder that cuts data into tasks.

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
4. **Manifest** (:mod:`.manifest`). The resulting class order and sample ids per task are
   saved as a JSON manifest and can be reused (``manifest=...``) so different methods see
   exactly the same split.

The learner is evaluated after every task on the test sets of all tasks seen so far.

Steps 5-7, the paper scenarios on VTAB (tasks by dataset, similarity mixing, recurrence),
are described and built in :mod:`.vtab`.

8. **What the learners can run** (``runnable_only``, on by default): besides recurrences (7), a
   sequence whose largest class id ever drops below an earlier task's is refused, because
   learners size their class space by the largest class id of the current task (PROTEUS,
   SimpleCIL) and would crash or silently drop classes. Only similarity mixing can produce such
   a sequence (a task draws a high class of a later group mate that a later task does not
   draw); keeping each group's datasets consecutive in task order and ending each group with its
   dataset of fewest classes rules it out (every mate then draws all of that dataset's classes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.scenario._streams import _SPLIT, _TEST_CAP, _TRAIN_CAP, _VAL, _rng
from proteus.data.scenario.manifest import (
    MANIFEST_VERSION,
    MIXED_MANIFEST_VERSION,
    _check_reuse,
    load_manifest,
    write_manifest,
)
from proteus.data.scenario.vtab import _check_mixing_options, _dataset_tasks, _mix, _recur
from proteus.registry import ConfigError, Options


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
    # seeded per-class share of each class's training samples held out for validation (0: none);
    # the test samples are the same whatever it is
    val_fraction: float = 0.0
    split_seed: int | None = None  # None -> the run seed
    manifest: str | None = None  # reuse a saved split manifest instead of building one
    # "dataset": one task per "<dataset>/" class-name prefix (VTAB-5T large, VTAB-19T);
    # num_tasks is then optional (a check) and shuffle_classes must be false
    tasks_by: Literal["classes", "dataset"] = "classes"
    dataset_order: list[str] | None = None  # tasks_by dataset: these datasets, in this order
    similarity_mix: int | None = None  # VTAB-Sim-S: percent S of train samples from group mates
    dataset_groups: dict[str, list[str]] | None = None  # for similarity_mix: group -> datasets
    recurrence: int = 0  # VTAB-Rec-R: R seeded re-appearances (built, but not runnable yet)


@dataclass
class Task:
    index: int
    # the task's label space in class-order positions: every class its training set holds (a
    # contiguous block unless similarity mixing adds other tasks' classes)
    classes: list[int]
    train: LabeledData  # labels relabelled to class-order positions, class_names in class order
    test: LabeledData  # only own_classes
    own_classes: list[int] | None = None  # classes whose test data this task holds; None: classes
    dataset: str | None = None  # tasks_by dataset: the source dataset
    recurrence_of: int | None = None  # a recurring task: index of the task's first occurrence
    # held out of train by scenario.val_fraction (own classes); None without a validation split
    val: LabeledData | None = None

    def __post_init__(self) -> None:
        if self.own_classes is None:
            self.own_classes = list(self.classes)


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
        write_manifest(self.manifest, path)


def build_scenario(data: LabeledData, options: ScenarioOptions, seed: int, *,
                   runnable_only: bool = True) -> Scenario:
    """Cut ``data`` into class-incremental tasks (see the module docstrings for the protocol).

    ``runnable_only`` (the default, and what ``proteus run`` / ``proteus check`` use) refuses,
    with a :class:`ConfigError` naming the limitation, sequences the learners and metrics cannot
    handle yet: recurring tasks, and a largest class id that drops (vtab docstring, 7; this
    module's, 8).
    """
    if len(data) == 0:
        raise DataError(f"{data.source or 'data'}: no samples to build a scenario from")
    if options.manifest is not None:
        scenario = _from_manifest(data, options, load_manifest(options.manifest),
                                  options.manifest)
        where = str(options.manifest)
    else:
        scenario = _build(data, options, seed)
        where = "scenario"
    if runnable_only:
        _check_runnable(scenario, where)
    return scenario


# -- building --------------------------------------------------------------------------------


def _build(data: LabeledData, o: ScenarioOptions, seed: int) -> Scenario:
    _check_options(o, seed)
    split_seed = seed if o.split_seed is None else o.split_seed
    if o.tasks_by == "dataset":
        datasets, blocks = _dataset_tasks(data, o)
        order = [c for block in blocks for c in block]
    else:
        datasets = None
        order = _class_order(data, o, seed)
        per_task = _per_task(len(order), o)
        blocks = [order[t * per_task:(t + 1) * per_task] for t in range(len(order) // per_task)]
    position = {c: p for p, c in enumerate(order)}
    splits = {c: _split_class(data, c, o, split_seed) for c in order}
    vals = {}
    if o.val_fraction:  # from the training samples only: the test samples stay as they are
        for c in order:
            train, test = splits[c]
            held = _validation(train, o.val_fraction, split_seed, c)
            vals[c] = held
            splits[c] = (sorted(set(train) - set(held)), test)
    tasks = []
    for t, block in enumerate(blocks):
        spec = {"index": t, "classes": [position[c] for c in block], "original_classes": block,
                "train_ids": sorted(i for c in block for i in splits[c][0]),
                "test_ids": sorted(i for c in block for i in splits[c][1]),
                **({"val_ids": sorted(i for c in block for i in vals[c])} if vals else {}),
                # what each class actually got (a cap larger than a class keeps what it has)
                "train_counts": [len(splits[c][0]) for c in block],
                "test_counts": [len(splits[c][1]) for c in block]}
        if datasets is not None:
            spec["dataset"] = datasets[t]
        tasks.append(spec)
    extra: dict = {}
    if o.similarity_mix is not None:
        tasks, groups = _mix(tasks, datasets, splits, position, o, split_seed)
        extra = {"similarity_mix": o.similarity_mix, "dataset_groups": groups}
    if o.recurrence:
        tasks = _recur(tasks, splits, o.recurrence, split_seed)
        extra = {"recurrence": o.recurrence}
    by_dataset = o.tasks_by == "dataset"
    manifest = {
        "version": MIXED_MANIFEST_VERSION if extra else MANIFEST_VERSION,
        "source": data.source,
        "num_samples": len(data),
        "seed": seed,
        # tasks by dataset keep the data order: no seeded class order
        "class_order_seed": (None if by_dataset else
                             seed if o.class_order_seed is None else o.class_order_seed),
        "split_seed": split_seed,
        **({"val_fraction": o.val_fraction} if o.val_fraction else {}),
        "tasks_by": o.tasks_by,
        **({"datasets": datasets} if by_dataset else {}),
        **extra,
        "class_order": order,
        "class_names": [data.class_names[c] for c in order],
        "tasks": tasks,
    }
    return _assemble(data, manifest, where=data.source or "data")


def _check_options(o: ScenarioOptions, seed: int) -> None:
    if o.tasks_by == "classes":
        if (o.num_tasks is None) == (o.classes_per_task is None):
            raise ConfigError("scenario: set exactly one of 'num_tasks' and 'classes_per_task' "
                              f"(got num_tasks={o.num_tasks}, "
                              f"classes_per_task={o.classes_per_task})")
        if o.dataset_order is not None:
            raise ConfigError("scenario: 'dataset_order' orders the tasks of tasks_by: dataset; "
                              "set tasks_by: dataset (or use class_order)")
        if o.similarity_mix is not None:
            raise ConfigError("scenario: similarity_mix draws samples from the other datasets "
                              "of a task's group, so it needs tasks_by: dataset")
    else:
        unused = [k for k in ("classes_per_task", "class_order", "num_classes")
                  if getattr(o, k) is not None]
        if unused:
            raise ConfigError(f"scenario: tasks_by 'dataset' makes one task per dataset, so "
                              f"{', '.join(repr(k) for k in unused)} do not apply "
                              "(choose and order datasets with dataset_order)")
        if o.shuffle_classes:
            raise ConfigError("scenario: tasks_by 'dataset' keeps every dataset's classes in "
                              "data order and the datasets in dataset_order (or data order); "
                              "set shuffle_classes: false")
        if o.dataset_order is not None and len(set(o.dataset_order)) != len(o.dataset_order):
            raise ConfigError(f"scenario: dataset_order {o.dataset_order} names a dataset twice")
    for key in ("num_tasks", "classes_per_task", "num_classes", "train_per_class",
                "test_per_class"):
        value = getattr(o, key)
        if value is not None and value < 1:
            raise ConfigError(f"scenario: '{key}' must be at least 1, got {value}")
    if not 0.0 < o.test_fraction < 1.0:
        raise ConfigError(f"scenario: 'test_fraction' must lie in (0, 1), got {o.test_fraction}")
    if not 0.0 <= o.val_fraction < 1.0:
        raise ConfigError(f"scenario: 'val_fraction' must lie in [0, 1), got {o.val_fraction}")
    for key, value in (("seed", seed), ("class_order_seed", o.class_order_seed),
                       ("split_seed", o.split_seed)):
        if value is not None and value < 0:
            raise ConfigError(f"scenario: '{key}' must be non-negative, got {value}")
    _check_mixing_options(o)


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


def _validation(train: list[int], fraction: float, seed: int, cls: int) -> list[int]:
    """The seeded share ``fraction`` of one class's training ids held out for validation (at
    least one where the class has two or more; never all of them)."""
    if len(train) < 2:
        return []
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    return sorted(_rng(seed, cls, _VAL).choice(np.asarray(train), size=n_val,
                                               replace=False).tolist())


def _cap(ids: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or len(ids) <= cap:
        return ids
    return rng.choice(ids, size=cap, replace=False)  # the task sorts ids afterwards


# -- reuse, assembly and the runnable check ---------------------------------------------------


def _from_manifest(data: LabeledData, o: ScenarioOptions, manifest: dict, path: str) -> Scenario:
    _check_reuse(data, o, manifest, path)
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
    tasks, owner = [], {}
    for t, spec in enumerate(manifest["tasks"]):
        classes = [int(c) for c in spec["classes"]]
        if [int(position[c]) for c in spec["original_classes"]] != classes:
            raise DataError(f"{where}: tasks[{t}] classes {classes} do not match original_classes "
                            f"{spec['original_classes']} under class_order")
        own = [int(c) for c in spec.get("own_classes", classes)]
        if not set(own) <= set(classes):
            raise DataError(f"{where}: tasks[{t}] own_classes {own} are not all among its "
                            f"classes {classes}")
        recurs = spec.get("recurrence_of")
        if recurs is not None:
            if not (isinstance(recurs, int) and 0 <= recurs < t
                    and tasks[recurs].recurrence_of is None and tasks[recurs].classes == classes):
                raise DataError(f"{where}: tasks[{t}] recurrence_of={recurs!r} must name an "
                                "earlier first occurrence with the same classes")
        else:
            taken = sorted({owner[c] for c in own if c in owner})
            if taken:
                raise DataError(f"{where}: tasks[{t}] owns classes that task(s) {taken} own "
                                "already; only a recurring task (recurrence_of) repeats classes")
            owner.update(dict.fromkeys(own, t))
        overlap = sorted(set(spec["train_ids"]) & set(spec["test_ids"]))
        if overlap:
            raise DataError(f"{where}: tasks[{t}] has ids in both train and test, "
                            f"e.g. {overlap[:5]}")
        keys = [("train_ids", classes), ("test_ids", own)]
        if "val_ids" in spec:
            keys.append(("val_ids", own))
        parts = []
        for key, allowed in keys:
            missing = [i for i in spec[key] if i not in index_of]
            if missing:
                raise DataError(f"{where}: tasks[{t}].{key} has ids not in the data, e.g. "
                                f"{missing[:5]} (data ids span {data.ids.min()}..{data.ids.max()})")
            part = data.subset([index_of[i] for i in spec[key]])
            relabelled = position[part.labels]
            if not np.isin(relabelled, allowed).all():
                what = spec["original_classes"] if allowed is classes else [
                    order[c] for c in own]
                raise DataError(f"{where}: tasks[{t}].{key} holds samples of classes outside the "
                                f"task's {what}")
            parts.append(part.with_labels(relabelled, names))
        tasks.append(Task(t, classes, parts[0], parts[1], own_classes=own,
                          dataset=spec.get("dataset"), recurrence_of=recurs,
                          val=parts[2] if len(parts) > 2 else None))
    trained = {i for spec in manifest["tasks"] for i in spec["train_ids"]}
    tested = {i for spec in manifest["tasks"] for i in spec["test_ids"]}
    leaked = sorted(trained & tested)
    if leaked:
        raise DataError(f"{where}: ids that one task tests on are in some task's training set, "
                        f"e.g. {leaked[:5]}")
    validated = {i for spec in manifest["tasks"] for i in spec.get("val_ids", ())}
    mixed = sorted(validated & (trained | tested))
    if mixed:
        raise DataError(f"{where}: validation ids are also training or test ids, "
                        f"e.g. {mixed[:5]}")
    return Scenario(tasks, order, names, manifest)


def _check_runnable(scenario: Scenario, where: str) -> None:
    """Refuse what the learners and metrics cannot run yet (vtab docstring, 7; this module's,
    8)."""
    recurring = [t.index for t in scenario.tasks if t.recurrence_of is not None]
    if recurring:
        raise ConfigError(
            f"{where}: tasks {recurring[:5]}{' ...' if len(recurring) > 5 else ''} recur "
            "(scenario.recurrence, VTAB-Rec-R); recurring tasks can be built but not run yet: "
            "they repeat earlier classes, while the learners assume every class belongs to one "
            "task and the task-retrieval metric would count a test sample retrieved to the "
            "other occurrence of its classes as an error. build_scenario(..., "
            "runnable_only=False) builds the sequence and its manifest")
    top, top_task = 0, None
    for task in scenario.tasks:
        largest = max(task.classes) + 1
        if largest < top:
            name = f" ({task.dataset})" if task.dataset else ""
            raise ConfigError(
                f"{where}: task {task.index}{name} trains on classes up to id {largest - 1}, "
                f"below id {top - 1} of task {top_task}; the learners size their class space by "
                "the largest class id of the current task (PROTEUS, SimpleCIL), so they would "
                "crash or drop classes. With similarity_mix keep each group's datasets "
                "consecutive in the task order and end each group with its dataset of fewest "
                "classes, so that every group mate draws all of that dataset's classes")
        if largest > top:
            top, top_task = largest, task.index
