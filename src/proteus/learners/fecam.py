"""FeCAM: per-class covariances on frozen features, Mahalanobis scoring (a frozen-feature control).

Goswami, Liu, Twardowski, van de Weijer, "FeCAM: Exploiting the Heterogeneity of Class
Distributions in Exemplar-Free Continual Learning" (NeurIPS 2023). The backbone never trains;
each class keeps its mean and covariance (from the task that brings it: classes never come back,
so this is exact streaming), and a sample goes to the class of smallest Mahalanobis distance:

* covariance shrinkage as FeCAM's code: ``S + g1 V1 I + g2 V2 (1 - I)`` with V1 the mean
  variance and V2 the mean off-diagonal covariance of the class (``shrink_diag`` g1,
  ``shrink_offdiag`` g2, both 1 in the paper);
* ``normalize_cov``: the shrunk covariance scaled to unit diagonal (FeCAM's correlation
  normalisation), so classes of different spread compare;
* ``tukey``: features raised to this power first (FeCAM: 0.5 on non-negative CNN features); off
  by default, since a transformer's features can be negative;
* ``l2_normalize``: features scaled to unit length before everything (FeCAM's code normalises
  features and class means; with a unit-diagonal covariance the distances then compare).

Features: the frozen embedding (``signature_stages: []``, FeCAM's own choice and the default) or
PROTEUS's multi-block retrieval features (``signature_stages: null``). Per-class d x d
covariances make the second expensive: at d = 3,088 every class holds 76 MB.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from ..data.base import LabeledData
from ..data.scenario import Task
from ..registry import Options
from .base import LEARNERS, Context, Learner, LearnerError, TaskOutcome
from .lda import frozen_features


class FeCAMOptions(Options):
    signature_stages: list[int] | None = Field(default_factory=list)  # [] = the embedding
    shrink_diag: float = Field(1.0, ge=0)
    shrink_offdiag: float = Field(1.0, ge=0)
    normalize_cov: bool = True
    tukey: float | None = Field(None, gt=0)
    l2_normalize: bool = True  # FeCAM's code normalises features and means to unit length
    batch_size: int = Field(256, gt=0)


@LEARNERS.register("fecam", FeCAMOptions,
                   "FeCAM: per-class shrunk covariances, Mahalanobis on frozen features (control)")
class FeCAM(Learner):
    options_model = FeCAMOptions
    compact_keys = ("fecam.*",)

    def __init__(self, options: FeCAMOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.means: np.ndarray | None = None  # (C, d)
        self.prec_chol: np.ndarray | None = None  # (C, d, d): L with precision = L L^T
        self.seen = np.zeros(0, dtype=bool)

    def features(self, data: LabeledData, ctx: Context) -> np.ndarray:
        x = frozen_features(self.backbone, data, ctx, self.options.signature_stages,
                            self.options.batch_size)
        if self.options.tukey is not None:
            if (x < 0).any():
                raise LearnerError("fecam: tukey needs non-negative features; these have "
                                   "negative values (set tukey: null)")
            x = x ** self.options.tukey
        if self.options.l2_normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def _covariance(self, xc: np.ndarray) -> np.ndarray:
        o = self.options
        d = xc.shape[1]
        cov = np.cov(xc, rowvar=False) if len(xc) > 1 else np.zeros((d, d))
        diag = np.diag(cov).mean()
        off = (cov.sum() - np.trace(cov)) / max(d * d - d, 1)
        shrunk = cov + o.shrink_offdiag * off * (1 - np.eye(d))
        shrunk.flat[:: d + 1] += o.shrink_diag * diag
        if o.normalize_cov:
            scale = np.sqrt(np.maximum(np.diag(shrunk), 1e-12))
            shrunk = shrunk / np.outer(scale, scale)
        return shrunk

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        x = self.features(task.train, ctx)
        d = x.shape[1]
        top = max(len(self.seen), max(task.classes) + 1)
        if self.means is None:
            self.means, self.prec_chol = np.zeros((0, d)), np.zeros((0, d, d))
        grow = top - len(self.seen)
        self.means = np.concatenate([self.means, np.zeros((grow, d))])
        self.prec_chol = np.concatenate([self.prec_chol, np.zeros((grow, d, d))])
        self.seen = np.concatenate([self.seen, np.zeros(grow, dtype=bool)])
        for c in np.unique(task.train.labels):
            if self.seen[c]:
                raise LearnerError(f"fecam: class {c} was learned before; each class must "
                                   "arrive with one task")
            xc = x[task.train.labels == c]
            self.means[c] = xc.mean(0)
            # precision = inv(cov) = L L^T with L = inv(chol(cov))^T: one triangular inverse
            chol = np.linalg.cholesky(self._covariance(xc))
            self.prec_chol[c] = np.linalg.inv(chol).T
            self.seen[c] = True
        self.num_classes = top
        self.tasks_learned += 1
        return TaskOutcome()

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        """Minus the squared Mahalanobis distance to every class (unseen classes: -inf)."""
        x = self.features(data, ctx)
        out = np.full((len(x), self.num_classes), -np.inf)
        for c in np.flatnonzero(self.seen):
            z = (x - self.means[c]) @ self.prec_chol[c]
            out[:, c] = -(z ** 2).sum(1)
        return out

    def state(self):
        tensors = {}
        if self.means is not None:
            tensors = {"fecam.means": torch.from_numpy(self.means),
                       "fecam.prec_chol": torch.from_numpy(self.prec_chol),
                       "fecam.seen": torch.from_numpy(self.seen)}
        return tensors, {"num_classes": self.num_classes, "tasks_learned": self.tasks_learned}

    def load_state(self, tensors, meta) -> None:
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])
        if "fecam.means" in tensors:
            self.means = tensors["fecam.means"].numpy().astype(np.float64)
            self.prec_chol = tensors["fecam.prec_chol"].numpy().astype(np.float64)
            self.seen = tensors["fecam.seen"].numpy().astype(bool)
