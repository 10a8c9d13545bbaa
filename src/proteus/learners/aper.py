"""APER-style control: adapt on the first task only, then an analytic head on adapted features.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need" (APER, IJCV 2024) and first-session adaptation (Panos et al., ICCV
2023): the backbone is adapted once, on the first task, then frozen; every task after that only
adds statistics to an analytic head. Here:

1. task 0: low-rank units on the targets (the recipe every low-rank learner shares:
   ``LowRankLearner._fit`` with a temporary head over task 0's classes), then frozen;
2. every task: the streaming shrinkage LDA of the ``lda`` control (the same statistics, solve and
   scikit-learn shrinkage) on the *adapted* embedding; no task retrieval.

It is the adaptive control PROTEUS must beat: the same units, adapted once, with the same analytic
head as ``lda``. Deviation from APER: APER concatenates the frozen and adapted embeddings and uses
cosine prototypes; the evidence issue asks for the LDA head on the adapted features, and
``lda`` already covers the frozen ones.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from ..data.base import LabeledData, take
from ..data.scenario import Task
from ..seeding import derive_seed
from .base import LEARNERS, Context, TaskOutcome
from .lda import LDA
from .lowrank import LowRankLearner, LowRankOptions


class APEROptions(LowRankOptions):
    shrinkage: Literal["auto"] | float = "auto"  # as lda's


@LEARNERS.register("aper", APEROptions,
                   "first-task adaptation, then streaming shrinkage LDA on the adapted embedding "
                   "(adaptive control)")
class APER(LDA, LowRankLearner):
    options_model = APEROptions
    grow_keys = LDA.grow_keys
    compact_keys = LDA.compact_keys
    symmetric_keys = LDA.symmetric_keys

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        t0 = time.perf_counter()
        if self.pool.num_tasks == 0 and self.options.epochs:  # first-session adaptation
            prefix = self._prefix(task.train.items, ctx.batch_size)
            params = self.pool.begin_task(derive_seed(self.seed, 0, "units"))
            classes = np.asarray(task.classes)
            head = self._new_head(len(classes), derive_seed(self.seed, 0, "head"))
            self._fit(params, head, task.train.items, np.searchsorted(classes, task.train.labels),
                      prefix, derive_seed(self.seed, 0, "fit"))
            self.pool.end_task()  # frozen from here on; the temporary head is dropped
        adapt_s = time.perf_counter() - t0
        outcome = super().learn_task(task, ctx)
        outcome.timing["train_units_s"] = adapt_s
        return outcome

    def features(self, data: LabeledData, ctx: Context) -> np.ndarray:
        """The embedding by the backbone with task 0's units (fixed after task 0: kept per
        sample id for the run)."""
        task = 0 if self.pool.num_tasks else None

        def compute(positions: np.ndarray) -> np.ndarray:
            items = take(data.items, positions)
            return self._embed(items, task, ctx.batch_size, self._prefix(items, ctx.batch_size))

        if task is None:
            return compute(np.arange(len(data))).astype(np.float64)
        rows = ctx.by_id("aper_features", data, compute)
        return (np.stack(rows).astype(np.float64) if rows
                else np.zeros((0, self.backbone.embed_dim)))

    def state(self):
        tensors, meta = super().state()
        lora, lora_meta = self.pool.state()
        return {**tensors, **lora}, {**meta, "lora": lora_meta}

    def load_state(self, tensors, meta) -> None:
        super().load_state(tensors, meta)
        self.pool.load_state(tensors, meta["lora"])

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        counts["trained_per_task"] = self._trained_unit_parameters() if self.tasks_learned <= 1 \
            else 0
        return counts
