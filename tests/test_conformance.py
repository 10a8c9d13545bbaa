"""Conformance of every registered learner (like scikit-learn's ``check_estimator``):
learn 2 tasks; save; load; identical predictions; learn a third task after loading, identical to
having never saved. A learner that cannot grow after loading must refuse clearly.

Registering a learner gets it tested here: the list comes from the registry.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import torch

from conftest import tiny_config_dict
from proteus.assemble import assemble, make_context
from proteus.config import validate
from proteus.data import stack
from proteus.engine import save_spec
from proteus.learners import LEARNERS, LearnerError
from proteus.model import load_model
from proteus.storage import save_model


def _raw(root, name: str, **options) -> dict:
    learner = {"name": name, **options}
    fields = LEARNERS.get(name).options.model_fields
    if "epochs" in fields:
        learner["epochs"] = 1
    if "rank" in fields:
        learner["rank"] = 2
    if "proj_dim" in LEARNERS.get(name).options.model_fields:
        learner["proj_dim"] = 128
    return tiny_config_dict(root, name=name, learner=learner)


def _predict(learner, ctx, data):
    pred = learner.predict(data, ctx)
    return pred.classes, None if pred.tasks is None else np.asarray(pred.tasks)


def _state(learner) -> dict[str, torch.Tensor]:
    return learner.state()[0]


@pytest.mark.parametrize("name, options", [
    *[pytest.param(name, {}, id=name) for name in LEARNERS.names()],
    # proteus's optional per-task statistics (one LDA per task space)
    pytest.param("proteus", {"adapted_lda_weight": 1.0}, id="proteus-adapted-lda")])
def test_learner_round_trips_and_grows_after_loading(tmp_path, one_thread, name, options):
    run = assemble(validate(_raw(tmp_path / "runs", name, **options)))
    tasks = run.scenario.tasks
    assert len(tasks) >= 3
    test = stack([t.test for t in tasks])
    for task in tasks[:2]:
        run.learner.learn_task(task, run.ctx)
    before = _predict(run.learner, run.ctx, test)

    path = tmp_path / "model"
    save_model(path, learner=run.learner, spec=save_spec(run), fresh=True)
    model = load_model(path, device="cpu")
    ctx = make_context(model.learner, seed=run.config.seed, batch_size=64, progress=False,
                       num_tasks=len(tasks))
    after = _predict(model.learner, ctx, test)
    np.testing.assert_array_equal(after[0], before[0])
    if before[1] is not None:
        np.testing.assert_array_equal(after[1], before[1])

    if not model.learner.capabilities.grows_after_load:
        with pytest.raises(LearnerError, match="cannot learn"):
            model.learner.learn_task(tasks[2], ctx)
        return
    run.learner.learn_task(tasks[2], run.ctx)
    model.learner.learn_task(tasks[2], ctx)
    never_saved, grown = _predict(run.learner, run.ctx, test), _predict(model.learner, ctx, test)
    np.testing.assert_array_equal(grown[0], never_saved[0])
    if never_saved[1] is not None:
        np.testing.assert_array_equal(grown[1], never_saved[1])
    a, b = _state(run.learner), _state(model.learner)
    assert sorted(a) == sorted(b)
    compact = tuple(run.learner.compact_keys)
    for key in a:
        # a compact model keeps some float64 statistics as float32: equal to float32 precision
        loose = any(fnmatch.fnmatchcase(key, p) for p in compact)
        torch.testing.assert_close(b[key].cpu(), a[key].cpu(), rtol=1e-4 if loose else 1e-6,
                                   atol=1e-6 if loose else 1e-8,
                                   msg=lambda m, key=key: f"{key}: {m}")
