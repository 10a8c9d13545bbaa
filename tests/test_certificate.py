"""The retrieval certificate (METHOD.md section 6) in its two forms (proteus.signatures).

``"per-task"`` (the default): per-cluster Gaussians from the cluster moments, OAS-shrunk, in
coordinates whitened by the pooled covariance; ``"signature"``: the paper's check as stated, on
the signature's own Gaussians in raw coordinates (class Gaussians share one covariance, so
kappa = 0). Both keep T1, T2 and the threshold (2/d) max(T1, T2) of METHOD.md.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import proteus
from proteus.config import validate
from proteus.report import _certificate_md
from proteus.signatures import (SignatureOptions, TaskSignatures, _oas, _pooled_precision,
                                certificate)

from conftest import TINY_NUM_TASKS

pytestmark = pytest.mark.usefixtures("one_thread")

T, C, D = 3, 2, 8  # tasks, clusters (classes) per task, dimension


def gaussian_tasks(separation: float, d: int = D, n: int = 200, scales=None, seed: int = 0):
    """T tasks x C classes of unit-variance Gaussians in R^d; class j's mean is
    ``separation`` along axis j (mod d), so distinct classes are separation * sqrt(2) sigma apart
    (separation 0: every class of every task is one distribution). ``scales``: per class
    standard deviations instead of 1."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(T):
        xs, ys = [], []
        for c in range(C):
            j = t * C + c
            mean = separation * np.eye(d)[j % d]
            scale = 1.0 if scales is None else scales[j]
            xs.append(mean + scale * rng.normal(size=(n, d)))
            ys.append(np.full(n, j))
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out


def build(tasks, **options) -> TaskSignatures:
    opts = {"kind": "class-gaussian", "l2_normalize": False, **options}
    sig = TaskSignatures(SignatureOptions(**opts), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn convergence warnings on tiny fits
        for x, y in tasks:
            sig.add_task(x, y)
    return sig


def judged(cert: dict) -> list[dict]:
    return [c for c in cert["clusters"] if c["status"] != "not applicable"]


@pytest.mark.parametrize("kind", ["class-gaussian", "kmeans", "gaussian"])
def test_separated_tasks_are_certified(kind):
    """3 tasks x 2 Gaussian clusters in R^8, means 20 sigma apart: every cluster passes."""
    sig = build(gaussian_tasks(20.0), kind=kind, kmeans_k=C)
    cert = certificate(sig)
    assert cert["form"] == "per-task"
    n_clusters = T * (1 if kind == "gaussian" else C)
    assert len(cert["clusters"]) == n_clusters
    assert cert["not_applicable"] == 0
    assert cert["certified_fraction"] == 1.0
    for c in cert["clusters"]:
        assert c["status"] == "pass" and c["certified"] is True
        assert c["delta"] > c["threshold"] > 0
        assert 0.0 <= c["shrinkage"] <= 1.0
        # whitened coordinates: sigma2 is on the scale of delta's Mahalanobis units (~1 for a
        # cluster shaped like the pool), not the raw coordinates'
        assert 0.5 < c["sigma2"] < 3.0


@pytest.mark.parametrize("separation", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["class-gaussian", "kmeans", "gaussian"])
def test_overlapping_tasks_are_refused(kind, separation):
    """Same means (or 0.1 sigma apart): no cluster passes, and delta stays near 0."""
    sig = build(gaussian_tasks(separation), kind=kind, kmeans_k=C)
    cert = certificate(sig)
    assert cert["certified_fraction"] == 0.0
    assert not any(c["status"] == "pass" for c in cert["clusters"])
    assert max(c["delta"] for c in cert["clusters"]) < 0.5


def test_overlapping_tasks_are_refused_with_fewer_points_than_dimensions():
    """n < d: each cluster's sample covariance is singular, with a null space of its own. An
    unshrunk per-cluster Gaussian would score another sample of the same distribution as far
    away (large delta); OAS shrinkage keeps delta near 0, so nothing is certified."""
    sig = build(gaussian_tasks(0.0, d=48, n=20), l2_normalize=True)
    assert all(cov.shape == (20, 48) for comp in sig.tasks for cov in comp.point_cov)
    cert = certificate(sig)
    assert cert["certified_fraction"] == 0.0
    assert max(abs(c["delta"]) for c in cert["clusters"]) < 0.5


def test_shared_covariance_paper_form_has_kappa_zero():
    """The paper's check as stated, with class Gaussians sharing one covariance: every log det
    is the same, kappa = 0 for every cluster (the form recorded as "signature")."""
    for separation in (20.0, 0.0):
        sig = build(gaussian_tasks(separation))
        cert = certificate(sig, form="signature")
        assert cert["form"] == "signature"
        assert len(cert["clusters"]) == T * C
        assert all(c["kappa"] == 0.0 for c in cert["clusters"])
        assert "shrinkage" not in cert["clusters"][0]


def test_signature_form_fails_where_raw_coordinates_inflate_sigma2():
    """One Gaussian per task over two classes 20 sigma apart: in raw coordinates each task's
    per-coordinate variance is ~100 (the class offsets), so T1 = 1.5 d sigma2 puts the threshold
    far above delta; whitened by the pooled covariance the same clusters pass."""
    sig = build(gaussian_tasks(20.0), kind="gaussian")
    raw, whitened = certificate(sig, form="signature"), certificate(sig, form="per-task")
    assert raw["certified_fraction"] == 0.0 and whitened["certified_fraction"] == 1.0
    for r, w in zip(raw["clusters"], whitened["clusters"]):
        assert r["sigma2"] > 20 * w["sigma2"]
        assert r["threshold"] > r["delta"] and w["delta"] > w["threshold"]


def test_signature_form_delta_is_negative_for_retrievable_high_dimensional_classes():
    """The diagnosed failure of the shared form on L2-normalised features: with n < d points
    per class and a decaying spectrum, the regularised shared precision P scores a class's own
    points at tr(P C) / d well below 1, so delta = (tr(P C) + quad) / d - 1 is negative for
    classes that retrieval separates perfectly; the threshold is not the problem (it is tiny,
    sigma2 being measured in raw L2-normalised coordinates)."""
    rng = np.random.default_rng(0)
    d, n = 256, 60
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0] * np.arange(1, d + 1) ** -0.75
    centre = rng.normal(size=d) * 0.3
    tasks = []
    for t in range(T):
        means = [centre + 0.5 * rng.normal(size=d) @ basis.T for _ in range(C)]
        tasks.append((np.concatenate([m + rng.normal(size=(n, d)) @ basis.T for m in means]),
                      np.repeat(np.arange(C) + t * C, n)))
    sig = build(tasks, l2_normalize=True, reg_covar=1e-6)
    x = np.concatenate([x for x, _ in tasks])
    owner = np.repeat(np.arange(T), C * n)
    assert (sig.scores(x).argmax(1) == owner).mean() == 1.0
    cert = certificate(sig, form="signature")
    assert cert["certified_fraction"] == 0.0
    assert all(c["delta"] < 0 for c in cert["clusters"])
    assert all(c["threshold"] < 0.2 and c["sigma2"] < 0.01 for c in cert["clusters"])
    L = sig.shared_precision()[0]
    own = [float(((F.astype(np.float64) @ L) ** 2).sum()) / d
           for comp in sig.tasks for F in comp.point_cov]
    assert max(own) < 0.9
    # the per-task form sees these clusters apart (delta > 0) without certifying them
    per_task = certificate(sig)
    assert all(c["delta"] > 0 for c in per_task["clusters"])


def test_negative_discriminant_is_not_applicable():
    """Same means; class 0 has standard deviation 0.3, the others 1: its Gaussian's log det is
    far below the others' (kappa ~ 19) while its whitened sigma2 ~ 0.12, so
    M^2 - 24 d sigma2 kappa < 0: "not applicable" for that cluster, judged for the rest."""
    sig = build(gaussian_tasks(0.0, scales=[0.3, 1, 1, 1, 1, 1]))
    cert = certificate(sig)
    first = cert["clusters"][0]
    assert (first["task"], first["cluster"]) == (0, 0)
    d, kappa, sigma2 = D, first["kappa"], first["sigma2"]
    M = 3 * d * sigma2 - kappa
    assert M * M - 24 * d * sigma2 * kappa < 0
    assert first["status"] == "not applicable"
    assert first["certified"] is None and first["threshold"] is None
    assert cert["not_applicable"] == 1
    assert all(c["status"] == "fail" for c in cert["clusters"][1:])
    assert cert["certified_fraction"] == 0.0  # judged on the other five


@pytest.mark.parametrize("form", ["per-task", "signature"])
def test_not_applicable_guards_record_the_form(form):
    tasks = gaussian_tasks(20.0)
    one = build(tasks[:1])
    single = certificate(one, form=form)
    assert single["form"] == form
    assert single["certified_fraction"] is None and "not applicable" in single["note"]
    adapted = certificate(build(tasks), shared_space=False, form=form)
    assert adapted["form"] == form and adapted["certified_fraction"] is None
    # a reloaded signature set keeps no cluster moments
    sig = build(tasks)
    tensors, meta = sig.state()
    fresh = TaskSignatures(sig.o)
    fresh.load_state(tensors, meta)
    reloaded = certificate(fresh, form=form)
    assert reloaded["form"] == form and reloaded["certified_fraction"] is None
    assert "not applicable" in reloaded["note"]
    with pytest.raises(ValueError):
        certificate(sig, form="other")


def test_session_state_keeps_point_counts():
    sig = build(gaussian_tasks(20.0))
    tensors, _ = sig.session_state()
    fresh = TaskSignatures(sig.o)
    fresh.load_state(*sig.state())
    fresh.load_session_state(tensors)
    for a, b in zip(sig.tasks, fresh.tasks):
        assert a.point_count.tolist() == b.point_count.tolist() == [200, 200]
    assert certificate(fresh) == certificate(sig)


def _dense_per_task(sig: TaskSignatures) -> list[tuple[float, float, float]]:
    """(delta, kappa, sigma2) per cluster from dense d x d matrices and the formulas as
    written: whiten by the pooled precision, Sigma_c = (1 - rho) C + (rho + 1e-6) tr(C)/d I."""
    L = _pooled_precision(sig)
    d = L.shape[0]
    clusters = []
    for t, comp in enumerate(sig.tasks):
        for s, cov in enumerate(comp.point_cov):
            F = cov.astype(np.float64)
            C_ = F.T @ F if F.shape[0] != F.shape[1] else F
            Cw = L.T @ C_ @ L
            rho = _oas(np.trace(Cw), (Cw ** 2).sum(), comp.point_count[s], d)
            mu = np.trace(Cw) / d
            Sigma = (1 - rho) * Cw + (rho + 1e-6) * mu * np.eye(d)
            clusters.append((t, comp.point_mean[s] @ L, Cw, Sigma))
    out = []
    for t, mean, Cw, Sigma in clusters:
        deltas, kappas = [], []
        for i, mean_u, _, Sigma_u in clusters:
            if i == t:
                continue
            P = np.linalg.inv(Sigma_u)
            v = mean - mean_u
            deltas.append((np.trace(P @ Cw) + v @ P @ v) / d - 1)
            kappas.append(np.linalg.slogdet(Sigma_u)[1] - np.linalg.slogdet(Sigma)[1])
        out.append((min(deltas), min(kappas), float(np.diag(Cw).max())))
    return out


@pytest.mark.parametrize("d,n,kind", [(6, (50, 50), "class-gaussian"),
                                      (40, (20, 20), "class-gaussian"),
                                      (12, (8, 30), "class-gaussian"),
                                      (40, (20, 20), "kmeans"), (6, (50, 50), "gaussian")])
def test_per_task_form_equals_the_dense_formula(d, n, kind):
    """Woodbury for clusters stored as n x d factors (n < d), direct inverses for d x d moments,
    both kinds side by side (n = 8 and 30 in 12-d), pooled whitening from the shared precision
    or from the moments: all equal the formula."""
    rng = np.random.default_rng(1)
    tasks = []
    for t in range(T):
        x = np.concatenate([rng.normal(size=(k, d)) * rng.uniform(0.5, 2, d)
                            + rng.normal(size=d) for k in n])
        tasks.append((x, np.repeat([t * C, t * C + 1], n)))
    sig = build(tasks, kind=kind, kmeans_k=C)
    if n == (8, 30):
        assert [cov.shape[0] for cov in sig.tasks[0].point_cov] == [8, d]  # a factor, a matrix
    cert = certificate(sig)
    want = _dense_per_task(sig)
    assert len(want) == len(cert["clusters"])
    for c, (delta, kappa, sigma2) in zip(cert["clusters"], want):
        assert c["delta"] == pytest.approx(delta, rel=1e-6, abs=1e-8)
        assert c["kappa"] == pytest.approx(kappa, rel=1e-6, abs=1e-6)
        assert c["sigma2"] == pytest.approx(sigma2, rel=1e-9)


def test_certificate_markdown_names_the_form():
    sig = build(gaussian_tasks(20.0))
    for form in ("per-task", "signature"):
        text = " ".join(_certificate_md(certificate(sig, form=form)))
        assert f"`{form}`" in text and "Certified fraction" in text
    text = " ".join(_certificate_md(certificate(build(gaussian_tasks(20.0)[:1]))))
    assert "`per-task`" in text and "not applicable" in text


def test_proteus_run_records_the_certificate_form(tmp_path, make_tiny_config):
    """A tiny PROTEUS run (frozen backbone) writes per-task certificates with their form, the
    final one per cluster, and the plot; the option selects the paper's form."""
    learner = {"name": "proteus", "train_adapters": False, "proj_dim": 64,
               "certificate_form": "signature"}
    raw = make_tiny_config(tmp_path, name="cert", learner=learner)
    proteus.run(validate(raw))
    results = json.loads((tmp_path / "cert" / "results.json").read_text())
    per_task = results["extras"]["per_task"]
    assert len(per_task) == TINY_NUM_TASKS
    assert all(e["certificate"]["form"] == "signature" for e in per_task)
    final = results["certificate"]
    assert final["form"] == "signature" and len(final["clusters"]) == 2 * TINY_NUM_TASKS
    assert all(c["kappa"] == 0.0 for c in final["clusters"])
    assert (tmp_path / "cert" / "certificate_delta.png").is_file()
    assert "`signature`" in (tmp_path / "cert" / "report.md").read_text()


def test_default_proteus_certificate_is_per_task():
    from proteus.learners.proteus import ProteusOptions, ProteusPaperOptions

    assert ProteusOptions().certificate_form == "per-task"
    assert ProteusPaperOptions().certificate_form == "per-task"
    assert math.isfinite(float(ProteusOptions().signature.reg_covar))
