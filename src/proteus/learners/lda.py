"""Streaming shrinkage LDA on frozen multi-block features: the control PROTEUS must beat.

Hayes & Kanan, "Lifelong Machine Learning with Deep Streaming Linear Discriminant Analysis"
(CVPR-W 2020) is the streaming form; the shrinkage is scikit-learn's
``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=...)``, reproduced exactly, but streamed:

* features: the same frozen features PROTEUS retrieves with (the embedding plus the pooled
  outputs of ``signature_stages``, each L2-normalised; ``[]`` for the embedding alone);
* scikit-learn's within-class covariance is ``sum_c prior_c * cov_c`` with ``cov_c`` the
  Ledoit-Wolf shrinkage (``shrinkage: auto``) of class c's covariance *after standardising
  its features*, scaled back: ``cov_c = (1 - rho_c) S_c + rho_c mu_c diag(scale_c^2)``
  (S_c the empirical covariance, mu_c the mean standardised variance). A fixed intensity ``s``
  shrinks the raw covariance: ``(1 - s) S_c + s tr(S_c)/d I``. With
  ``prior_c = n_c / N`` the sum is ``(M + diag(v)) / N``, where
  ``M = sum_c (1 - rho_c) scatter_c`` and ``v = sum_c rho_c n_c target_c`` are sums over
  classes, kept as each class arrives: no sample is stored;
* prediction: ``argmax_c x . w_c + b_c`` with ``W = Sigma^-1 mu`` and
  ``b_c = -1/2 mu_c . w_c + log prior_c`` over every class seen, no task retrieval.

Classes are taken to arrive with their own task (a class seen again later is an error).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy.linalg import lstsq
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.preprocessing import StandardScaler

from ..backbones.base import multi_stage_features
from ..data.base import LabeledData, take
from ..data.scenario import Task
from ..registry import Options
from .base import LEARNERS, Context, Learner, LearnerError, TaskOutcome


def frozen_features(backbone, data: LabeledData, ctx: Context, stages: list[int] | None,
                    batch_size: int) -> np.ndarray:
    """Frozen features in float64: the embedding plus the pooled outputs of ``stages`` (what
    PROTEUS retrieves with; None: the backbone's default stages), or the embedding alone
    (``[]``). Kept per sample id for the run."""
    if stages is None:
        stages = backbone.default_signature_stages
    if not stages:  # the embedding alone, as PROTEUS's signatures take it then
        return ctx.features(data).astype(np.float64)
    rows = ctx.by_id(f"frozen_features{tuple(stages)}", data, lambda positions:
                     multi_stage_features(backbone, take(data.items, positions), stages,
                                          batch_size)[0])
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, 0))


class LDAOptions(Options):
    # the frozen features: None = the backbone's default stages (what proteus retrieves with)
    signature_stages: list[int] | None = None
    shrinkage: Literal["auto"] | float = "auto"  # "auto": Ledoit-Wolf per class, as sklearn
    batch_size: int = Field(256, gt=0)


@LEARNERS.register("lda", LDAOptions,
                   "streaming shrinkage LDA on frozen multi-block features (control)")
class LDA(Learner):
    options_model = LDAOptions
    grow_keys = ("lda.M", "lda.v", "lda.sum")
    compact_keys = ("lda.*",)
    symmetric_keys = ("lda.M",)

    def __init__(self, options: LDAOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.count = np.zeros(0)
        self.sum: np.ndarray | None = None
        self.M: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.coef: np.ndarray | None = None  # (C, d)
        self.intercept = np.zeros(0)

    def features(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return frozen_features(self.backbone, data, ctx, self.options.signature_stages,
                               self.options.batch_size)

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        x = self.features(task.train, ctx)
        d = x.shape[1]
        if self.M is None:
            self.M, self.v, self.sum = np.zeros((d, d)), np.zeros(d), np.zeros((0, d))
        top = max(len(self.count), max(task.classes) + 1)
        self.count = np.concatenate([self.count, np.zeros(top - len(self.count))])
        self.sum = np.concatenate([self.sum, np.zeros((top - len(self.sum), d))])
        rhos = {}
        for c in np.unique(task.train.labels):
            if self.count[c]:
                raise LearnerError(f"lda: class {c} was learned before; each class must arrive "
                                   "with one task")
            xc = x[task.train.labels == c]
            centred = xc - xc.mean(0)
            rho, target = self._shrinkage(centred)
            self.M += (1 - rho) * (centred.T @ centred)
            self.v += rho * len(xc) * target
            self.count[c] = len(xc)
            self.sum[c] = xc.sum(0)
            rhos[int(c)] = rho
        self.num_classes = top
        self.tasks_learned += 1
        self._solve()
        return TaskOutcome(extras={"shrinkage_mean": float(np.mean(list(rhos.values())))})

    def _shrinkage(self, centred: np.ndarray) -> tuple[float, np.ndarray]:
        """(intensity, target diagonal) of one class's covariance, as scikit-learn shrinks it.

        ``auto``: Ledoit-Wolf on the standardised features, whose target ``mu I`` (mu the mean
        standardised variance: below 1 where features are constant) is ``mu * scale^2`` once
        scaled back, a constant feature keeping scikit-learn's scale of 1. A fixed intensity:
        the raw covariance's mean variance times I."""
        var = centred.var(0)
        if self.options.shrinkage != "auto":
            return float(self.options.shrinkage), np.full(len(var), var.mean())
        scale = StandardScaler(with_mean=False).fit(centred).scale_  # constant features: 1
        standardised = centred / scale
        mu = float((var / scale ** 2).mean())
        rho = (float(ledoit_wolf_shrinkage(standardised, assume_centered=True))
               if len(centred) > 1 else 1.0)
        return rho, mu * scale ** 2

    def _solve(self) -> None:
        seen = self.count > 0
        n = self.count.sum()
        cov = self.M / n
        cov.flat[:: cov.shape[0] + 1] += self.v / n
        means = np.zeros_like(self.sum)
        means[seen] = self.sum[seen] / self.count[seen, None]
        # scikit-learn's lsqr solver: the least-squares (minimum-norm) solution. The covariance
        # is singular where every class is constant in a feature (dead channels) and badly
        # conditioned elsewhere; a Cholesky solve there cost 0.3 points on the vision preset
        coef = lstsq(cov, means.T, check_finite=False)[0].T  # (C, d)
        prior = np.where(seen, self.count / n, 1.0)
        self.coef = coef
        self.intercept = np.where(seen, -0.5 * (means * coef).sum(1) + np.log(prior), -np.inf)

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return self.features(data, ctx) @ self.coef.T + self.intercept

    def state(self):
        tensors = {}
        if self.M is not None:
            tensors = {"lda.M": torch.from_numpy(self.M), "lda.v": torch.from_numpy(self.v),
                       "lda.sum": torch.from_numpy(self.sum),
                       "lda.count": torch.from_numpy(self.count),
                       "lda.coef": torch.from_numpy(self.coef),
                       "lda.intercept": torch.from_numpy(self.intercept)}
        return tensors, {"num_classes": self.num_classes, "tasks_learned": self.tasks_learned}

    def load_state(self, tensors, meta) -> None:
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])
        if "lda.coef" in tensors:
            self.coef = tensors["lda.coef"].numpy().astype(np.float64)
            self.intercept = tensors["lda.intercept"].numpy().astype(np.float64)
            self.count = tensors["lda.count"].numpy().astype(np.float64)
            # growth statistics: absent from a serving export
            self.M = tensors["lda.M"].numpy().astype(np.float64) if "lda.M" in tensors else None
            self.v = tensors["lda.v"].numpy().astype(np.float64) if "lda.v" in tensors else None
            self.sum = (tensors["lda.sum"].numpy().astype(np.float64) if "lda.sum" in tensors
                        else None)
