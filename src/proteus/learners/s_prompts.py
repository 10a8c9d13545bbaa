"""S-Prompts in its LoRA form: one independent adapter and head per task, k-means task retrieval.

Wang, Huang, Hong, "S-Prompts Learning with Pre-trained Transformers: An Occam's Razor for
Domain Incremental Learning" (NeurIPS 2022). Per task k the method learns its own prompts and its
own classifier, with nothing shared between tasks, and keeps k-means centroids of the task's
frozen-backbone features (5 per task in the paper); at test time the task of the nearest centroid
is picked and its prompts and classifier predict.

Choices:

* **Low-rank units instead of prompts**, so the baseline runs on every backbone and differs from
  PROTEUS only where the methods differ: task k's units are PROTEUS's (``LowRankPool`` with
  ``alpha`` 0, so no transfer from earlier units; same ``targets``, ``rank``, training recipe),
  frozen once the task ends.
* **Head**: one linear layer per task over that task's classes only, trained with the units by
  cross-entropy on the task's data (the paper's per-domain classifier); the class is the argmax of
  the retrieved task's head, so a wrong retrieval is always a wrong class.
* **Retrieval**: ``TaskSignatures`` of kind ``kmeans`` (``kmeans_k`` centroids per task, unit
  covariance, features L2-normalised as by the signature default) on the frozen embedding; the
  highest log-likelihood under unit covariance is the nearest centroid in Euclidean distance.
  The authors' code picks the nearest centroid by **L1** distance (``distance: l1``, the
  default); ``distance: l2`` is the Euclidean nearest centroid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..data.base import LabeledData
from ..data.scenario import Task
from ..seeding import derive_seed
from ..signatures import SignatureOptions, TaskSignatures, retrieve
from .base import LEARNERS, Capabilities, Context, Prediction, TaskOutcome
from .lowrank import LowRankLearner, LowRankOptions


class SPromptsOptions(LowRankOptions):
    kmeans_k: int = Field(5, gt=0)  # centroids per task
    distance: Literal["l1", "l2"] = "l1"  # to the nearest centroid (the authors' code: L1)


@LEARNERS.register("s-prompts", SPromptsOptions,
                   "S-Prompts (LoRA form): independent units + head per task, k-means retrieval")
class SPrompts(LowRankLearner):
    options_model = SPromptsOptions
    capabilities = Capabilities(infers_task=True)
    alpha = 0.0  # no transfer between tasks' units

    def __init__(self, options: SPromptsOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.signatures = TaskSignatures(SignatureOptions(kind="kmeans", kmeans_k=options.kmeans_k),
                                         seed)
        self.heads: list[torch.nn.Linear] = []
        self.task_classes: list[list[int]] = []

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        k = self.tasks_learned
        classes = np.asarray(task.classes)
        units = self.pool.begin_task(derive_seed(self.seed, k, "units"))
        head = self._new_head(len(classes), derive_seed(self.seed, k, "head"))
        prefix = self._prefix(task.train.items, ctx.batch_size)
        loss = self._fit(units, head, task.train.items,
                         np.searchsorted(classes, task.train.labels), prefix,
                         derive_seed(self.seed, k, "fit"))
        self.pool.end_task()
        self.heads.append(head.requires_grad_(False))
        self.task_classes.append([int(c) for c in classes])
        comp = self.signatures.add_task(ctx.features(task.train, desc=f"task {k}: embed train"),
                                        task.train.labels)
        self.num_classes = max(self.num_classes, int(classes.max()) + 1)
        self.tasks_learned += 1
        return TaskOutcome(extras={"final_loss": loss,
                                   "signature_components": int(len(comp.means))})

    def task_scores(self, features: np.ndarray) -> np.ndarray:
        """(N, T): minus each sample's distance to task k's nearest centroid (L1 or L2, on the
        signature's normalised features)."""
        if self.options.distance == "l2":
            return self.signatures.scores(features)
        z = torch.as_tensor(self.signatures.prepare(features), dtype=torch.float64)
        return np.stack([-torch.cdist(z, torch.as_tensor(comp.means, dtype=torch.float64),
                                      p=1).min(1).values.numpy()
                         for comp in self.signatures.tasks], axis=1)

    def predict(self, data: LabeledData, ctx: Context) -> Prediction:
        tasks = retrieve(self.task_scores(ctx.features(data, desc="embed test")), "sample")
        return Prediction(classes=self._classify(data, ctx, tasks), tasks=tasks.astype(np.int64))

    def predict_given_task(self, data, ctx, tasks, task_classes) -> np.ndarray:
        """Task k's units and head for the samples of task k."""
        return self._classify(data, ctx, np.asarray(tasks, dtype=np.int64))

    def _classify(self, data: LabeledData, ctx: Context, tasks: np.ndarray) -> np.ndarray:
        prefix = self._prefix(data.items, ctx.batch_size)
        classes = np.zeros(len(data), dtype=np.int64)
        for k in np.unique(tasks):
            rows = np.flatnonzero(tasks == k)
            h = self._embed(data.items, int(k), ctx.batch_size, prefix, rows)
            with torch.inference_mode():
                local = self.heads[k](torch.as_tensor(h, device=self.backbone.device)).argmax(1)
            classes[rows] = np.asarray(self.task_classes[k])[local.cpu().numpy()]
        return classes

    # -- state ---------------------------------------------------------------------------
    def state(self):
        tensors, sig_meta = self.signatures.state()
        lora, lora_meta = self.pool.state()
        tensors.update(lora)
        for k, head in enumerate(self.heads):
            tensors[f"head{k}.weight"] = head.weight.detach()
            tensors[f"head{k}.bias"] = head.bias.detach()
        return tensors, {"num_classes": self.num_classes, "tasks_learned": self.tasks_learned,
                         "task_classes": self.task_classes, "signatures": sig_meta,
                         "lora": lora_meta}

    def load_state(self, tensors, meta) -> None:
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])
        self.task_classes = [list(c) for c in meta["task_classes"]]
        self.signatures.load_state(tensors, meta["signatures"])
        self.pool.load_state(tensors, meta["lora"])
        self.heads = []
        for k, cls in enumerate(self.task_classes):
            head = self._new_head(len(cls), 0).requires_grad_(False)
            with torch.no_grad():
                head.weight.copy_(tensors[f"head{k}.weight"])
                head.bias.copy_(tensors[f"head{k}.bias"])
            self.heads.append(head)

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        head = sum(p.numel() for p in self.heads[-1].parameters()) if self.heads else 0
        counts["trained_per_task"] = self._trained_unit_parameters() + head
        return counts
