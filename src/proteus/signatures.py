"""Task signatures, likelihood retrieval and the retrieval certificate (METHOD.md sections 3, 4, 6).

A task's signature is a set of Gaussian components in some embedding space;
score_k(x) = max_s log N(x; mu_ks, Sigma_ks) and the retrieved task is argmax_k score_k(x), per
sample. Kinds:

* ``dpgmm``  — variational Dirichlet-process Gaussian mixture (scikit-learn's
  BayesianGaussianMixture), the paper's recipe; covariances ``full``, ``diag`` or ``lowrank``
  (per-task PCA to ``pca_dim`` + isotropic residual on the discarded directions, i.e.
  probabilistic PCA, which keeps likelihoods of different tasks comparable: METHOD.md section 9c);
* ``kmeans`` — centroids with unit covariance (the reviewers' ablation; S-Prompts' retrieval);
* ``gaussian`` — one Gaussian per task, Ledoit-Wolf shrinkage covariance;
* ``class-gaussian`` — one Gaussian per class with a covariance shared by all classes and
  accumulated across tasks (shrinkage LDA); a task scores as its best class. Only statistics are
  kept, no learned parameters: nothing to forget (METHOD.md section 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from sklearn.cluster import KMeans
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.mixture import BayesianGaussianMixture

from .registry import Options
from .seeding import sklearn_state
from .stats import ClassStats

LOG_2PI = math.log(2 * math.pi)


class SignatureOptions(Options):
    kind: Literal["class-gaussian", "dpgmm", "kmeans", "gaussian"] = "class-gaussian"
    covariance: Literal["full", "diag", "lowrank"] = "full"
    n_components: int = 20  # dpgmm upper bound; kmeans uses kmeans_k
    concentration: float = 0.1  # Dirichlet-process weight concentration prior
    reg_covar: float = 1e-4  # added to every covariance's diagonal (section 4)
    pca_dim: int = 64  # for covariance "lowrank"
    kmeans_k: int = 5
    l2_normalize: bool = True  # makes reg_covar scale-free (METHOD.md section 9b)
    max_iter: int = 200


@dataclass
class Components:
    """Gaussians of one task: means (K,d) and a covariance model, optionally after a projection."""

    means: np.ndarray
    kind: str  # "full" (prec_chol), "diag" (var), "iso" (unit variance), "shared"
    prec_chol: np.ndarray | None = None  # (K,d,d): Sigma^-1 = L L^T
    var: np.ndarray | None = None  # (K,d)
    logdet: np.ndarray = field(default=None)  # (K,) log det Sigma
    # probabilistic-PCA projection: x -> basis^T (x - center), residual variance on the rest
    center: np.ndarray | None = None
    basis: np.ndarray | None = None  # (d, k)
    resid_var: float | None = None
    classes: np.ndarray | None = None  # for class-gaussian: the class of each component
    # per-component empirical moments of the points assigned to it (for the certificate)
    point_mean: np.ndarray | None = None
    point_cov: list[np.ndarray] | None = None  # per component: d x d, or an n x d factor
    point_count: np.ndarray | None = None  # (K,) points per component (the certificate's OAS)
    _prec: list | None = field(default=None, repr=False)  # cached precision matrices

    @property
    def dim(self) -> int:
        return self.means.shape[1] if self.basis is None else self.basis.shape[0]

    def nbytes(self) -> int:
        arrays = (self.means, self.prec_chol, self.var, self.logdet, self.center, self.basis)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def log_likelihood(self, x: np.ndarray,
                       shared: tuple[np.ndarray, float] | None = None) -> np.ndarray:
        """(N, K) log N(x; mu_s, Sigma_s + reg I); ``shared`` = (precision Cholesky, log det)
        of the covariance that "shared" components use."""
        resid = 0.0
        if self.basis is not None:
            xc = x - self.center
            z = xc @ self.basis
            rest = (xc ** 2).sum(1) - (z ** 2).sum(1)
            d_rest = self.center.shape[0] - self.basis.shape[1]
            resid = -0.5 * (rest / self.resid_var + d_rest * (math.log(self.resid_var) + LOG_2PI))
            x = z
        d = x.shape[1]
        if self.kind == "iso":
            maha = _sq_dist(x, self.means)
        elif self.kind == "diag":
            maha = np.stack([(((x - m) ** 2) / v).sum(1) for m, v in zip(self.means, self.var)], 1)
        elif self.kind == "shared":
            # one covariance for all components: whiten once, then plain squared distances
            L = shared[0]
            maha = _sq_dist(x @ L, self.means @ L)
        else:
            maha = np.empty((len(x), len(self.means)))
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            for s, m in enumerate(self.means):
                L = torch.from_numpy(self.prec_chol[s])
                maha[:, s] = ((t - torch.from_numpy(m)) @ L).pow(2).sum(1).numpy()
        if self.kind == "shared":
            logdet = shared[1]
        else:
            logdet = 0.0 if self.logdet is None else self.logdet[None, :]
        return -0.5 * (maha + logdet + d * LOG_2PI) + np.asarray(resid).reshape(-1, 1)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]


def _chol_precision(cov: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor L of Sigma^-1 (Sigma^-1 = L L^T) and log det Sigma; ``overwrite``
    lets the factorisation reuse ``cov``'s memory."""
    c = cho_factor(cov, lower=True, overwrite_a=overwrite, check_finite=False)[0]
    logdet = 2.0 * float(np.log(np.diag(c)).sum())
    # L = C^-T; a triangular solve costs a third of a general one (d = 3,088: seconds per task)
    inv = solve_triangular(c, np.eye(len(cov)), lower=True, overwrite_b=True,
                           check_finite=False).T
    return inv, logdet


def _moments(x: np.ndarray, assign: np.ndarray, k: int
             ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Per cluster: the mean of its points and their covariance, the latter as a float32 factor
    F with C = F^T F (the centred points / sqrt(n); n x d) where a cluster has fewer points than
    dimensions, else as the d x d matrix: a class of 200 points in 3,088-d costs 2.5 MB, not 38;
    and the number of points of each cluster."""
    means = np.stack([x[assign == s].mean(0) for s in range(k)])
    counts = np.bincount(assign, minlength=k).astype(np.int64)
    covs = []
    for s in range(k):
        centred = x[assign == s] - means[s]
        if len(centred) < x.shape[1]:
            covs.append((centred / np.sqrt(len(centred))).astype(np.float32))
        else:
            covs.append((centred.T @ centred / len(centred)).astype(np.float32))
    return means, covs, counts


def _trace_with(P: np.ndarray, cov: np.ndarray) -> float:
    """tr(P C) for C given as a factor (n x d, n < d) or a matrix (d x d)."""
    if cov.shape[0] != cov.shape[1]:
        F = cov.astype(np.float64)
        return float(((F @ P) * F).sum())
    return float((P * cov).sum())  # both symmetric: an elementwise sum, d^2 not d^3


def _cov_diag(cov: np.ndarray) -> np.ndarray:
    return (cov.astype(np.float64) ** 2).sum(0) if cov.shape[0] != cov.shape[1] else np.diag(cov)


class TaskSignatures:
    """Signatures of every task learned so far, in one embedding space, and retrieval."""

    def __init__(self, options: SignatureOptions, seed: int = 0):
        self.o = options
        self.seed = seed
        self.tasks: list[Components] = []
        # class-gaussian: class counts, sums and second moment summed over tasks
        self.stats: ClassStats | None = None
        self.shrinkage_sum = 0.0
        self._shared: tuple[np.ndarray, float] | None = None
        self._shared_prec: np.ndarray | None = None
        # class means of every task whitened by the shared precision, for full log-likelihoods
        self._whitened: tuple[np.ndarray, np.ndarray] | None = None
        # retrieval as a linear map (the shared precision folded into the class means), see
        # retrieval_scores; what a saved model keeps instead of the d x d precision
        self._linear: tuple[np.ndarray, np.ndarray] | None = None

    def prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.o.l2_normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    # -- fitting -------------------------------------------------------------------------
    def add_task(self, embeddings: np.ndarray, labels: np.ndarray) -> Components:
        x = self.prepare(embeddings)
        fit = {"class-gaussian": self._fit_class_gaussian, "dpgmm": self._fit_dpgmm,
               "kmeans": self._fit_kmeans, "gaussian": self._fit_gaussian}[self.o.kind]
        comp = fit(x, np.asarray(labels))
        self.tasks.append(comp)
        return comp

    def _fit_class_gaussian(self, x: np.ndarray, labels: np.ndarray) -> Components:
        classes = np.unique(labels)
        assign = np.searchsorted(classes, labels)
        means, covs, counts = _moments(x, assign, len(classes))
        if self.stats is None:
            self.stats = ClassStats(x.shape[1])
        self.stats.add(x, labels)
        # Ledoit-Wolf shrinkage intensity of this task, averaged over tasks by sample count
        centred = x - means[assign]
        self.shrinkage_sum += ledoit_wolf_shrinkage(centred, assume_centered=True) * len(x)
        self._shared = self._shared_prec = self._whitened = self._linear = None
        return Components(means=means, kind="shared", classes=classes, point_mean=means,
                          point_cov=covs, point_count=counts)

    def shared_precision(self) -> tuple[np.ndarray, float]:
        """Cholesky of the shared precision from the accumulated within-class scatter."""
        if self._shared is None:
            # (1 - rho) S/n + rho tr(S/n)/d I + reg I, built in one d x d buffer: at d = 3,088
            # every extra float64 copy is 76 MB, and this runs after every task
            d, n = self.stats.dim, self.stats.total
            rho = self.shrinkage_sum / n
            cov = self.stats.within_scatter(symmetric=False)  # Cholesky reads one triangle
            shift = rho * np.trace(cov) / (n * d) + self.o.reg_covar
            cov *= (1 - rho) / n
            cov.flat[:: d + 1] += shift
            self._shared = _chol_precision(cov, overwrite=True)
        return self._shared

    def _fit_dpgmm(self, x: np.ndarray, labels: np.ndarray) -> Components:
        center = basis = resid = None
        z = x
        if self.o.covariance == "lowrank":
            k = min(self.o.pca_dim, x.shape[1] - 1, len(x) - 1)
            center = x.mean(0)
            _, sv, vt = np.linalg.svd(x - center, full_matrices=False)
            basis = vt[:k].T
            eig = sv ** 2 / len(x)
            resid = float(max(eig[k:].sum() / (x.shape[1] - k), 1e-12)) + self.o.reg_covar
            z = (x - center) @ basis
        cov_type = "diag" if self.o.covariance == "diag" else "full"
        n = min(self.o.n_components, len(z))
        gmm = BayesianGaussianMixture(
            n_components=n, covariance_type=cov_type,
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=self.o.concentration, reg_covar=self.o.reg_covar,
            max_iter=self.o.max_iter, init_params="kmeans",
            random_state=sklearn_state(self.seed, len(self.tasks), "signature"))
        assign = gmm.fit(z).predict(z)
        keep = np.unique(assign)  # drop empty components
        remap = np.searchsorted(keep, assign)
        pm, pc, pn = _moments(z, remap, len(keep))
        if cov_type == "diag":
            var = gmm.covariances_[keep]
            return Components(means=gmm.means_[keep], kind="diag", var=var,
                              logdet=np.log(var).sum(1), center=center, basis=basis,
                              resid_var=resid, point_mean=pm, point_cov=pc, point_count=pn)
        chols, logdets = zip(*(_chol_precision(c) for c in gmm.covariances_[keep]))
        return Components(means=gmm.means_[keep], kind="full", prec_chol=np.stack(chols),
                          logdet=np.array(logdets), center=center, basis=basis, resid_var=resid,
                          point_mean=pm, point_cov=pc, point_count=pn)

    def _fit_kmeans(self, x: np.ndarray, labels: np.ndarray) -> Components:
        k = min(self.o.kmeans_k, len(x))
        km = KMeans(n_clusters=k, n_init=3, random_state=sklearn_state(
            self.seed, len(self.tasks), "signature")).fit(x)
        pm, pc, pn = _moments(x, km.labels_, k)
        return Components(means=km.cluster_centers_, kind="iso", point_mean=pm, point_cov=pc,
                          point_count=pn)

    def _fit_gaussian(self, x: np.ndarray, labels: np.ndarray) -> Components:
        mean = x.mean(0, keepdims=True)
        emp = np.cov(x.T, bias=True)
        rho = ledoit_wolf_shrinkage(x - mean, assume_centered=True)
        d = x.shape[1]
        cov = (1 - rho) * emp + rho * np.trace(emp) / d * np.eye(d) + self.o.reg_covar * np.eye(d)
        chol, logdet = _chol_precision(cov)
        _, covs, counts = _moments(x, np.zeros(len(x), dtype=np.int64), 1)
        return Components(means=mean, kind="full", prec_chol=chol[None], logdet=np.array([logdet]),
                          point_mean=mean, point_cov=covs, point_count=counts)

    # -- retrieval -----------------------------------------------------------------------
    def task_scores(self, x: np.ndarray, task: int) -> np.ndarray:
        """score_task(x) = max over the task's components of the log-likelihood."""
        comp = self.tasks[task]
        shared = self.shared_precision() if comp.kind == "shared" else None
        return comp.log_likelihood(self.prepare(x), shared).max(1)

    def _all_shared(self) -> bool:
        return bool(self.tasks) and all(c.kind == "shared" and c.basis is None
                                        for c in self.tasks)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, T) scores of every task, all in this signature space (frozen embeddings): each
        task's best component log-likelihood. A serving export of class-Gaussian signatures
        keeps no precision; there the scores are :meth:`retrieval_scores` (the same up to a
        constant per sample)."""
        if self._all_shared():
            if self.stats is None and self._shared is None:
                return self.retrieval_scores(x)
            return self._shared_scores(x)
        return np.stack([self.task_scores(x, k) for k in range(len(self.tasks))], 1)

    def retrieval_scores(self, x: np.ndarray) -> np.ndarray:
        """(N, T) scores whose per-sample argmax is the retrieved task (:meth:`scores`, or
        shifted per sample). With class Gaussians sharing one precision P, a class's
        log-likelihood is ``x^T P mu_c - mu_c^T P mu_c / 2`` plus terms every class shares
        (``-x^T P x / 2``, the log-determinant), so retrieval is one (N, d) x (d, C) product
        with a bias: no d x d work per input, and a saved model needs no d x d matrix."""
        if not self._all_shared():
            return self.scores(x)
        W, b = self.linear_retrieval()
        return self._task_maxima(self.prepare(x) @ W + b)

    def class_scores(self, x: np.ndarray, num_classes: int) -> np.ndarray:
        """(N, num_classes) class-Gaussian signatures only: each class's log-likelihood up to a
        per-sample constant (the terms of :meth:`retrieval_scores` before the task maxima), in
        class-order positions; -inf for a class no signature holds."""
        if not self._all_shared() or any(c.classes is None for c in self.tasks):
            raise ValueError("class scores need class-Gaussian signatures (signature.kind "
                             "class-gaussian)")
        W, b = self.linear_retrieval()
        out = np.full((len(x), num_classes), -np.inf)
        out[:, np.concatenate([c.classes for c in self.tasks]).astype(np.int64)] = (
            self.prepare(x) @ W + b)
        return out

    def _task_maxima(self, class_scores: np.ndarray) -> np.ndarray:
        """(N, T): each task's best class score, from (N, C) scores over every task's classes
        in task order."""
        owner = np.concatenate([np.full(len(c.means), k) for k, c in enumerate(self.tasks)])
        out = np.full((len(class_scores), len(self.tasks)), -np.inf)
        for k in range(len(self.tasks)):  # T column maxima; the work before is one product
            out[:, k] = class_scores[:, owner == k].max(1)
        return out

    def linear_retrieval(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) of :meth:`retrieval_scores`: ``W = P M^T`` (d x C) over every task's class
        means M, ``b = -diag(M P M^T) / 2``."""
        if self._linear is None:
            L, _ = self.shared_precision()
            means = np.concatenate([c.means for c in self.tasks])
            whitened = means @ L  # P = L L^T
            self._linear = (L @ whitened.T, -0.5 * (whitened ** 2).sum(1))
        return self._linear

    def _shared_scores(self, x: np.ndarray) -> np.ndarray:
        """Full class-Gaussian log-likelihoods in one pass: whiten the inputs once (x L), score
        them against every class mean of every task with one matrix product, take each task's
        best class (the same arithmetic as the per-task :meth:`task_scores`)."""
        L, logdet = self.shared_precision()
        if self._whitened is None:
            means = np.concatenate([c.means for c in self.tasks]) @ L
            self._whitened = (means, (means ** 2).sum(1))
        means, norms = self._whitened
        z = self.prepare(x) @ L
        maha = (z ** 2).sum(1)[:, None] - 2 * z @ means.T + norms[None, :]
        return self._task_maxima(-0.5 * (maha + logdet + L.shape[0] * LOG_2PI))

    def nbytes(self, task: int) -> int:
        """Bytes of task ``task``'s own components (what one more task adds)."""
        return self.tasks[task].nbytes()

    def shared_nbytes(self) -> int:
        """Bytes shared by all tasks: the class statistics of class-gaussian signatures."""
        return 0 if self.stats is None else self.stats.nbytes()

    # -- saving --------------------------------------------------------------------------
    def state(self, prefix: str = "sig.") -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = {}, {"tasks": []}
        for k, comp in enumerate(self.tasks):
            fields = {}
            # point moments serve the certificate during a run only; a saved model skips them
            for name in ("means", "prec_chol", "var", "logdet", "center", "basis", "classes"):
                value = getattr(comp, name)
                if value is not None:
                    tensors[f"{prefix}{k}.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
                    fields[name] = True
            meta["tasks"].append({"kind": comp.kind, "resid_var": comp.resid_var,
                                  "fields": sorted(fields)})
        if self.stats is not None:
            # retrieval needs the precision folded into the class means (d x C); only learning
            # more needs the statistics, from which the precision is rebuilt
            W, b = self.linear_retrieval()
            tensors[f"{prefix}shared.weight"] = torch.from_numpy(np.ascontiguousarray(W))
            tensors[f"{prefix}shared.bias"] = torch.from_numpy(np.ascontiguousarray(b))
            tensors.update(self.stats.state(f"{prefix}stats."))
        meta.update(shrinkage_sum=self.shrinkage_sum)
        return tensors, meta

    def session_state(self, prefix: str = "sig.") -> tuple[dict[str, torch.Tensor], dict]:
        """The cluster moments the certificate reads (a resumed run needs them; a model not)."""
        tensors = {}
        for k, comp in enumerate(self.tasks):
            if comp.point_mean is None:
                continue
            tensors[f"{prefix}{k}.point_mean"] = torch.from_numpy(np.ascontiguousarray(
                comp.point_mean))
            for s, cov in enumerate(comp.point_cov):
                tensors[f"{prefix}{k}.point_cov.{s}"] = torch.from_numpy(cov)
            if comp.point_count is not None:
                tensors[f"{prefix}{k}.point_count"] = torch.from_numpy(comp.point_count)
        return tensors, {}

    def load_session_state(self, tensors: dict[str, torch.Tensor], prefix: str = "sig.") -> None:
        for k, comp in enumerate(self.tasks):
            key = f"{prefix}{k}.point_mean"
            if key in tensors:
                comp.point_mean = tensors[key].numpy()
                comp.point_cov = [tensors[f"{prefix}{k}.point_cov.{s}"].numpy()
                                  for s in range(len(comp.point_mean))]
                count = tensors.get(f"{prefix}{k}.point_count")
                comp.point_count = None if count is None else count.numpy()

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "sig.") -> None:
        self.tasks = []
        for k, t in enumerate(meta["tasks"]):
            values = {name: tensors[f"{prefix}{k}.{name}"].numpy() for name in t["fields"]}
            self.tasks.append(Components(kind=t["kind"], resid_var=t["resid_var"], **values))
        has_stats = f"{prefix}stats.count" in tensors
        self.stats = ClassStats.from_state(tensors, f"{prefix}stats.") if has_stats else None
        self.shrinkage_sum = float(meta["shrinkage_sum"])
        self._shared = self._shared_prec = self._whitened = self._linear = None
        if f"{prefix}shared.weight" in tensors:
            self._linear = (tensors[f"{prefix}shared.weight"].numpy().astype(np.float64),
                            tensors[f"{prefix}shared.bias"].numpy().astype(np.float64))
        if f"{prefix}shared.prec_chol" in tensors:  # models saved before the linear form
            self._shared = (tensors[f"{prefix}shared.prec_chol"].numpy(),
                            float(meta["shared_logdet"]))


def retrieve(scores: np.ndarray, mode: Literal["sample", "batch"] = "sample") -> np.ndarray:
    """Per-sample argmax over tasks; ``batch`` gives the whole batch the task of highest mean
    score (the authors' evaluation code; assumes task-pure batches, so only as an option)."""
    if mode == "batch":
        return np.full(len(scores), int(scores.mean(0).argmax()))
    return scores.argmax(1)


# -- certificate (section 6) ---------------------------------------------------------------
CertificateForm = Literal["per-task", "signature"]


def certificate(sig: TaskSignatures, epsilon: float = 0.01, shared_space: bool = True,
                form: CertificateForm = "per-task") -> dict:
    """Per-cluster separation delta and the paper's Eq. 28 check, from cluster moments.

    The points D of cluster (t, s) are summarised by their empirical mean m and covariance C, so
    the mean squared Mahalanobis distance to another cluster (i, u) is
    tr(P C) + (m - mu)^T P (m - mu) with P = Sigma_iu^-1; no stored data are needed. With a
    shared signature space (frozen embeddings) h_i = h for every task, as the formula assumes.
    T1, T2 and the threshold (2/d) max(T1, T2) are METHOD.md section 6's, in both forms; what
    differs is the Gaussians and the coordinates they are evaluated with.

    ``form``:

    * ``"signature"`` — the paper's check as stated, on the signature's own Gaussians in the raw
      signature coordinates. With class-Gaussian signatures (one shrunk covariance shared by
      every class) kappa = 0 for every cluster. Why it never certifies anything there
      (diagnosed on synthetic data, docs/certificate.md): sigma2 is measured in raw,
      L2-normalised coordinates (about 1e-4), so T1 = 1.5 d sigma2 is small and the threshold is
      2 T2 / d (about 0.03 at d = 1,024), i.e. lenient; it is delta that fails. delta subtracts
      1, which assumes a cluster's own points average d under the compared Gaussian, but under
      the regularised (Ledoit-Wolf + reg_covar) shared precision a class of n < d points with a
      decaying spectrum averages tr(P C) / d of about 0.45 (synthetic, 1,024-d): directions
      below the regulariser's floor contribute almost nothing, so delta is negative for
      classes that retrieval separates perfectly. A shared covariance also cannot see the clusters' differing shapes
      (kappa = 0, and the trace term is the same mismatch for every pair).
    * ``"per-task"`` (default) — where the bound's assumptions hold: every cluster gets its own
      Gaussian, fitted from its point moments, in coordinates whitened by the pooled
      within-cluster covariance (the shared precision for class-Gaussian signatures), so
      sigma2 and delta are on one scale (a cluster shaped like the pool has sigma2 about 1).
      Each covariance is shrunk towards the isotropic target of that space (i.e. towards the
      pooled shape) by the Oracle Approximating Shrinkage rule (Chen et al. 2010), which needs
      only the moments and the point count: two samples of one distribution then score
      delta about 0 instead of the large values that near-singular, unshrunk sample
      covariances of n < d points would give (a certificate must refuse overlapping tasks).
      delta and kappa are affine-invariant; the whitening sets sigma2 and the shrinkage target.
    """
    m = len(sig.tasks)
    base = {"form": form}
    if not shared_space:
        # adapted-space signatures: task i's clusters live in h_i's space, and D's moments would
        # be needed in every h_i, i.e. old tasks' data under new backbones, which is gone
        return {**base, "clusters": [], "certified_fraction": None,
                "note": "not applicable: signatures in per-task adapted spaces"}
    if m < 2:
        return {**base, "clusters": [], "certified_fraction": None,
                "note": "not applicable: needs at least two tasks"}
    if any(c.basis is not None for c in sig.tasks) or any(c.point_cov is None for c in sig.tasks):
        # per-task PCA spaces differ, and a reloaded model has no cluster moments
        return {**base, "clusters": [], "certified_fraction": None,
                "note": "not applicable: needs cluster moments in one shared space"}
    taus = [len(c.point_mean) for c in sig.tasks]
    N = (m - 1) * sum(taus) + 1
    d = sig.tasks[0].point_mean.shape[1]
    if form == "per-task":
        terms = _per_task_terms(sig)
    elif form == "signature":
        terms = _signature_terms(sig)
    else:
        raise ValueError(f"unknown certificate form {form!r}")
    L = math.log(N / epsilon)
    T2 = math.log((N / epsilon) * (math.sqrt(1 + 4 * d / L) + 1))
    clusters = []
    for entry in terms:
        kappa, sigma2 = entry["kappa"], entry["sigma2"]
        M = 3 * d * sigma2 - kappa
        disc = M * M - 24 * d * sigma2 * kappa
        if disc < 0:
            entry.update(threshold=None, certified=None, status="not applicable")
        else:
            T1 = 0.25 * (M + math.sqrt(disc)) - kappa
            threshold = 2.0 / d * max(T1, T2)
            entry.update(threshold=threshold, certified=bool(entry["delta"] > threshold),
                         status="pass" if entry["delta"] > threshold else "fail")
        clusters.append(entry)
    judged = [c for c in clusters if c["certified"] is not None]
    fraction = (sum(c["certified"] for c in judged) / len(judged)) if judged else None
    return {**base, "clusters": clusters, "certified_fraction": fraction,
            "not_applicable": len(clusters) - len(judged)}


def _signature_terms(sig: TaskSignatures) -> list[dict]:
    """delta, kappa, sigma2 per cluster with the signature's own Gaussians in raw coordinates
    (the ``"signature"`` form)."""
    m = len(sig.tasks)
    taus = [len(c.means) for c in sig.tasks]
    shared = all(c.kind == "shared" for c in sig.tasks)
    if shared:
        # one precision P = L L^T for every cluster: tr(P C) = ||F L||^2 (C = F^T F) and the
        # Mahalanobis terms are distances between whitened means; P itself is never formed
        chol, _ = sig.shared_precision()
        whitened = np.concatenate([c.means for c in sig.tasks]) @ chol
        owner = np.concatenate([np.full(n, k) for k, n in enumerate(taus)])
    else:
        comps = [_cluster_params(sig, k) for k in range(m)]
    out = []
    for t in range(m):
        pmeans, pcovs = sig.tasks[t].point_mean, sig.tasks[t].point_cov
        d = pmeans.shape[1]
        for s in range(len(pmeans)):
            mt, ct = pmeans[s], pcovs[s]
            if shared:
                CL = ct.astype(np.float64) @ chol
                trace = float((CL ** 2).sum() if ct.shape[0] != ct.shape[1]
                              else (CL * chol).sum())
                quad = ((whitened[owner != t] - mt @ chol) ** 2).sum(1)
                deltas, kappas = list((trace + quad) / d - 1), [0.0]  # one log det for all
            else:
                deltas, kappas = _separations(comps, t, s, mt, ct)
            out.append({"task": t, "cluster": s, "delta": float(min(deltas)),
                        "kappa": float(min(kappas)), "sigma2": float(_cov_diag(ct).max())})
    return out


def _oas(trace: float, frob2: float, n: float, d: int) -> float:
    """Oracle Approximating Shrinkage intensity (Chen et al. 2010; scikit-learn's ``oas``) of an
    empirical covariance S of n points from tr(S) and ||S||_F^2 alone."""
    mu = trace / d
    alpha = frob2 / d ** 2
    num = alpha + mu ** 2
    den = (n + 1) * (alpha - mu ** 2 / d)
    return 1.0 if den <= 0 else float(min(num / den, 1.0))


def _pooled_precision(sig: TaskSignatures) -> np.ndarray:
    """Cholesky L of the pooled within-cluster precision (Sigma_pool^-1 = L L^T): the shared
    precision of class-Gaussian signatures; otherwise the count-weighted mean of the cluster
    covariances, OAS-shrunk, + reg_covar I."""
    if all(c.kind == "shared" for c in sig.tasks) and (sig.stats is not None
                                                       or sig._shared is not None):
        return sig.shared_precision()[0]
    d = sig.tasks[0].point_mean.shape[1]
    pooled, total = np.zeros((d, d)), 0.0
    for comp in sig.tasks:
        for s, cov in enumerate(comp.point_cov):
            n = _count(comp, s)
            C = cov.astype(np.float64)
            pooled += n * (C.T @ C if C.shape[0] != C.shape[1] else C)
            total += n
    pooled /= total
    rho = _oas(float(np.trace(pooled)), float((pooled ** 2).sum()), total, d)
    mu = float(np.trace(pooled)) / d
    pooled *= 1 - rho
    pooled.flat[:: d + 1] += rho * mu + sig.o.reg_covar
    return _chol_precision(pooled, overwrite=True)[0]


def _count(comp: Components, s: int) -> float:
    """Points of cluster s: stored, else the rows of its factor, else (a d x d moment of a
    session saved before counts were kept) d."""
    if comp.point_count is not None:
        return float(comp.point_count[s])
    return float(comp.point_cov[s].shape[0])


def _per_task_terms(sig: TaskSignatures) -> list[dict]:
    """delta, kappa, sigma2 per cluster with per-cluster Gaussians in whitened coordinates (the
    ``"per-task"`` form).

    In coordinates z = x L (L L^T = pooled precision) cluster c has mean m_c and empirical
    covariance C_c; its Gaussian is Sigma_c = a_c I + b_c C_c with b_c = 1 - rho_c and
    a_c = (rho_c + 1e-6) tr(C_c) / d, rho_c the OAS intensity. A cluster stored as an n x d
    factor (n < d; C = Z^T Z) is inverted by Woodbury,
    Sigma^-1 = (I - Z^T (a/b I + Z Z^T)^-1 Z) / a, so only n x n systems and the Gram matrix
    rows of the factors are needed (one product per cluster against all factors, not one per
    pair of clusters, and never the whole N x N Gram matrix); a d x d moment is inverted
    directly."""
    L = _pooled_precision(sig)
    d = L.shape[0]
    owner, index, counts, means, factors, mats = [], [], [], [], [], []
    for t, comp in enumerate(sig.tasks):
        for s, cov in enumerate(comp.point_cov):
            owner.append(t)
            index.append(s)
            counts.append(_count(comp, s))
            means.append(comp.point_mean[s].astype(np.float64) @ L)
            C = cov.astype(np.float64)
            factor = C.shape[0] != C.shape[1]
            factors.append(C @ L if factor else None)
            mats.append(None if factor else L.T @ C @ L)
    K = len(owner)
    means = np.stack(means)
    owner = np.asarray(owner)
    # every factor stacked: rows[c] are cluster c's rows of Z_all
    sizes = [0 if Z is None else len(Z) for Z in factors]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows = [slice(offsets[c], offsets[c + 1]) for c in range(K)]
    has_factor = [Z is not None for Z in factors]
    Z_all = np.concatenate([Z for Z in factors if Z is not None]) if any(has_factor) else None
    zmeans = Z_all @ means.T if Z_all is not None else None  # Z_c m_e for every c, e
    stats = []
    for c in range(K):
        if has_factor[c]:
            G = factors[c] @ factors[c].T
            diag = (factors[c] ** 2).sum(0)
            trace, frob2 = float(np.trace(G)), float((G ** 2).sum())
        else:
            C = mats[c]
            diag = np.diag(C).copy()
            trace, frob2 = float(np.trace(C)), float((C ** 2).sum())
        rho = _oas(trace, frob2, counts[c], d)
        mu = max(trace / d, 1e-300)
        a, b = (rho + 1e-6) * mu, 1.0 - rho
        entry = {"trace": trace, "sigma2": float(diag.max()), "a": a, "rho": rho,
                 "prec": None, "inner": None}
        if has_factor[c]:
            # log det(a I_d + b Z^T Z) = d log a + log det(I_n + (b/a) Z Z^T)
            entry["logdet"] = d * math.log(a)
            if b > 0:
                inner = G + (a / b) * np.eye(len(G))
                entry["inner"] = cho_factor(inner, lower=True, check_finite=False)
                entry["logdet"] += 2.0 * float(np.log(np.diag(entry["inner"][0])).sum()) \
                    - len(G) * math.log(a / b)
        else:
            Sigma = b * mats[c]
            Sigma.flat[:: d + 1] += a
            chol, entry["logdet"] = _chol_precision(Sigma, overwrite=True)
            entry["prec"] = chol @ chol.T
        stats.append(entry)

    traces = np.empty((K, K))  # traces[u, c] = tr(Sigma_u^-1 C_c)
    quads = np.empty((K, K))  # quads[u, c] = (m_c - m_u)^T Sigma_u^-1 (m_c - m_u)
    base = np.array([st["trace"] for st in stats])
    for u in range(K):
        su = stats[u]
        diff = means - means[u]
        if su["prec"] is not None:
            P = su["prec"]
            for c in range(K):
                traces[u, c] = (float(((factors[c] @ P) * factors[c]).sum()) if has_factor[c]
                                else float((P * mats[c]).sum()))
            quads[u] = ((diff @ P) * diff).sum(1)
            continue
        quads[u] = (diff ** 2).sum(1)
        traces[u] = base
        if su["inner"] is not None:
            # Woodbury corrections for every cluster at once: one solve against the Gram row
            cross = factors[u] @ Z_all.T  # (n_u, N_all): Z_u Z_c^T side by side
            solved = cho_solve(su["inner"], np.concatenate([cross, zmeans[rows[u]]], 1),
                               check_finite=False)
            per_row = (solved[:, : cross.shape[1]] * cross).sum(0)
            for c in range(K):
                if has_factor[c]:
                    traces[u, c] -= per_row[rows[c]].sum()
                else:
                    Zu = factors[u]
                    traces[u, c] -= float(np.trace(cho_solve(su["inner"], Zu @ mats[c] @ Zu.T,
                                                             check_finite=False)))
            w = zmeans[rows[u]] - zmeans[rows[u], u][:, None]  # Z_u (m_c - m_u) per column c
            sw = solved[:, cross.shape[1]:] - solved[:, cross.shape[1] + u][:, None]
            quads[u] -= (sw * w).sum(0)
        traces[u] /= su["a"]
        quads[u] /= su["a"]

    logdets = np.array([st["logdet"] for st in stats])
    out = []
    for c in range(K):
        other = owner != owner[c]
        deltas = (traces[other, c] + quads[other, c]) / d - 1
        out.append({"task": int(owner[c]), "cluster": int(index[c]),
                    "delta": float(deltas.min()), "kappa": float((logdets[other]
                                                                  - logdets[c]).min()),
                    "sigma2": stats[c]["sigma2"], "shrinkage": stats[c]["rho"]})
    return out


def _separations(comps: list, t: int, s: int, mt: np.ndarray, ct: np.ndarray
                 ) -> tuple[list[float], list[float]]:
    """delta terms and kappas of cluster (t, s) against every cluster of the other tasks."""
    d = mt.shape[0]
    logdet_ts = comps[t][2][s]
    deltas, kappas = [], []
    traces: dict[int, float] = {}  # tr(P C) per precision matrix, computed once each
    for i, (means_i, precs_i, logdets_i, _, _) in enumerate(comps):
        if i == t:
            continue
        for u in range(len(means_i)):
            P = precs_i[u]
            diff = mt - means_i[u]
            if id(P) not in traces:
                traces[id(P)] = _trace_with(P, ct)
            deltas.append((traces[id(P)] + diff @ P @ diff) / d - 1)
            kappas.append(logdets_i[u] - logdet_ts)
    return deltas, kappas


def _cluster_params(sig: TaskSignatures, k: int):
    """Means, precision matrices, log-dets and point moments of task k's clusters in the space
    its Gaussians live in (the PCA space for lowrank signatures)."""
    comp = sig.tasks[k]
    d = comp.means.shape[1]
    if comp.kind == "shared":
        L, logdet = sig.shared_precision()
        if sig._shared_prec is None:
            sig._shared_prec = L @ L.T
        precs = [sig._shared_prec] * len(comp.means)
        logdets = [logdet] * len(comp.means)
    elif comp.kind == "full":
        if comp._prec is None:  # d^3 per component: computed once per run
            comp._prec = [L @ L.T for L in comp.prec_chol]
        precs = comp._prec
        logdets = list(comp.logdet)
    elif comp.kind == "diag":
        precs = [np.diag(1.0 / v) for v in comp.var]
        logdets = list(comp.logdet)
    else:  # iso
        precs = [np.eye(d)] * len(comp.means)
        logdets = [0.0] * len(comp.means)
    return comp.means, precs, logdets, comp.point_mean, comp.point_cov
