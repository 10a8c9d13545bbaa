"""The streaming shrinkage-LDA control equals scikit-learn's one-shot LDA on the same features."""

from __future__ import annotations

import numpy as np
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
