"""Summable class statistics: per-class counts and sums, and the second moment of all samples.

These are the sufficient statistics of class Gaussians with a shared covariance: class means
(sums / counts) and the pooled within-class scatter
``S = sum_i x_i x_i^T - sum_c n_c mu_c mu_c^T``. Every field is a plain sum over samples, so
statistics of two tasks, two shards of one task or two processes add up exactly (``+=``, or one
all-reduce of each field), whatever the order; that is what the task signatures, the LDA / FeCAM
style controls, classifier alignment, head-swap controls and scale-out build on. Written by hand:
scikit-learn's estimators fit in one shot and cannot add statistics across tasks.
"""

from __future__ import annotations

import numpy as np
import torch

from .dist import active, all_reduce


class ClassStats:
    """Counts ``(C,)``, sums ``(C, d)`` and, with ``second_moment``, ``sum x x^T`` ``(d, d)``,
    all in float64. Class ``c`` is a row; rows grow as classes arrive."""

    def __init__(self, dim: int, num_classes: int = 0, second_moment: bool = True):
        self.dim = int(dim)
        self.count = np.zeros(num_classes, dtype=np.float64)
        self.sum = np.zeros((num_classes, self.dim), dtype=np.float64)
        self.second = np.zeros((self.dim, self.dim), dtype=np.float64) if second_moment else None

    @property
    def num_classes(self) -> int:
        return len(self.count)

    @property
    def total(self) -> float:
        return float(self.count.sum())

    def grow(self, num_classes: int) -> None:
        """Make room for class rows up to ``num_classes`` (never shrinks)."""
        extra = num_classes - self.num_classes
        if extra > 0:
            self.count = np.concatenate([self.count, np.zeros(extra)])
            self.sum = np.concatenate([self.sum, np.zeros((extra, self.dim))])

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Add samples ``x`` (N x d) of classes ``labels`` (class rows).

        Across ranks (inside :func:`proteus.dist.sharding`, where every rank holds all of ``x``)
        each rank sums its part of the samples and the sums are all-reduced."""
        x = np.asarray(x, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ClassStats: expected samples of dimension {self.dim}, got shape "
                             f"{x.shape}")
        if len(labels):
            self.grow(int(labels.max()) + 1)
        group = active()
        if group.enabled:
            part = group.part(len(x))
            x, own = x[part], labels[part]
            count, total = np.zeros_like(self.count), np.zeros_like(self.sum)
            np.add.at(count, own, 1.0)
            np.add.at(total, own, x)
            self.count += all_reduce(count)
            self.sum += all_reduce(total)
            if self.second is not None:
                self.second += all_reduce(x.T @ x)
            return
        np.add.at(self.count, labels, 1.0)
        np.add.at(self.sum, labels, x)
        if self.second is not None:
            self.second += x.T @ x

    def __iadd__(self, other: "ClassStats") -> "ClassStats":
        if other.dim != self.dim or (other.second is None) != (self.second is None):
            raise ValueError("ClassStats: cannot add statistics of another shape")
        self.grow(other.num_classes)
        self.count[: other.num_classes] += other.count
        self.sum[: other.num_classes] += other.sum
        if self.second is not None:
            self.second += other.second
        return self

    def means(self, classes: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Class means of ``classes`` (default: every row); a class with no sample is an error."""
        rows = np.arange(self.num_classes) if classes is None else np.asarray(classes)
        if (self.count[rows] == 0).any():
            missing = rows[self.count[rows] == 0].tolist()
            raise ValueError(f"ClassStats: no samples yet for class rows {missing}")
        return self.sum[rows] / self.count[rows, None]

    def within_scatter(self, symmetric: bool = True) -> np.ndarray:
        """Pooled within-class scatter ``sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T`` (a new
        array). ``symmetric`` False skips making it exactly symmetric, for a consumer that
        reads one triangle (a Cholesky factorisation) and one d x d copy fewer."""
        if self.second is None:
            raise ValueError("ClassStats: built without the second moment")
        seen = self.count > 0
        scatter = self.second.copy()
        scatter -= self.sum[seen].T @ (self.sum[seen] / self.count[seen, None])
        if symmetric:
            scatter += scatter.T  # exact symmetry despite rounding (numpy buffers the overlap)
            scatter *= 0.5
        return scatter

    def nbytes(self) -> int:
        return int(self.count.nbytes + self.sum.nbytes
                   + (0 if self.second is None else self.second.nbytes))

    # -- saving ----------------------------------------------------------------------------
    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Counts, sums and the *within-class scatter* (not the raw second moment): the scatter
        is the quantity that matters and survives a float32 copy, whereas recovering it from a
        rounded second moment would cancel most of its digits."""
        tensors = {f"{prefix}count": torch.from_numpy(self.count.copy()),
                   f"{prefix}sum": torch.from_numpy(self.sum.copy())}
        if self.second is not None:
            tensors[f"{prefix}scatter"] = torch.from_numpy(self.within_scatter())
        return tensors

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "ClassStats":
        count = tensors[f"{prefix}count"].numpy().astype(np.float64)
        total = tensors[f"{prefix}sum"].numpy().astype(np.float64)
        scatter = tensors.get(f"{prefix}scatter")
        out = cls(total.shape[1], len(count), second_moment=scatter is not None)
        out.count, out.sum = count, total
        if scatter is not None:
            seen = count > 0
            out.second = (scatter.numpy().astype(np.float64)
                          + total[seen].T @ (total[seen] / count[seen, None]))
        return out
