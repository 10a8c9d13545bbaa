"""SimpleCIL: class-mean prototypes on frozen embeddings, cosine nearest prototype.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models" (2023), the variant
without adaptation: the backbone never trains, so nothing is forgotten except through prototype
competition.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.base import LabeledData
from ..dist import active, all_reduce
from ..data.scenario import Task
from ..registry import Options
from .base import LEARNERS, Context, Learner, TaskOutcome


class SimpleCILOptions(Options):
    pass


@LEARNERS.register("simplecil", SimpleCILOptions,
                   "class-mean prototypes on frozen features, cosine nearest prototype")
class SimpleCIL(Learner):
    options_model = SimpleCILOptions

    def __init__(self, options: SimpleCILOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.prototypes = np.zeros((0, backbone.embed_dim), dtype=np.float32)

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        feats = ctx.features(task.train, desc=f"task {task.index}: embed train")
        top = max(self.num_classes, max(task.classes) + 1)  # the class space never shrinks
        if top > len(self.prototypes):
            grown = np.zeros((top, self.prototypes.shape[1]), dtype=np.float32)
            grown[: len(self.prototypes)] = self.prototypes
            self.prototypes = grown
        # class sums over this rank's part of the samples (all of them in one process), summed
        # over ranks; a few mixed-in samples of an older class must not replace its mean
        own = np.asarray(task.own_classes, dtype=np.int64)
        part = active().part(len(feats))
        x, labels = feats[part], task.train.labels[part]
        sums = np.stack([x[labels == c].sum(axis=0, dtype=np.float64) for c in own])
        counts = np.array([(labels == c).sum() for c in own], dtype=np.float64)
        sums, counts = all_reduce(sums), all_reduce(counts)
        self.prototypes[own] = (sums / counts[:, None]).astype(np.float32)
        self.num_classes = top
        self.tasks_learned += 1
        return TaskOutcome()

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return cosine_scores(ctx.features(data, desc="embed test"),
                             self.prototypes[: self.num_classes])

    def state(self):
        return ({"prototypes": torch.from_numpy(self.prototypes.copy())},
                {"num_classes": self.num_classes, "tasks_learned": self.tasks_learned})

    def load_state(self, tensors, meta) -> None:
        self.prototypes = tensors["prototypes"].numpy().astype(np.float32)
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])


def cosine_scores(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of every feature row to every prototype row."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    p = prototypes / np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    return f @ p.T

