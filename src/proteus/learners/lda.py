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


class StreamingLDA:
    """The statistics, shrinkage and solve of a streaming shrinkage LDA (the module docstring's
    rule): classes arrive with their samples (``add``), ``solve`` refreshes the coefficients,
    ``scores`` are ``x . w_c + b_c`` over every class row (``-inf`` for a class not seen).
    ``name`` heads the error for a class seen again. Used by the ``lda`` control and by
    ``proteus``'s adapted-space evidence (one per task space)."""

    def __init__(self, shrinkage: Literal["auto"] | float = "auto", name: str = "lda"):
        self.shrinkage, self.name = shrinkage, name
        self.count = np.zeros(0)
        self.sum: np.ndarray | None = None
        self.M: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.coef: np.ndarray | None = None  # (C, d)
        self.intercept = np.zeros(0)

    def add(self, x: np.ndarray, labels: np.ndarray, num_classes: int = 0) -> dict[int, float]:
        """Add the samples of classes never seen before (class rows grow to at least
        ``num_classes``); returns each class's shrinkage."""
        x = np.asarray(x, dtype=np.float64)
        d = x.shape[1]
        if self.M is None:
            self.M, self.v, self.sum = np.zeros((d, d)), np.zeros(d), np.zeros((0, d))
        top = max(len(self.count), int(labels.max()) + 1, num_classes)
        self.count = np.concatenate([self.count, np.zeros(top - len(self.count))])
        self.sum = np.concatenate([self.sum, np.zeros((top - len(self.sum), d))])
        rhos = {}
        for c in np.unique(labels):
            if self.count[c]:
                raise LearnerError(f"{self.name}: class {c} was learned before; each class must "
                                   "arrive with one task")
            xc = x[labels == c]
            centred = xc - xc.mean(0)
            rho, target = self._shrinkage(centred)
            self.M += (1 - rho) * (centred.T @ centred)
            self.v += rho * len(xc) * target
            self.count[c] = len(xc)
            self.sum[c] = xc.sum(0)
            rhos[int(c)] = rho
        return rhos

    def _shrinkage(self, centred: np.ndarray) -> tuple[float, np.ndarray]:
        """(intensity, target diagonal) of one class's covariance, as scikit-learn shrinks it.

        ``auto``: Ledoit-Wolf on the standardised features, whose target ``mu I`` (mu the mean
        standardised variance: below 1 where features are constant) is ``mu * scale^2`` once
        scaled back, a constant feature keeping scikit-learn's scale of 1. A fixed intensity:
        the raw covariance's mean variance times I."""
        var = centred.var(0)
        if self.shrinkage != "auto":
            return float(self.shrinkage), np.full(len(var), var.mean())
        scale = StandardScaler(with_mean=False).fit(centred).scale_  # constant features: 1
        standardised = centred / scale
        mu = float((var / scale ** 2).mean())
        rho = (float(ledoit_wolf_shrinkage(standardised, assume_centered=True))
               if len(centred) > 1 else 1.0)
        return rho, mu * scale ** 2

    def solve(self) -> None:
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

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.count, self.sum, self.M, self.v, self.coef,
                                          self.intercept) if a is not None))

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The solved coefficients, and the growth statistics where this one holds them (a
        serving export loaded back holds none)."""
        if self.coef is None:
            return {}
        parts = {"count": self.count, "coef": self.coef, "intercept": self.intercept,
                 "M": self.M, "v": self.v, "sum": self.sum}
        return {prefix + k: torch.from_numpy(v) for k, v in parts.items() if v is not None}

    def load_state(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        def get(key):  # growth statistics are absent from a serving export
            t = tensors.get(prefix + key)
            return None if t is None else t.numpy().astype(np.float64)

        if prefix + "coef" in tensors:
            self.coef, self.intercept, self.count = get("coef"), get("intercept"), get("count")
            self.M, self.v, self.sum = get("M"), get("v"), get("sum")


@LEARNERS.register("lda", LDAOptions,
                   "streaming shrinkage LDA on frozen multi-block features (control)")
class LDA(Learner):
    options_model = LDAOptions
    grow_keys = ("lda.M", "lda.v", "lda.sum")
    compact_keys = ("lda.*",)
    symmetric_keys = ("lda.M",)

    def __init__(self, options: LDAOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.lda = StreamingLDA(options.shrinkage, name="lda")

    @property
    def coef(self) -> np.ndarray | None:
        return self.lda.coef

    @property
    def intercept(self) -> np.ndarray:
        return self.lda.intercept

    def features(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return frozen_features(self.backbone, data, ctx, self.options.signature_stages,
                               self.options.batch_size)

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        top = max(self.num_classes, max(task.classes) + 1)
        rhos = self.lda.add(self.features(task.train, ctx), task.train.labels, top)
        self.num_classes = top
        self.tasks_learned += 1
        self.lda.solve()
        return TaskOutcome(extras={"shrinkage_mean": float(np.mean(list(rhos.values())))})

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return self.lda.scores(self.features(data, ctx))

    def state(self):
        return self.lda.state("lda."), {"num_classes": self.num_classes,
                                        "tasks_learned": self.tasks_learned}

    def load_state(self, tensors, meta) -> None:
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])
        self.lda.load_state(tensors, "lda.")
