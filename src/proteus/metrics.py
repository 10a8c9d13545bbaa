"""Class-incremental accuracy bookkeeping and the metrics derived from it.

Notation (all accuracies are fractions in [0, 1]):

* ``acc[i, t]``: accuracy on task ``i``'s test data after learning task ``t``, predicting among
  every class seen up to ``t``; defined only for ``i <= t``.
* ``A_t``: accuracy on all test data seen so far after task ``t``, i.e. sample-weighted over tasks
  ``0..t`` (a task with more test samples counts for more, exactly as if the whole seen test set
  were scored at once).

With ``T`` finished steps (last index ``L = T - 1``):

* ``final_accuracy`` = ``A_L``
* ``average_incremental_accuracy`` = ``(1/T) sum_t A_t``
* ``average_accuracy`` = ``(1/T) sum_i acc[i, L]`` (unweighted over tasks; L2P's "Acc@1")
* ``average_forgetting`` = ``(1/(T-1)) sum_{i<L} max_{i<=t<L} (acc[i, t] - acc[i, L])``
* ``backward_transfer`` = ``(1/(T-1)) sum_{i<L} (acc[i, L] - acc[i, i])``
* ``task_retrieval_accuracy``: fraction of test samples whose predicted task is their true task
* ``task_il_accuracy``: after the last step, the fraction of all test samples classified
  correctly when each sample's task is *given* (task-incremental accuracy: the answer is one of
  its own task's classes). Beside ``final_accuracy`` it tells forgetting inside the
  representation (both low) from a head that fails to compare tasks (task-IL high, final low).
  None for a learner that cannot predict with a given task.

Forgetting and backward transfer need an earlier step to compare against, so they are ``None``
when ``T == 1``. Forgetting is not clipped at zero: a negative value honestly reports that every
old task ended above its best earlier accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRIC_LABELS: dict[str, str] = {
    "final_accuracy": "final accuracy",
    "average_incremental_accuracy": "average incremental accuracy",
    "average_accuracy": "average accuracy",
    "average_forgetting": "average forgetting",
    "backward_transfer": "backward transfer",
    "task_retrieval_accuracy": "task-retrieval accuracy",
    "task_il_accuracy": "task-IL accuracy (task given)",
}


def metrics_from_matrix(
    acc: np.ndarray,
    accuracy_seen: np.ndarray,
    *,
    task_retrieval_accuracy: float | None = None,
    task_il_accuracy: float | None = None,
) -> dict[str, float | None]:
    """All metrics of :data:`METRIC_LABELS` from an accuracy matrix and the ``A_t`` curve.

    The number of finished steps is ``len(accuracy_seen)``; only ``acc[:T, :T]`` is read, so a
    full-size matrix of a partial run (NaN in the columns not done yet) can be passed as is.
    Every entry with ``i <= t < T`` must be a number. With no finished step every value is None.
    """
    seen = np.asarray(accuracy_seen, dtype=float).reshape(-1)
    acc = np.asarray(acc, dtype=float)
    n = seen.shape[0]
    result: dict[str, float | None] = {key: None for key in METRIC_LABELS}
    result["task_retrieval_accuracy"] = (
        None if task_retrieval_accuracy is None else float(task_retrieval_accuracy)
    )
    result["task_il_accuracy"] = None if task_il_accuracy is None else float(task_il_accuracy)
    if n == 0:
        return result
    if acc.ndim != 2 or acc.shape[0] < n or acc.shape[1] < n:
        raise ValueError(
            f"accuracy matrix of shape {acc.shape} is too small for {n} finished steps"
        )
    acc = acc[:n, :n]
    defined = np.triu(np.ones((n, n), dtype=bool))
    if np.isnan(acc[defined]).any():
        i, t = np.argwhere(defined & np.isnan(acc))[0]
        raise ValueError(f"accuracy of task {i} after task {t} is missing")
    if np.isnan(seen).any():
        raise ValueError(f"accuracy_seen has a missing value: {seen.tolist()}")

    last = n - 1
    result["final_accuracy"] = float(seen[last])
    result["average_incremental_accuracy"] = float(seen.mean())
    result["average_accuracy"] = float(acc[:, last].mean())
    if n > 1:
        old = range(last)
        result["average_forgetting"] = float(
            np.mean([np.max(acc[i, i:last]) - acc[i, last] for i in old])
        )
        result["backward_transfer"] = float(np.mean([acc[i, last] - acc[i, i] for i in old]))
    return result


@dataclass
class AccuracyTracker:
    """Per-cell correct counts, filled by the engine after each task.

    ``correct[i, t]`` is the number of task ``i`` test samples classified correctly after task
    ``t``; ``n_test[i]`` is task ``i``'s test-set size (the same at every step, checked).
    ``filled[t]`` turns True once every task ``0..t`` has been recorded after task ``t``.
    Counts rather than accuracies are kept so that ``A_t`` is an exact sample-weighted ratio.
    """

    num_tasks: int
    correct: np.ndarray = field(init=False)
    n_test: np.ndarray = field(init=False)
    filled: np.ndarray = field(init=False)
    recorded: np.ndarray = field(init=False, repr=False)
    retrieval_confusion: np.ndarray | None = field(init=False, default=None)
    retrieval_accuracy_seen: list[float] = field(init=False, default_factory=list)
    task_il_accuracy: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if int(self.num_tasks) < 1:
            raise ValueError(f"num_tasks must be at least 1, got {self.num_tasks}")
        self.num_tasks = int(self.num_tasks)
        size = self.num_tasks
        self.correct = np.zeros((size, size), dtype=np.int64)
        self.n_test = np.zeros(size, dtype=np.int64)
        self.filled = np.zeros(size, dtype=bool)
        self.recorded = np.zeros((size, size), dtype=bool)

    def record(self, after_task: int, task: int, correct: int, total: int) -> None:
        """Record ``correct`` of ``total`` test samples of ``task``, right after ``after_task``."""
        if not 0 <= after_task < self.num_tasks:
            raise ValueError(f"after_task {after_task} outside 0..{self.num_tasks - 1}")
        if not 0 <= task <= after_task:
            raise ValueError(f"task {task} is not yet seen after task {after_task}")
        if total <= 0:
            raise ValueError(f"task {task} has no test samples (total={total})")
        if not 0 <= correct <= total:
            raise ValueError(f"correct={correct} outside 0..{total} for task {task}")
        # A task's test set never changes, so a differing size means the engine mixed up tasks.
        if self.n_test[task] and self.n_test[task] != total:
            raise ValueError(
                f"task {task} was recorded with {self.n_test[task]} test samples, now {total}"
            )
        self.n_test[task] = total
        self.correct[task, after_task] = correct
        self.recorded[task, after_task] = True
        self.filled[after_task] = bool(self.recorded[: after_task + 1, after_task].all())

    def record_retrieval(self, true_task: np.ndarray, predicted_task: np.ndarray) -> None:
        """Task-retrieval outcome of the current step's evaluation.

        The confusion matrix (rows true task, columns predicted task, counts) is replaced each
        call, so the last one describes the end of the run; the accuracy of every call is kept in
        ``retrieval_accuracy_seen`` for the per-step curve.
        """
        true_task = np.asarray(true_task).reshape(-1)
        predicted_task = np.asarray(predicted_task).reshape(-1)
        if true_task.shape != predicted_task.shape:
            raise ValueError(
                f"true_task has {true_task.size} entries but predicted_task {predicted_task.size}"
            )
        if true_task.size == 0:
            raise ValueError("record_retrieval needs at least one sample")
        for name, values in (("true_task", true_task), ("predicted_task", predicted_task)):
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"{name} must hold integer task indices, got {values.dtype}")
            if values.min() < 0 or values.max() >= self.num_tasks:
                raise ValueError(f"{name} has a task index outside 0..{self.num_tasks - 1}")
        confusion = np.zeros((self.num_tasks, self.num_tasks), dtype=np.int64)
        np.add.at(confusion, (true_task, predicted_task), 1)
        self.retrieval_confusion = confusion
        self.retrieval_accuracy_seen.append(float(np.trace(confusion) / true_task.size))

    def record_task_il(self, correct: int, total: int) -> None:
        """Task-incremental outcome (each sample's task given) of the last step's evaluation."""
        if total <= 0 or not 0 <= correct <= total:
            raise ValueError(f"task-IL counts correct={correct}, total={total} are not valid")
        self.task_il_accuracy = correct / total

    def state(self) -> dict[str, Any]:
        """Everything recorded so far, JSON-ready (a checkpoint keeps it to resume a run)."""
        return {"num_tasks": self.num_tasks, "correct": self.correct.tolist(),
                "n_test": self.n_test.tolist(), "filled": self.filled.tolist(),
                "recorded": self.recorded.tolist(),
                "retrieval_confusion": (None if self.retrieval_confusion is None
                                        else self.retrieval_confusion.tolist()),
                "retrieval_accuracy_seen": list(self.retrieval_accuracy_seen),
                "task_il_accuracy": self.task_il_accuracy}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "AccuracyTracker":
        out = cls(int(state["num_tasks"]))
        out.correct = np.asarray(state["correct"], dtype=np.int64)
        out.n_test = np.asarray(state["n_test"], dtype=np.int64)
        out.filled = np.asarray(state["filled"], dtype=bool)
        out.recorded = np.asarray(state["recorded"], dtype=bool)
        if state["retrieval_confusion"] is not None:
            out.retrieval_confusion = np.asarray(state["retrieval_confusion"], dtype=np.int64)
        out.retrieval_accuracy_seen = [float(v) for v in state["retrieval_accuracy_seen"]]
        out.task_il_accuracy = state["task_il_accuracy"]
        return out

    @property
    def steps_done(self) -> int:
        """Finished steps: the leading run of filled columns (steps are learned in order)."""
        not_done = np.flatnonzero(~self.filled)
        return int(not_done[0]) if not_done.size else self.num_tasks

    def accuracy_matrix(self) -> np.ndarray:
        """``acc[i, t]`` as floats; NaN where ``i > t`` or not recorded yet."""
        acc = np.full((self.num_tasks, self.num_tasks), np.nan)
        rows, cols = np.nonzero(self.recorded)
        acc[rows, cols] = self.correct[rows, cols] / self.n_test[rows]
        return acc

    def accuracy_seen(self) -> np.ndarray:
        """``A_t`` for each finished step, sample-weighted over tasks ``0..t``."""
        steps = self.steps_done
        return np.array(
            [self.correct[: t + 1, t].sum() / self.n_test[: t + 1].sum() for t in range(steps)],
            dtype=float,
        )

    @property
    def retrieval_history(self) -> list[float]:
        """Alias of ``retrieval_accuracy_seen`` (the name the engine reads)."""
        return self.retrieval_accuracy_seen

    @property
    def task_retrieval_accuracy(self) -> float | None:
        return self.retrieval_accuracy_seen[-1] if self.retrieval_accuracy_seen else None

    def summary(self) -> dict[str, float | None]:
        """Every metric of :data:`METRIC_LABELS` over the steps finished so far."""
        return metrics_from_matrix(
            self.accuracy_matrix(),
            self.accuracy_seen(),
            task_retrieval_accuracy=self.task_retrieval_accuracy,
            task_il_accuracy=self.task_il_accuracy,
        )


def mean_std(values: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per key ``{"mean", "std", "n"}`` over runs (one dict per seed), skipping None and NaN.

    ``n`` counts the runs that had a number for the key, so a metric that is None in some seeds
    (e.g. no task retrieval) is averaged over the others and the report can say so. ``std`` is
    the population standard deviation (``ddof=0``, as ``np.std``), 0.0 for a single run; both are
    None when no run had a number. Keys keep the order in which they first appear.
    """
    keys: dict[str, None] = {}
    for run in values:
        keys.update(dict.fromkeys(run))
    out: dict[str, dict[str, float | int | None]] = {}
    for key in keys:
        numbers = []
        for run in values:
            value = run.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{key}: expected a number or None, got {value!r}")
            if not math.isnan(float(value)):
                numbers.append(float(value))
        if numbers:
            out[key] = {
                "mean": float(np.mean(numbers)),
                "std": float(np.std(numbers)),
                "n": len(numbers),
            }
        else:
            out[key] = {"mean": None, "std": None, "n": 0}
    return out
