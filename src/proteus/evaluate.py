"""Evaluation after each task: accuracy per seen task, task retrieval, task-IL at the end.

The engine hands the evaluator its turn after every task; the evaluator owns the
:class:`~proteus.metrics.AccuracyTracker` and knows no learner by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import numpy as np

from .data.base import stack
from .data.scenario import Scenario, Task
from . import dist
from .learners import Context, Learner, Prediction
from .metrics import AccuracyTracker


@dataclass
class Evaluator:
    scenario: Scenario
    tracker: AccuracyTracker = field(default=None)
    #: the same on the validation samples (scenario.val_fraction); None without them
    val_tracker: AccuracyTracker | None = field(default=None)

    def __post_init__(self) -> None:
        if self.tracker is None:
            self.tracker = AccuracyTracker(len(self.scenario.tasks))
        if self.val_tracker is None and self.has_validation:
            self.val_tracker = AccuracyTracker(len(self.scenario.tasks))

    @property
    def has_validation(self) -> bool:
        return all(t.val is not None and len(t.val) for t in self.scenario.tasks)

    def after_task(self, task: Task, learner: Learner, ctx: Context,
                   amp: Callable[[], ContextManager]) -> dict[str, float]:
        """Evaluate on the test data of tasks 0..task; at the last task also task-IL.
        Returns the timing of the evaluation (``eval_s``, ``task_il_eval_s``)."""
        t0 = time.perf_counter()
        seen = self.scenario.tasks[: task.index + 1]
        test, true_task = self._evaluate(self.tracker, task, seen, "test", learner, ctx, amp)
        timing = {"eval_s": time.perf_counter() - t0}
        if self.val_tracker is not None:  # the same model on the held-out training samples
            t0 = time.perf_counter()
            self._evaluate(self.val_tracker, task, seen, "val", learner, ctx, amp)
            timing["val_eval_s"] = time.perf_counter() - t0
        if task.index == len(self.scenario.tasks) - 1:  # task-IL once, at the end
            t0 = time.perf_counter()
            classes = [t.classes for t in self.scenario.tasks]
            with amp():
                given = _predict_parts(lambda part, rows: learner.predict_given_task(
                    part, ctx, true_task[rows], classes), test, with_rows=True)
            given = given.classes
            if given is not None:
                self.tracker.record_task_il(int((np.asarray(given) == test.labels).sum()),
                                            len(test))
            timing["task_il_eval_s"] = time.perf_counter() - t0
        return timing

    @staticmethod
    def _evaluate(tracker: AccuracyTracker, task: Task, seen: list[Task], split: str,
                  learner: Learner, ctx: Context, amp: Callable[[], ContextManager]):
        """Predict the ``split`` ("test" or "val") samples of the ``seen`` tasks and record
        accuracy per task (and retrieval) after ``task``; returns the data and true tasks."""
        data = stack([getattr(t, split) for t in seen])
        true_task = np.concatenate([np.full(len(getattr(t, split)), t.index) for t in seen])
        with amp():
            pred = _predict_parts(lambda part: learner.predict(part, ctx), data)
        correct = pred.classes == data.labels
        for t in seen:
            mask = true_task == t.index
            tracker.record(task.index, t.index, int(correct[mask].sum()), int(mask.sum()))
        if pred.tasks is not None:
            tracker.record_retrieval(true_task, np.asarray(pred.tasks))
        return data, true_task

    def line(self, task: Task) -> dict[str, Any]:
        """The metrics of the step just evaluated (one ``metrics.jsonl`` line, timing aside)."""
        acc = self.tracker.accuracy_matrix()
        line = {"task": task.index, "accuracy_seen": float(self.tracker.accuracy_seen()[-1]),
                "accuracy_per_task": [float(acc[i, task.index]) for i in range(task.index + 1)],
                "task_retrieval_accuracy": self.tracker.summary().get("task_retrieval_accuracy")}
        if self.val_tracker is not None:
            line["val_accuracy_seen"] = float(self.val_tracker.accuracy_seen()[-1])
            line["val_task_retrieval_accuracy"] = self.val_tracker.summary().get(
                "task_retrieval_accuracy")
        return line

    def validation_results(self) -> dict[str, Any] | None:
        """The validation counterpart of the test metrics (no task-IL), for results.json."""
        if self.val_tracker is None:
            return None
        acc = self.val_tracker.accuracy_matrix()
        return {"accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row]
                                    for row in acc],
                "accuracy_seen": [float(v) for v in self.val_tracker.accuracy_seen()],
                "metrics": self.val_tracker.summary(),
                "num_samples": int(sum(len(t.val) for t in self.scenario.tasks))}


def _predict_parts(predict: Callable[..., Any], test, with_rows: bool = False) -> Prediction:
    """``predict`` over ``test``; in a multi-process run each process predicts its part and the
    parts are gathered in order, so every process records the same metrics. ``predict`` returns
    a :class:`Prediction` or a class array (None: no answer)."""
    group = dist.world()
    rows = group.part(len(test))
    part = test.subset(rows) if group.enabled else test
    with dist.sharding(group):
        with dist.local():
            out = predict(part, rows) if with_rows else predict(part)
        if not isinstance(out, Prediction):
            out = Prediction(classes=out)
        if not group.enabled:
            return out
        pieces = dist.gather_objects((out.classes, out.tasks, out.scores))

    def cat(i: int):
        return None if pieces[0][i] is None else np.concatenate([p[i] for p in pieces])

    return Prediction(classes=cat(0), tasks=cat(1), scores=cat(2))
