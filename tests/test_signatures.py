"""Task signatures, likelihood retrieval and the retrieval certificate (proteus.signatures)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from proteus.signatures import (Components, SignatureOptions, TaskSignatures, certificate,
                                retrieve)

T, C, D, N = 4, 2, 16, 100  # tasks, classes per task, dimension, points per class


pytestmark = pytest.mark.usefixtures("one_thread")


def make_tasks(separated: bool = True, noise_seed: int = 1, n: int = N):
    """Embeddings, labels and task ids of T tasks x C classes in R^D, unit noise.

    Separated: every task has its own centre far away (norm ~16) and its classes sit around it;
    overlapping: every class of every task has the same mean.
    """
    means_rng = np.random.default_rng(0)
    noise_rng = np.random.default_rng(noise_seed)
    xs, ys, ts = [], [], []
    for t in range(T):
        centre = means_rng.normal(size=D) * 4.0
        for c in range(C):
            mean = centre + means_rng.normal(size=D) * 1.5 if separated else np.full(D, 3.0)
            xs.append(mean + noise_rng.normal(size=(n, D)))
            ys.append(np.full(n, t * C + c))
            ts.append(np.full(n, t))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ts)


def fit(options: SignatureOptions, separated: bool = True) -> TaskSignatures:
    x, y, t = make_tasks(separated)
    sig = TaskSignatures(options, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn convergence warnings on tiny fits
        for k in range(T):
            comp = sig.add_task(x[t == k], y[t == k])
            assert comp is sig.tasks[k]
    return sig


KINDS = {
    "class-gaussian": dict(kind="class-gaussian"),
    "dpgmm-full": dict(kind="dpgmm", covariance="full", n_components=3, max_iter=100),
    "dpgmm-diag": dict(kind="dpgmm", covariance="diag", n_components=3, max_iter=100),
    "dpgmm-lowrank": dict(kind="dpgmm", covariance="lowrank", pca_dim=3, n_components=3,
                          max_iter=100),
    "kmeans": dict(kind="kmeans", kmeans_k=2),
    "gaussian": dict(kind="gaussian"),
}


@pytest.fixture(scope="module")
def separated():
    return {name: fit(SignatureOptions(**kw)) for name, kw in KINDS.items()}


@pytest.fixture(scope="module")
def test_points():
    return make_tasks(True, noise_seed=2)  # same means, fresh noise


@pytest.mark.parametrize("name", list(KINDS))
def test_retrieval_of_well_separated_tasks(separated, test_points, name):
    sig = separated[name]
    x, _, t = test_points
    scores = sig.scores(x)
    assert scores.shape == (len(x), T)
    assert np.isfinite(scores).all()
    for k in range(T):
        assert np.array_equal(scores[:, k], sig.task_scores(x, k))
    acc = float((retrieve(scores) == t).mean())
    assert acc >= 0.98, (name, acc)
    assert np.array_equal(retrieve(scores, "sample"), scores.argmax(1))


def test_component_structure(separated):
    cg = separated["class-gaussian"]
    for k, comp in enumerate(cg.tasks):
        assert comp.kind == "shared"
        assert comp.means.shape == (C, D)
        assert list(comp.classes) == [k * C, k * C + 1]
    assert cg.stats.total == T * C * N
    assert all(c.means.shape == (2, D) and c.kind == "iso" for c in separated["kmeans"].tasks)
    assert all(c.means.shape == (1, D) for c in separated["gaussian"].tasks)
    low = separated["dpgmm-lowrank"]
    for comp in low.tasks:
        assert comp.basis.shape == (D, 3) and comp.means.shape[1] == 3
        assert comp.resid_var > 0
        assert np.allclose(comp.basis.T @ comp.basis, np.eye(3), atol=1e-8)
    for name in ("dpgmm-full", "dpgmm-diag", "dpgmm-lowrank"):
        assert all(1 <= len(c.means) <= 3 for c in separated[name].tasks), name


def _hand_class_gaussian(sig, x):
    """(N, T) max over task k's classes of log N(x; mu_c, Sigma_shared), computed by hand."""
    L, logdet = sig.shared_precision()
    cov = np.linalg.inv(L @ L.T)
    assert math.isclose(np.linalg.slogdet(cov)[1], logdet, rel_tol=1e-6)
    z = sig.prepare(x)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0)
    out = []
    for k in range(T):
        ll = []
        for mu in sig.tasks[k].means:
            diff = z - mu
            maha = np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
            ll.append(-0.5 * (maha + logdet + D * math.log(2 * math.pi)))
        out.append(np.max(ll, axis=0))
    return np.stack(out, 1)


def test_class_gaussian_scores_match_gaussian_likelihoods_up_to_a_constant(separated,
                                                                           test_points):
    """What retrieval depends on: score differences between tasks are log-likelihood ratios."""
    sig = separated["class-gaussian"]
    x = test_points[0][:7]
    got, want = sig.scores(x), _hand_class_gaussian(sig, x)
    assert np.allclose(got - got[:, :1], want - want[:, :1], rtol=1e-6, atol=1e-6)


def test_class_gaussian_scores_are_gaussian_log_likelihoods(separated, test_points):
    sig = separated["class-gaussian"]
    x = test_points[0][:7]
    assert np.allclose(sig.scores(x), _hand_class_gaussian(sig, x), rtol=1e-6, atol=1e-6)


def test_certificate_separated_vs_overlapping(separated, test_points):
    cert = certificate(separated["class-gaussian"])
    assert len(cert["clusters"]) == T * C
    assert cert["not_applicable"] == 0
    assert cert["certified_fraction"] >= 0.9
    for c in cert["clusters"]:
        assert c["status"] in ("pass", "fail")
        assert c["certified"] == (c["delta"] > c["threshold"])

    overlap = fit(SignatureOptions(kind="class-gaussian"), separated=False)
    x, _, t = make_tasks(False, noise_seed=2)
    acc = float((retrieve(overlap.scores(x)) == t).mean())
    assert acc < 0.45  # chance is 1/T = 0.25
    ocert = certificate(overlap)
    assert ocert["certified_fraction"] is not None
    assert ocert["certified_fraction"] < cert["certified_fraction"]
    assert ocert["certified_fraction"] == 0.0
    assert max(c["delta"] for c in ocert["clusters"]) < min(c["delta"] for c in cert["clusters"])


def test_certificate_needs_two_tasks_and_one_space(separated):
    one = TaskSignatures(SignatureOptions())
    x, y, t = make_tasks()
    one.add_task(x[t == 0], y[t == 0])
    single = certificate(one)
    assert single["certified_fraction"] is None and "not applicable" in single["note"]
    low = certificate(separated["dpgmm-lowrank"])  # per-task PCA spaces differ
    assert low["certified_fraction"] is None and "not applicable" in low["note"]


def _full(mean, cov, point_cov) -> Components:
    L = np.linalg.inv(np.linalg.cholesky(cov)).T
    return Components(means=np.asarray(mean, float)[None], kind="full", prec_chol=L[None],
                      logdet=np.array([np.linalg.slogdet(cov)[1]]),
                      point_mean=np.asarray(mean, float)[None], point_cov=point_cov[None])


def test_negative_discriminant_is_not_applicable():
    """kappa = 5, d * sigma2 = 1: M^2 - 24 d sigma2 kappa = 4 - 120 < 0 for task 0's cluster
    (the signature's own covariances: the ``"signature"`` form; the per-task form's guard is
    tested in test_certificate.py)."""
    d = 2
    sig = TaskSignatures(SignatureOptions(kind="gaussian"))
    sig.tasks = [_full([0.0, 0.0], np.eye(d), 0.5 * np.eye(d)),
                 _full([3.0, 0.0], math.exp(2.5) * np.eye(d), 0.5 * np.eye(d))]
    cert = certificate(sig, form="signature")
    by_task = {c["task"]: c for c in cert["clusters"]}
    assert math.isclose(by_task[0]["kappa"], 5.0, rel_tol=1e-9)
    assert by_task[0]["status"] == "not applicable"
    assert by_task[0]["certified"] is None and by_task[0]["threshold"] is None
    assert by_task[1]["status"] in ("pass", "fail")
    assert cert["not_applicable"] == 1
    assert cert["certified_fraction"] in (0.0, 1.0)  # judged on task 1's cluster alone


def test_batch_retrieval_gives_one_task_per_batch(separated, test_points):
    scores = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    out = retrieve(scores, "batch")
    assert out.tolist() == [1, 1, 1]  # highest mean score, even for the row that prefers 0
    x, _, t = test_points
    sig = separated["class-gaussian"]
    for k in range(T):
        batch = retrieve(sig.scores(x[t == k][:10]), "batch")
        assert batch.tolist() == [k] * 10


@pytest.mark.parametrize("name", list(KINDS))
def test_state_round_trip(separated, test_points, name, tmp_path):
    from safetensors.torch import load_file, save_file

    sig = separated[name]
    tensors, meta = sig.state()
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "sig.safetensors")
    fresh = TaskSignatures(SignatureOptions(**KINDS[name]))
    fresh.load_state(load_file(tmp_path / "sig.safetensors"), meta)
    x = test_points[0]
    assert len(fresh.tasks) == T
    # equal up to rounding: a reloaded matrix may be laid out differently in memory
    np.testing.assert_allclose(fresh.scores(x), sig.scores(x), rtol=1e-12, atol=1e-12)
    assert np.array_equal(retrieve(fresh.scores(x)), retrieve(sig.scores(x)))
    # a reloaded signature set keeps no cluster moments: the certificate says so, no crash
    assert certificate(fresh)["certified_fraction"] is None


def test_lowrank_scores_are_finite_and_retrieve():
    opts = SignatureOptions(kind="dpgmm", covariance="lowrank", pca_dim=2, n_components=2,
                            max_iter=50, l2_normalize=False)
    sig = fit(opts)
    x, _, t = make_tasks(True, noise_seed=3)
    scores = sig.scores(x)
    assert np.isfinite(scores).all()
    assert float((retrieve(scores) == t).mean()) >= 0.95
    # a pca_dim above the dimension is clipped, not an error
    big = fit(SignatureOptions(kind="dpgmm", covariance="lowrank", pca_dim=64, n_components=2,
                               max_iter=50))
    assert all(c.basis.shape[1] == D - 1 for c in big.tasks)
    assert np.isfinite(big.scores(x)).all()


def test_one_product_class_gaussian_scores_equal_the_per_task_loop(separated, test_points):
    """``scores`` whitens once and scores every class of every task in one product; each
    column equals the per-task likelihood (``task_scores``)."""
    sig = separated["class-gaussian"]
    x = test_points[0]
    loop = np.stack([sig.task_scores(x, k) for k in range(len(sig.tasks))], 1)
    np.testing.assert_allclose(sig.scores(x), loop, rtol=1e-9, atol=1e-8)


def test_shared_certificate_equals_the_general_formula(separated):
    """With one shared precision the certificate whitens means instead of forming P; its deltas
    equal the general per-cluster formula tr(P C) + (m - mu)^T P (m - mu) (the ``"signature"``
    form, the signature's own Gaussians)."""
    from proteus.signatures import _cluster_params, _separations

    sig = separated["class-gaussian"]
    fast = certificate(sig, form="signature")["clusters"]
    comps = [_cluster_params(sig, k) for k in range(len(sig.tasks))]
    for entry in fast:
        t, s = entry["task"], entry["cluster"]
        comp = sig.tasks[t]
        deltas, kappas = _separations(comps, t, s, comp.point_mean[s], comp.point_cov[s])
        assert entry["delta"] == pytest.approx(min(deltas), rel=1e-9)
        assert entry["kappa"] == pytest.approx(min(kappas), abs=1e-12)


def test_linear_retrieval_is_the_likelihood_argmax_and_serves_without_the_precision(
        separated, test_points):
    """Shared-precision class Gaussians: retrieval as one (N, d) x (d, C) product and a bias
    equals the log-likelihood up to a per-sample constant, and a signature set holding only the
    serving tensors (no class statistics, no d x d matrix) retrieves the same tasks."""
    sig = separated["class-gaussian"]
    x = test_points[0]
    full, linear = sig.scores(x), sig.retrieval_scores(x)
    shift = full - linear
    np.testing.assert_allclose(shift, shift[:, :1].repeat(T, 1), rtol=1e-9, atol=1e-6)
    assert np.array_equal(retrieve(linear), retrieve(full))
    tensors, meta = sig.state()
    d = x.shape[1]
    serving = {k: v for k, v in tensors.items() if not k.startswith("sig.stats.")}
    assert not any(v.numel() >= d * d for v in serving.values())  # no d x d precision
    served = TaskSignatures(SignatureOptions(**KINDS["class-gaussian"]))
    served.load_state(serving, meta)
    assert np.array_equal(retrieve(served.retrieval_scores(x)), retrieve(full))
    assert np.array_equal(retrieve(served.scores(x)), retrieve(full))
