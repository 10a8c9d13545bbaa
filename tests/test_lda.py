"""The streaming shrinkage-LDA control equals scikit-learn's one-shot LDA on the same features."""

from __future__ import annotations

import numpy as np
import torch
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from conftest import assembled, tiny_config_dict
from proteus.data import stack
from proteus.learners import LearnerError


def _learned(tmp_path, **options):
    run = assembled(tiny_config_dict(tmp_path, learner={"name": "lda", **options},
                                     data=[{"name": "synthetic", "num_classes": 6,
                                            "samples_per_class": 40, "image_size": 16,
                                            "noise": 0.6, "seed": 1}]))
    for task in run.scenario.tasks:
        run.learner.learn_task(task, run.ctx)
    return run


@pytest.mark.parametrize("shrinkage", ["auto", 0.3])
def test_streamed_over_tasks_equals_sklearn_fitted_at_once(tmp_path, shrinkage):
    run = _learned(tmp_path, shrinkage=shrinkage)
    learner, ctx = run.learner, run.ctx
    train = stack([t.train for t in run.scenario.tasks])
    test = stack([t.test for t in run.scenario.tasks])
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)
    reference.fit(learner.features(train, ctx), train.labels)
    np.testing.assert_allclose(learner.coef, reference.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(learner.intercept, reference.intercept_, rtol=1e-6, atol=1e-8)
    ours = learner.predict(test, ctx).classes
    np.testing.assert_array_equal(ours, reference.predict(learner.features(test, ctx)))
    assert (ours == test.labels).mean() > 0.5  # and it classifies (chance is 1/6)


def test_features_are_the_embedding_where_no_stages_are_pooled(tmp_path):
    run = _learned(tmp_path, signature_stages=[])
    data = run.scenario.tasks[0].test
    np.testing.assert_allclose(run.learner.features(data, run.ctx), run.ctx.features(data))


def test_a_class_seen_again_is_refused(tmp_path):
    run = _learned(tmp_path)
    with pytest.raises(LearnerError, match="learned before"):
        run.learner.learn_task(run.scenario.tasks[0], run.ctx)


def test_constant_features_are_shrunk_as_sklearn_does(tmp_path, monkeypatch):
    """Dead channels (constant within a class) keep scikit-learn's scale of 1 in its
    standardised Ledoit-Wolf shrinkage; the streamed covariance must follow it there too."""
    run = assembled(tiny_config_dict(tmp_path, learner={"name": "lda"}))
    train = stack([t.train for t in run.scenario.tasks])
    test = stack([t.test for t in run.scenario.tasks])
    n_ids = int(max(train.ids.max(), test.ids.max())) + 1
    rng = np.random.default_rng(0)
    all_labels = np.zeros(n_ids, dtype=np.int64)
    all_labels[train.ids], all_labels[test.ids] = train.labels, test.labels
    table = rng.normal(size=(n_ids, 12)) + all_labels[:, None] * 0.7
    table[:, :3] = 0.0  # constant in every class
    table[all_labels % 2 == 0, 3] = 1.5  # constant in some classes only
    monkeypatch.setattr(run.learner, "features", lambda data, ctx: table[data.ids])
    for task in run.scenario.tasks:
        run.learner.learn_task(task, run.ctx)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    reference.fit(table[train.ids], train.labels)
    np.testing.assert_allclose(run.learner.coef, reference.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(run.learner.predict(test, run.ctx).classes,
                                  reference.predict(table[test.ids]))


def test_aper_adapts_on_the_first_task_only_then_streams_lda_on_adapted_features(tmp_path):
    run = assembled(tiny_config_dict(tmp_path, learner={"name": "aper", "epochs": 2,
                                                        "scale": 1.0}))
    learner, ctx, tasks = run.learner, run.ctx, run.scenario.tasks
    learner.learn_task(tasks[0], ctx)
    units = {k: v.clone() for k, v in learner.pool.state()[0].items()}
    assert any(v.abs().sum() > 0 for k, v in units.items() if k.endswith(".B"))  # they moved
    for task in tasks[1:]:
        learner.learn_task(task, ctx)
    after = learner.pool.state()[0]
    assert all(torch.equal(units[k], after[k]) for k in units)  # frozen after task 0
    # the head is lda's closed form on the adapted embedding (task 0's units)
    train = stack([t.train for t in tasks])
    feats = learner.features(train, ctx)
    frozen = ctx.features(train)
    assert not np.allclose(feats, frozen)  # adapted, not the frozen embedding
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(feats,
                                                                                train.labels)
    np.testing.assert_allclose(learner.coef, reference.coef_, rtol=1e-5, atol=1e-7)


def test_fecam_is_the_mahalanobis_rule_of_its_shrunk_per_class_covariances(tmp_path):
    run = assembled(tiny_config_dict(tmp_path, learner={"name": "fecam"},
                                     data=[{"name": "synthetic", "num_classes": 6,
                                            "samples_per_class": 40, "image_size": 16,
                                            "noise": 0.6, "seed": 1}]))
    learner, ctx, tasks = run.learner, run.ctx, run.scenario.tasks
    for task in tasks:
        learner.learn_task(task, ctx)
    train, test = stack([t.train for t in tasks]), stack([t.test for t in tasks])
    x, q = ctx.features(train).astype(np.float64), ctx.features(test).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    want = np.zeros((len(q), 6))
    for c in range(6):
        xc = x[train.labels == c]
        cov = np.cov(xc, rowvar=False)
        d = len(cov)
        shrunk = cov + np.eye(d) * np.diag(cov).mean() + (1 - np.eye(d)) * (
            (cov.sum() - np.trace(cov)) / (d * d - d))
        shrunk /= np.sqrt(np.outer(np.diag(shrunk), np.diag(shrunk)))
        diff = q - xc.mean(0)
        want[:, c] = -np.einsum("nd,de,ne->n", diff, np.linalg.inv(shrunk), diff)
    # FeCAM's off-diagonal shrinkage leaves these strongly correlated features ill-conditioned:
    # two exact computations agree to rounding times that condition number
    got = learner.scores(test, ctx)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert (learner.predict(test, ctx).classes == test.labels).mean() > 1 / 6  # above chance
