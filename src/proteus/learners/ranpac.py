"""RanPAC: random projections + ReLU on frozen pre-trained features, streaming ridge classifier.

McDonnell, Gong, Parvaneh, Abbasnejad, van den Hengel, "RanPAC: Random Projections and Pre-trained
Models for Continual Learning" (NeurIPS 2023). The head is ``proteus.heads.RidgeHead`` (the same
one PROTEUS uses): phi(h) = ReLU(h W_rand) with W_rand ~ N(0, 1) of width ``proj_dim`` (M = 10,000
in the paper), Gram matrix G and class sums Q accumulated over tasks, W_out = (G + lambda I)^-1 Q,
prediction = argmax of phi(h) W_out over every class seen so far (no task id needed).

Choices:

* **No first-session adaptation.** The paper optionally fine-tunes the backbone (parameter-
  efficient) on the first task only before freezing it; this baseline leaves that out, so the
  backbone is the pre-trained one throughout and features come from the run's frozen cache
  (``ctx.features``). It is the "RanPAC without Phase 1" variant of the paper's ablation.
* **lambda** is picked per task by RidgeHead's validation (80/20 split of the current task's data,
  statistics of earlier tasks included in the fit) over ``lambdas`` (default 1e-8 ... 1e8); the
  paper's code searches a similar log grid on the current task's data.
* ``proj_dim`` 0 gives the ridge directly on the embeddings (no projection, no ReLU).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..data.base import LabeledData
from ..data.scenario import Task
from ..heads import RidgeHead
from ..registry import Options
from .base import LEARNERS, Context, Learner, TaskOutcome


class RanPACOptions(Options):
    proj_dim: int = Field(10000, ge=0)  # M; 0 = ridge on the embeddings themselves
    lambdas: list[float] | None = None  # ridge grid searched by validation; None = 1e-8 ... 1e8


@LEARNERS.register("ranpac", RanPACOptions,
                   "RanPAC: frozen features, random projection + ReLU, streaming ridge head")
class RanPAC(Learner):
    options_model = RanPACOptions
    grow_keys = ("head.G", "head.Q")
    compact_keys = ("head.*",)
    symmetric_keys = ("head.G",)

    def __init__(self, options: RanPACOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.head = RidgeHead(backbone.embed_dim, options.proj_dim, seed, options.lambdas)

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        feats = ctx.features(task.train, desc=f"task {task.index}: embed train")
        self.num_classes = max(self.num_classes, max(task.classes) + 1)
        lam = self.head.update(feats, task.train.labels, self.num_classes)
        self.tasks_learned += 1
        return TaskOutcome(extras={"ridge_lambda": lam})

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return self.head.logits(ctx.features(data, desc="embed test"))

    def state(self):
        tensors, head_meta = self.head.state()
        return tensors, {"num_classes": self.num_classes, "tasks_learned": self.tasks_learned,
                         "head": head_meta}

    def load_state(self, tensors, meta) -> None:
        self.head.load_state(tensors, meta["head"])
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])
