"""The learner interface every method implements, and the per-run context the engine hands it."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager

import numpy as np
import torch

from ..backbones.base import Backbone, embed
from ..data.base import LabeledData, take
from ..data.scenario import Task
from ..dist import sharded_rows
from ..registry import Options, Registry

LEARNERS: Registry["Learner"] = Registry("learner")


@dataclass
class Prediction:
    classes: np.ndarray  # predicted class positions (class-order ids), shape (N,)
    tasks: np.ndarray | None = None  # inferred task index per sample, for learners that infer one
    scores: np.ndarray | None = None  # the predicted class's score (logit, similarity), (N,)


@dataclass
class TaskOutcome:
    """What learning one task produced, in a form the engine reads without knowing the learner:
    ``timing`` (seconds per phase, beside the engine's own train/eval times), ``extras``
    (learner-specific, JSON-ready; written to ``metrics.jsonl`` and ``results.json``) and an
    optional retrieval ``certificate`` (METHOD.md section 6)."""

    timing: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    certificate: dict[str, Any] | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a learner can do beyond learning a scenario in one run; commands check these
    instead of the learner's name."""

    #: a saved model can learn more tasks (False: it needs data it does not keep, e.g. joint-lora)
    grows_after_load: bool = True
    #: infers a task id per sample (retrieval), reported as ``task`` by predict
    infers_task: bool = False
    #: needs a token-based (transformer) backbone: prompt methods
    needs_tokens: bool = False
    #: why it cannot grow after loading, for the error message
    grow_note: str = ""


class LearnerError(ValueError):
    """A learner asked to do what it cannot (e.g. grow a saved model it cannot grow)."""


@dataclass
class Context:
    """What the engine shares with a learner: the backbone, seeds, and a frozen-feature cache.

    Frozen embeddings of a sample never change, so they are computed once per run and reused
    by every evaluation after every task (keyed by the sample's stable id).
    """

    backbone: Backbone
    seed: int = 0
    batch_size: int = 256
    progress: bool = True
    num_tasks: int | None = None  # length of the task sequence, when the engine knows it
    #: entered around frozen-feature extraction; a learner with adapters installs one that
    #: switches them off, so cached features are the pre-trained backbone's
    frozen_scope: Callable[[], ContextManager] = contextlib.nullcontext
    #: other per-run caches a learner keeps (keyed by sample id, which is unique within a run)
    caches: dict[str, dict] = field(default_factory=dict, repr=False)

    def by_id(self, name: str, data: LabeledData, compute: Callable[[np.ndarray], Any]
              ) -> list:
        """One row per sample of ``data``, kept per sample id for the run in cache ``name``;
        ``compute(positions)`` gives the rows of the samples not kept yet, in order."""
        cache = self.caches.setdefault(name, {})
        ids = data.ids.tolist()
        missing = np.asarray([i for i, sid in enumerate(ids) if sid not in cache], dtype=np.int64)
        if len(missing):
            # across ranks (while learning a task) each computes its part; rows are gathered
            rows = sharded_rows(len(missing), lambda part: compute(missing[part]))
            for i, row in zip(missing.tolist(), rows):
                cache[ids[i]] = row
        return [cache[sid] for sid in ids]

    def features(self, data: LabeledData, desc: str = "embed (frozen)") -> np.ndarray:
        def compute(positions: np.ndarray) -> np.ndarray:
            with self.frozen_scope():
                return embed(self.backbone, take(data.items, positions), self.batch_size, desc,
                             self.progress)

        rows = self.by_id("frozen", data, compute)
        return (np.stack(rows) if rows
                else np.zeros((0, self.backbone.embed_dim), dtype=np.float32))

    def embed(self, data: LabeledData, desc: str = "embed") -> np.ndarray:
        """Embeddings with the backbone as it is now (adapters included), not cached."""
        return embed(self.backbone, data.items, self.batch_size, desc, self.progress)


class Learner(ABC):
    """A continual learner: learns tasks one at a time, predicts among all classes seen so far.

    Subclasses are registered with ``@LEARNERS.register(name, OptionsModel)`` and built as
    ``cls(options, backbone=..., seed=...)``. Their state must round-trip through
    :meth:`state`/:meth:`load_state` as tensors + JSON (no pickle).
    """

    options_model: ClassVar[type[Options]] = Options
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: patterns (fnmatch) of the state tensors that only learning more needs, not predicting;
    #: a model directory stores them apart (``grow.safetensors``) so serving can leave them out
    grow_keys: ClassVar[tuple[str, ...]] = ()
    #: patterns of float64 state tensors that a compact model stores as float32 with the same
    #: predictions (sums and Gram matrices, not bases whose eigenvectors a rounding may flip)
    compact_keys: ClassVar[tuple[str, ...]] = ()
    #: patterns of symmetric square state tensors (Gram matrices, scatters) that a compact model
    #: stores as their upper triangle
    symmetric_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Options, backbone: Backbone, seed: int = 0):
        self.options = options
        self.backbone = backbone
        self.seed = seed
        self.num_classes = 0  # classes seen so far (class-order positions 0..num_classes-1)
        self.tasks_learned = 0

    @abstractmethod
    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        """Learn one task; returns its timing, extras and optional certificate."""

    def frozen_scope(self) -> ContextManager:
        """Entered around frozen-feature extraction; a learner that installs adapters returns a
        scope that switches them off, so cached features are the pre-trained backbone's."""
        return contextlib.nullcontext()

    def session_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """State that a *resumed run* needs beyond :meth:`state` (e.g. cluster moments for the
        certificate); not part of a saved model. Empty by default."""
        return {}, {}

    def load_session_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           done: list[Task]) -> None:
        """Inverse of :meth:`session_state`; ``done`` are the scenario's tasks learned so far
        (a learner that keeps data, like joint-lora, takes it from there)."""

    def predict(self, data: LabeledData, ctx: Context) -> Prediction:
        """Predict class positions (and task ids where the learner infers them). The default is
        the argmax of :meth:`scores`; a learner without scores over all classes overrides it."""
        scores = self.scores(data, ctx)
        if scores is None:
            raise NotImplementedError(f"{type(self).__name__} must implement predict() or "
                                      "scores()")
        scores = np.asarray(scores)
        classes = scores.argmax(1).astype(np.int64)
        return Prediction(classes=classes, scores=scores[np.arange(len(scores)), classes])

    @abstractmethod
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to predict again: tensors for safetensors, JSON-ready metadata."""

    @abstractmethod
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of :meth:`state`."""

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray | None:
        """Scores over every class seen so far (N x num_classes) whose argmax is this learner's
        class-incremental prediction; None for a learner whose prediction is not one argmax
        over all classes (task retrieval first, then a per-task model)."""
        return None

    def predict_given_task(self, data: LabeledData, ctx: Context, tasks: np.ndarray,
                           task_classes: list[list[int]]) -> np.ndarray | None:
        """Task-incremental prediction: sample i's task ``tasks[i]`` is given, the answer is one
        of ``task_classes[tasks[i]]``. The default takes the argmax of :meth:`scores` within the
        task's classes (what the InfLoRA code reports beside class-incremental accuracy); None
        when the learner has no scores and does not override this."""
        scores = self.scores(data, ctx)
        return None if scores is None else argmax_within_task(scores, tasks, task_classes)

    def embedding(self, data: LabeledData, ctx: Context) -> np.ndarray | None:
        """The embedding this learner's head reads now, for every input alike (head-swap
        controls, classifier alignment); None where there is no one embedding (a learner that
        retrieves a task and reads that task's backbone)."""
        return None

    def training_curves(self) -> list[dict[str, Any]]:
        """The gradient fits run since the last call, each as its per-epoch mean training loss
        (``loss``), cross-entropy alone (``ce``) and optimiser ``steps``; cleared by the call.
        The engine records them per task and the report plots them. None trained: []."""
        return []

    def parameter_counts(self) -> dict[str, int]:
        """Trained parameters in the last task and bytes of stored state."""
        tensors, _ = self.state()
        return {"trained_per_task": 0,
                "stored_bytes": int(sum(t.numel() * t.element_size() for t in tensors.values()))}


def argmax_within_task(scores: np.ndarray, tasks: np.ndarray,
                       task_classes: list[list[int]]) -> np.ndarray:
    """Per row i, the class of ``task_classes[tasks[i]]`` with the highest ``scores[i]``."""
    scores = np.asarray(scores)
    tasks = np.asarray(tasks)
    out = np.zeros(len(scores), dtype=np.int64)
    for k in np.unique(tasks):
        rows = np.flatnonzero(tasks == k)
        classes = np.asarray(task_classes[int(k)], dtype=np.int64)
        out[rows] = classes[scores[np.ix_(rows, classes)].argmax(1)]
    return out
