"""Analytic heads: a random-projection ridge classifier with streaming statistics (RanPAC-style).

METHOD.md section 5 / McDonnell et al. (NeurIPS 2023): phi(h) = ReLU(h W_rand), W_rand ~ N(0,1)
fixed; G += Phi^T Phi and Q += Phi^T Y accumulate over tasks; W_out = (G + lambda I)^-1 Q with
lambda chosen per task by validation MSE on an 80/20 split of the current task's data. Written by
hand because it is the method itself: scikit-learn's Ridge cannot stream Gram statistics across
tasks or reuse one eigendecomposition for the whole lambda grid.
"""

from __future__ import annotations

import numpy as np
import torch

from .dist import active, all_reduce
from .seeding import RUN, generator
from .seeding import rng as seeding_rng

DEFAULT_LAMBDAS = [10.0 ** e for e in range(-8, 9)]


class RidgeHead:
    def __init__(self, in_dim: int, proj_dim: int = 10000, seed: int = 0,
                 lambdas: list[float] | None = None, val_fraction: float = 0.2):
        self.in_dim, self.proj_dim = in_dim, proj_dim
        self.lambdas = list(lambdas or DEFAULT_LAMBDAS)
        self.val_fraction = val_fraction
        self.seed = seed
        # proj_dim 0: ridge directly on the embeddings (no projection, no ReLU)
        self.W_rand = (torch.randn(in_dim, proj_dim, generator=generator(seed, RUN, "projection"),
                                   dtype=torch.float64)
                       if proj_dim else None)
        dim = proj_dim or in_dim
        self.G = torch.zeros(dim, dim, dtype=torch.float64)
        self.Q = torch.zeros(dim, 0, dtype=torch.float64)
        self.W_out = torch.zeros(dim, 0, dtype=torch.float64)
        self.lam = float("nan")
        self.lambda_history: list[float] = []

    @property
    def num_classes(self) -> int:
        return self.Q.shape[1]

    def features(self, h: np.ndarray | torch.Tensor) -> torch.Tensor:
        h = torch.as_tensor(np.asarray(h), dtype=torch.float64)
        return torch.relu(h @ self.W_rand) if self.W_rand is not None else h

    def _targets(self, labels: np.ndarray, num_classes: int) -> torch.Tensor:
        y = torch.zeros(len(labels), num_classes, dtype=torch.float64)
        y[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)] = 1.0
        return y

    def update(self, h: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
        """Add one task's data (embedded by that task's backbone); returns the chosen lambda."""
        if num_classes > self.num_classes:
            pad = num_classes - self.num_classes
            self.Q = torch.cat([self.Q, self.Q.new_zeros(self.Q.shape[0], pad)], dim=1)
        # across ranks (``h`` is every sample, on every rank) each rank projects and sums its
        # part, and the sums are all-reduced: G and Q equal one process's up to rounding
        h, labels = np.asarray(h), np.asarray(labels)
        n = len(h)
        part = active().part(n)
        if len(part) < n:  # one process holds every row: no copy
            h, labels = h[part], labels[part]
        phi = self.features(h)
        y = self._targets(labels, num_classes)
        self.lam = self._select_lambda(phi, y, part, n)
        self.lambda_history.append(self.lam)
        self.G += all_reduce(phi.T @ phi)
        self.Q += all_reduce(phi.T @ y)
        self.W_out = self.solve(self.lam)
        return self.lam

    def _select_lambda(self, phi: torch.Tensor, y: torch.Tensor, part: np.ndarray,
                       n: int) -> float:
        """lambda of least validation error; ``phi``, ``y``: rows ``part`` of the task's ``n``
        samples (all of them in one process). The split is drawn over all ``n``, so every
        process count validates on the same samples."""
        if len(self.lambdas) == 1 or n < 5:
            return self.lambdas[0] if len(self.lambdas) == 1 else 1.0
        rng = seeding_rng(self.seed, len(self.lambda_history), "ridge-validation")
        order = rng.permutation(n)
        n_val = max(1, int(round(self.val_fraction * n)))
        local = np.full(n, -1)
        local[part] = np.arange(len(part))  # sample -> its row here (-1: another rank's)
        val, tr = local[order[:n_val]], local[order[n_val:]]
        val, tr = val[val >= 0], tr[tr >= 0]
        G = self.G + all_reduce(phi[tr].T @ phi[tr])
        Q = self.Q + all_reduce(phi[tr].T @ y[tr])
        evals, evecs = torch.linalg.eigh(G)  # one decomposition serves the whole grid
        VtQ = evecs.T @ Q
        PV = phi[val] @ evecs
        sq = torch.stack([((PV @ (VtQ / (evals + lam).unsqueeze(1)) - y[val]) ** 2).sum()
                          for lam in self.lambdas])
        errors = all_reduce(sq) / (n_val * y.shape[1])
        return self.lambdas[int(torch.argmin(errors))]

    def solve(self, lam: float) -> torch.Tensor:
        eye = torch.eye(self.G.shape[0], dtype=torch.float64)
        return torch.linalg.solve(self.G + lam * eye, self.Q)

    def logits(self, h: np.ndarray) -> np.ndarray:
        return (self.features(h) @ self.W_out).numpy()

    def state(self, prefix: str = "head.") -> tuple[dict[str, torch.Tensor], dict]:
        # W_rand is not stored: it is redrawn from the seed. G stays, so a loaded model can go on
        # learning tasks.
        tensors = {f"{prefix}G": self.G, f"{prefix}Q": self.Q, f"{prefix}W_out": self.W_out}
        return tensors, {"lambda": self.lam, "lambda_history": self.lambda_history}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "head.") -> None:
        # G and Q are growth statistics: a serving export leaves them out
        self.W_out = tensors[f"{prefix}W_out"]
        self.G = tensors.get(f"{prefix}G")
        self.Q = tensors.get(f"{prefix}Q")
        self.lam = float(meta["lambda"])
        self.lambda_history = list(meta["lambda_history"])
