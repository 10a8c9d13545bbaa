"""VTAB scenarios: tasks by dataset, similarity mixing (VTAB-Sim-S), recurrence (VTAB-Rec-R).

Paper scenarios on VTAB (docs/benchmarks.md has the presets), numbered after the
class-incremental protocol of :mod:`.protocol` (1-3) and the manifest (4):

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
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from proteus.data.base import DataError, LabeledData
from proteus.data.scenario._streams import _MIX, _RECUR, _RECUR_TEST, _RECUR_TRAIN, _rng
from proteus.registry import ConfigError

if TYPE_CHECKING:
    from proteus.data.scenario.protocol import ScenarioOptions


# -- options --------------------------------------------------------------------------------


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


# -- tasks by dataset ------------------------------------------------------------------------


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


# -- VTAB-Sim-S: similarity mixing -------------------------------------------------------------


def _mix(tasks: list[dict], datasets: list[str], splits: dict, position: dict[int, int],
         o: ScenarioOptions, seed: int) -> tuple[list[dict], dict[str, list[str]]]:
    """Each task with group mates keeps (100 - S)% of its training samples and draws S% from
    the mates' training pools (docstring, 6). Returns the tasks and the groups as used."""
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
            **({"val_ids": spec["val_ids"]} if "val_ids" in spec else {}),
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
    and test ids are split evenly (seeded) among the task's occurrences (docstring, 7)."""
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
