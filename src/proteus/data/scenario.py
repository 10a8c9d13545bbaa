"""Class-incremental scenarios: a seeded class order cut into tasks, per-class splits, manifests.

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

Paper scenarios on VTAB (docs/benchmarks.md has the presets):

5. **Tasks by dataset** (``tasks_by: dataset``; VTAB-5T large, VTAB-19T). One task per source
   dataset, the dataset being the ``"<dataset>/"`` prefix of the class names (the ``vtab``
   reader writes them so). Tasks follow ``dataset_order`` (it may leave datasets out) or the data
   order (classes are numbered dataset by dataset); a task's classes keep their data order, so
   the class order is the datasets' classes one dataset after another, nothing is shuffled and
   tasks have the sizes of their datasets (EuroSAT 10, Flowers-102 102, ...). ``shuffle_classes``
   must be off and ``classes_per_task`` / ``class_order`` / ``num_classes`` do not apply;
   ``num_tasks``, if set, must equal the number of datasets.
6. **Similarity mixing, VTAB-Sim-S** (``similarity_mix: S`` with ``dataset_groups``; tasks by
   dataset only). As in AdaPromptCL's generator (Kim et al., ICML 2024, the source of VTAB-Sim-S
   and VTAB-Rec-R): a task whose dataset has group mates keeps ``n - round(n * S / 100)`` of its
   ``n`` training samples and draws the other ``round(n * S / 100)`` from the *training* pools
   of the other datasets of its group, shared equally among them (the first ones in task order
   take the remainder; a mate with too few samples passes its deficit on). The training set
   keeps its size; test sets stay pure (the task's own test samples only), so no test sample is
   ever trained on. A mate's pool is its whole training set, so a sample may train both its own
   task and a mate's (as in AdaPromptCL). Draws are seeded (``SeedSequence([split_seed, task,
   purpose])``); each draw first takes one sample of every class it can cover, then the rest
   uniformly without replacement, so every own class keeps a sample and a mate's classes are
   all drawn when its share allows. A dataset in no group, or alone in its group, stays pure.
   **Label space** [ours, AdaPromptCL's "online class mask"]: mixed-in samples keep their own
   labels, i.e. classes of the other datasets, owned by other tasks. ``Task.classes`` is the
   task's training label space (its own classes plus the classes of the samples mixed in, in
   class-order position order), so every training label is in ``Task.classes``;
   ``Task.own_classes`` are the classes of its own dataset, whose test samples its test set
   holds. Each class is owned by exactly one task, so the metrics (accuracy per task, task
   retrieval against the task that owns the test sample) keep their meaning. The manifest
   records every task's ``composition`` (training samples per source dataset, own dataset
   first) and the effective groups.
7. **Recurrence, VTAB-Rec-R** (``recurrence: R``). R seeded picks of tasks (each task at most
   once per round of a seeded permutation, so R may exceed the number of tasks) re-appear later
   in the sequence: each recurrence is inserted at a seeded position after the task's previous
   occurrence and gets a new task index, the *same classes* (class ids repeat) and its own share
   of those classes' samples: each class's training and test ids are split evenly (seeded)
   among the task's occurrences, so occurrences are disjoint and together cover the task's
   data. AdaPromptCL's "VTAB-Rec10" (5 datasets, each twice, order shuffled) is 5 datasets with
   ``recurrence: 5`` up to the order. **Not runnable yet**: the learners assume every class
   belongs to one task, and the task-retrieval metric takes a test sample's true task to be its
   occurrence, so a sample retrieved to the other occurrence of the same classes would count as
   an error. :func:`build_scenario` therefore refuses recurring sequences with a
   :class:`ConfigError` naming this limitation (so do ``proteus run`` and ``proteus check``);
   ``build_scenario(..., runnable_only=False)`` builds them and their manifest (e.g. to run
   another code base on the same sequence).
8. **What the learners can run** (``runnable_only``, on by default): besides recurrences, a
   sequence whose largest class id ever drops below an earlier task's is refused, because
   learners size their class space by the largest class id of the current task (PROTEUS,
   SimpleCIL) and would crash or silently drop classes. Only similarity mixing can produce such
   a sequence (a task draws a high class of a later group mate that a later task does not
   draw); keeping each group's datasets consecutive in task order and ending each group with its
   dataset of fewest classes rules it out (every mate then draws all of that dataset's classes).

Manifests that use mixing or recurrence are written as version 2, so that readers which predate
``own_classes`` and ``recurrence_of`` refuse them; version 1 and 2 manifests are both read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.registry import ConfigError, Options

MANIFEST_VERSION = 1  # plain class-incremental manifests (disjoint classes)
MIXED_MANIFEST_VERSION = 2  # manifests with similarity mixing or recurrence (module docstring)
_READABLE_VERSIONS = (MANIFEST_VERSION, MIXED_MANIFEST_VERSION)
_MANIFEST_KEYS = ("version", "source", "num_samples", "seed", "class_order", "class_names", "tasks")
_TASK_KEYS = ("index", "classes", "original_classes", "train_ids", "test_ids")
# purposes of the random streams: per class (split, caps, recurrence split) or per task (mixing)
_SPLIT, _TRAIN_CAP, _TEST_CAP, _MIX, _RECUR, _RECUR_TRAIN, _RECUR_TEST = range(7)


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


def build_scenario(data: LabeledData, options: ScenarioOptions, seed: int, *,
                   runnable_only: bool = True) -> Scenario:
    """Cut ``data`` into class-incremental tasks (see the module docstring for the protocol).

    ``runnable_only`` (the default, and what ``proteus run`` / ``proteus check`` use) refuses,
    with a :class:`ConfigError` naming the limitation, sequences the learners and metrics cannot
    handle yet: recurring tasks, and a largest class id that drops (module docstring, 7-8).
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
    tasks = []
    for t, block in enumerate(blocks):
        spec = {"index": t, "classes": [position[c] for c in block], "original_classes": block,
                "train_ids": sorted(i for c in block for i in splits[c][0]),
                "test_ids": sorted(i for c in block for i in splits[c][1]),
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
    for key, value in (("seed", seed), ("class_order_seed", o.class_order_seed),
                       ("split_seed", o.split_seed)):
        if value is not None and value < 0:
            raise ConfigError(f"scenario: '{key}' must be non-negative, got {value}")
    _check_mixing_options(o)


def _check_mixing_options(o: ScenarioOptions) -> None:
    if o.similarity_mix is not None:
        if not 1 <= o.similarity_mix <= 99:
            raise ConfigError(f"scenario: similarity_mix is the percent S of VTAB-Sim-S and must "
                              f"lie in 1..99, got {o.similarity_mix} (leave it unset for none)")
        if o.dataset_groups is None:
            raise ConfigError("scenario: similarity_mix draws from the other datasets of the "
                              "same group; set dataset_groups (VTAB: natural, specialized, "
                              "structured; configs/paper/vtab-sim50.yaml lists them)")
    elif o.dataset_groups is not None:
        raise ConfigError("scenario: dataset_groups only matter with similarity_mix; set "
                          "similarity_mix or remove dataset_groups")
    if o.dataset_groups is not None:
        owner: dict[str, str] = {}
        for group, members in o.dataset_groups.items():
            if not members:
                raise ConfigError(f"scenario: dataset_groups['{group}'] is empty")
            for name in members:
                if name in owner:
                    where = (f"twice in group '{group}'" if owner[name] == group
                             else f"in groups '{owner[name]}' and '{group}'")
                    raise ConfigError(f"scenario: dataset_groups has dataset '{name}' {where}; "
                                      "each dataset belongs to one group")
                owner[name] = group
    if o.recurrence < 0:
        raise ConfigError(f"scenario: 'recurrence' must be at least 0, got {o.recurrence}")
    if o.recurrence and o.similarity_mix is not None:
        raise ConfigError("scenario: recurrence and similarity_mix cannot be combined")


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


def _dataset_of(class_name: str) -> str | None:
    head, sep, tail = class_name.partition("/")
    return head if sep and head and tail else None


def _dataset_tasks(data: LabeledData, o: ScenarioOptions) -> tuple[list[str], list[list[int]]]:
    """Datasets in task order and each one's class ids (data order), for tasks_by dataset."""
    by_dataset: dict[str, list[int]] = {}
    bare = []
    for c in np.unique(data.labels).tolist():
        name = _dataset_of(data.class_names[c])
        if name is None:
            bare.append(data.class_names[c])
        else:
            by_dataset.setdefault(name, []).append(int(c))
    if bare:
        raise ConfigError(f"scenario: tasks_by 'dataset' needs class names '<dataset>/<class>' "
                          f"(as the vtab reader writes them); {data.source or 'the data'} has "
                          f"{len(bare)} class(es) without a dataset prefix, e.g. {bare[:3]}")
    available = list(by_dataset)
    if o.dataset_order is not None:
        unknown = [d for d in o.dataset_order if d not in by_dataset]
        if unknown:
            raise ConfigError(f"scenario: dataset_order names {unknown}, not datasets of the "
                              f"data (it has {available})")
        chosen = list(o.dataset_order)
    else:
        chosen = available
    if o.num_tasks is not None and o.num_tasks != len(chosen):
        raise ConfigError(f"scenario: num_tasks={o.num_tasks} but tasks_by 'dataset' makes one "
                          f"task per dataset: {len(chosen)} ({', '.join(chosen)})")
    return chosen, [by_dataset[d] for d in chosen]


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


# -- VTAB-Sim-S: similarity mixing -------------------------------------------------------------


def _mix(tasks: list[dict], datasets: list[str], splits: dict, position: dict[int, int],
         o: ScenarioOptions, seed: int) -> tuple[list[dict], dict[str, list[str]]]:
    """Each task with group mates keeps (100 - S)% of its training samples and draws S% from
    the mates' training pools (module docstring, 6). Returns the tasks and the groups as used."""
    group_of = {name: g for g, members in o.dataset_groups.items() for name in members}
    unknown = [name for name in group_of if name not in datasets]
    if unknown:
        raise ConfigError(f"scenario: dataset_groups names {unknown}, not datasets of this "
                          f"scenario ({', '.join(datasets)}); names must match the dataset "
                          "folders (drop the missing ones from the groups)")
    groups = {g: [d for d in datasets if group_of.get(d) == g] for g in o.dataset_groups}
    if not any(len(members) > 1 for members in groups.values()):
        raise ConfigError(f"scenario: similarity_mix needs two datasets of one group, but no "
                          f"group of dataset_groups has two in this scenario: {groups}")
    pools = [{c: np.asarray(splits[c][0], dtype=np.int64) for c in spec["original_classes"]}
             for spec in tasks]
    sizes = [sum(len(ids) for ids in pool.values()) for pool in pools]
    share_of = o.similarity_mix / 100.0
    out = []
    for t, spec in enumerate(tasks):
        name = datasets[t]
        mates = [u for u, other in enumerate(datasets)
                 if u != t and name in group_of and group_of.get(other) == group_of[name]]
        n = sizes[t]
        if not mates or n == 0:  # alone in its group, or in none: stays pure
            out.append({**spec, "own_classes": spec["classes"], "composition": {name: n}})
            continue
        rng = _rng(seed, t, _MIX)
        own_nonempty = sum(1 for ids in pools[t].values() if len(ids))
        n_keep = max(n - int(round(n * share_of)), own_nonempty)  # every own class keeps one
        n_mixed = n - n_keep
        drawn = {c: ids for c, ids in _draw(pools[t], n_keep, rng).items()}
        composition = {name: n_keep}
        for u, k in zip(mates, _shares(n_mixed, [sizes[u] for u in mates], name, o)):
            got = _draw(pools[u], k, rng)
            drawn.update(got)  # datasets have disjoint classes
            composition[datasets[u]] = int(sum(len(ids) for ids in got.values()))
        exposed = sorted(drawn, key=position.__getitem__)
        out.append({
            "index": t,
            "dataset": name,
            "classes": [position[c] for c in exposed],
            "original_classes": exposed,
            "own_classes": spec["classes"],
            "train_ids": sorted(int(i) for ids in drawn.values() for i in ids),
            "test_ids": spec["test_ids"],
            "train_counts": [len(drawn[c]) for c in exposed],
            "own_test_counts": spec["test_counts"],  # aligned with own_classes
            "composition": composition,
        })
    return out, groups


def _draw(pool: dict[int, np.ndarray], k: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """``k`` ids of ``pool`` (class -> ids), seeded and without replacement: one of every class
    first when ``k`` covers the classes, then the rest uniformly. Returns class -> sorted ids."""
    classes = [c for c in sorted(pool) if len(pool[c])]
    if k >= sum(len(pool[c]) for c in classes):
        return {c: np.sort(pool[c]) for c in classes}
    chosen: dict[int, list[int]] = {c: [] for c in classes}
    rest, rest_class = [], []
    cover = k >= len(classes)
    for c in classes:
        ids = np.sort(pool[c])
        if cover:
            j = int(rng.integers(len(ids)))
            chosen[c].append(int(ids[j]))
            ids = np.delete(ids, j)
        rest.append(ids)
        rest_class.append(np.full(len(ids), c))
    k -= len(classes) if cover else 0
    ids, owner = np.concatenate(rest), np.concatenate(rest_class)
    for j in rng.choice(len(ids), size=k, replace=False):
        chosen[int(owner[j])].append(int(ids[j]))
    return {c: np.sort(np.asarray(v, dtype=np.int64)) for c, v in chosen.items() if v}


def _shares(total: int, capacity: list[int], name: str, o: ScenarioOptions) -> list[int]:
    """``total`` split equally over mates (the first ones take the remainder), a mate short of
    samples passing its deficit on to the others."""
    share = [0] * len(capacity)
    left = total
    while left:
        room = [i for i, cap in enumerate(capacity) if share[i] < cap]
        if not room:
            raise DataError(f"scenario: similarity_mix={o.similarity_mix} needs {total} training "
                            f"samples from the group mates of dataset '{name}', but they hold "
                            f"only {sum(capacity)}")
        each, extra = divmod(left, len(room))
        for j, i in enumerate(room):
            add = min(capacity[i] - share[i], each + (1 if j < extra else 0))
            share[i] += add
            left -= add
    return share


# -- VTAB-Rec-R: recurrence ----------------------------------------------------------------------


def _recur(tasks: list[dict], splits: dict, recurrences: int, seed: int) -> list[dict]:
    """R seeded re-appearances, each after the task's previous occurrence; every class's train
    and test ids are split evenly (seeded) among the task's occurrences (module docstring, 7)."""
    rng = _rng(seed, 0, _RECUR)
    rounds = -(-recurrences // len(tasks))
    picks = np.concatenate([rng.permutation(len(tasks)) for _ in range(rounds)])[:recurrences]
    sequence = list(range(len(tasks)))
    for b in picks.tolist():
        last = max(i for i, x in enumerate(sequence) if x == b)
        sequence.insert(int(rng.integers(last + 1, len(sequence) + 1)), b)
    occurrences = Counter(sequence)
    parts: dict[int, list[tuple[list, list]]] = {}
    for b, spec in enumerate(tasks):
        k = occurrences[b]
        per_class = []
        for c in spec["original_classes"]:
            train = np.array_split(_rng(seed, c, _RECUR_TRAIN).permutation(splits[c][0]), k)
            test = np.array_split(_rng(seed, c, _RECUR_TEST).permutation(splits[c][1]), k)
            per_class.append((train, test))
        parts[b] = [([np.sort(tr[j]).tolist() for tr, _ in per_class],
                     [np.sort(te[j]).tolist() for _, te in per_class]) for j in range(k)]
        for j, (train, test) in enumerate(parts[b]):
            for what, ids in (("training", train), ("test", test)):
                if not sum(len(x) for x in ids):
                    name = spec.get("dataset", f"task {b}")
                    raise DataError(f"scenario: recurrence={recurrences} makes {k} occurrences "
                                    f"of {name}, too many to give each of them {what} samples "
                                    f"(occurrence {j + 1} would get none)")
    first: dict[int, int] = {}
    seen: Counter = Counter()
    out = []
    for index, b in enumerate(sequence):
        spec = tasks[b]
        train, test = parts[b][seen[b]]
        out.append({
            "index": index,
            **({"dataset": spec["dataset"]} if "dataset" in spec else {}),
            "classes": spec["classes"],
            "original_classes": spec["original_classes"],
            "recurrence_of": first.get(b),
            "occurrence": seen[b],
            "train_ids": sorted(i for ids in train for i in ids),
            "test_ids": sorted(i for ids in test for i in ids),
            "train_counts": [len(ids) for ids in train],
            "test_counts": [len(ids) for ids in test],
        })
        first.setdefault(b, index)
        seen[b] += 1
    return out


# -- reuse, assembly and the runnable check ---------------------------------------------------


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
    # options that say which scenario is wanted must agree with the manifest's, when set
    for key, value, default in (("tasks_by", o.tasks_by, "classes"),
                                ("similarity_mix", o.similarity_mix, None),
                                ("recurrence", o.recurrence, 0)):
        recorded = manifest.get(key, default)
        if value != default and value != recorded:
            raise ConfigError(f"scenario: {key}={value!r} but manifest {path} was built with "
                              f"{key}={recorded!r}")
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
        parts = []
        for key, allowed in (("train_ids", classes), ("test_ids", own)):
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
                          dataset=spec.get("dataset"), recurrence_of=recurs))
    trained = {i for spec in manifest["tasks"] for i in spec["train_ids"]}
    leaked = sorted(trained & {i for spec in manifest["tasks"] for i in spec["test_ids"]})
    if leaked:
        raise DataError(f"{where}: ids that one task tests on are in some task's training set, "
                        f"e.g. {leaked[:5]}")
    return Scenario(tasks, order, names, manifest)


def _check_runnable(scenario: Scenario, where: str) -> None:
    """Refuse what the learners and metrics cannot run yet (module docstring, 7 and 8)."""
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
