"""The PROTEUS learner end to end: tiny random ViT, synthetic images, 6 classes in 3 tasks.

Five short runs are shared by the module (about 2 s each on a CPU): the default learner (model
saved), oracle and no retrieval, signatures in the adapted space, and no transfer (alpha 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import proteus
from proteus.config import validate
from proteus.data import stack

from conftest import TINY_NUM_TASKS, assembled, save_driven, tiny_config_dict

T = TINY_NUM_TASKS
LEARNER = {"name": "proteus", "rank": 2, "epochs": 1, "proj_dim": 256, "batch_size": 16}
VARIANTS = {
    "base": {},
    "oracle": {"retrieval": "oracle"},
    "none": {"retrieval": "none"},
    "adapted": {"signature_space": "adapted"},
    "alpha0": {"alpha": 0.0},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_tiny_config):
    root = tmp_path_factory.mktemp("proteus")
    out = {}
    for name, changes in VARIANTS.items():
        raw = make_tiny_config(root, name=name, learner={**LEARNER, **changes},
                               save_model=name == "base")
        returned = proteus.run(validate(raw))
        results = read_json(root / name / "results.json")
        assert returned["metrics"] == results["metrics"]
        out[name] = {"raw": raw, "dir": root / name, "results": results}
    return out


def _tests_per_task(results) -> list[int]:
    return [t["num_test"] for t in results["tasks"]]


def test_default_run_reports_retrieval(runs):
    results = runs["base"]["results"]
    assert results["learner"] == "proteus"
    acc = results["metrics"]["task_retrieval_accuracy"]
    assert isinstance(acc, float) and 0.5 < acc <= 1.0  # chance is 1/3
    confusion = np.asarray(results["retrieval_confusion"])
    assert confusion.shape == (T, T)
    n_test = _tests_per_task(results)
    assert confusion.sum(1).tolist() == n_test  # rows: true task
    assert np.trace(confusion) / confusion.sum() == pytest.approx(acc)
    assert len(results["retrieval_accuracy_seen"]) == T
    assert results["retrieval_accuracy_seen"][0] == 1.0  # one task: nothing to confuse
    assert results["retrieval_accuracy_seen"][-1] == pytest.approx(acc)
    assert results["parameters"]["trained_per_task"] > 0
    # the last-step metrics line carries the same retrieval accuracy
    lines = [json.loads(x) for x in (runs["base"]["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == T and lines[-1]["task_retrieval_accuracy"] == pytest.approx(acc)


def test_extras_hold_a_certificate_per_task(runs):
    per_task = runs["base"]["results"]["extras"]["per_task"]
    assert len(per_task) == T
    first = per_task[0]["certificate"]
    assert first["certified_fraction"] is None and "not applicable" in first["note"]
    # every step's full certificate is in metrics.jsonl; results.json keeps the summaries
    lines = [json.loads(line) for line in
             (runs["base"]["dir"] / "metrics.jsonl").read_text().splitlines()]
    for k in range(1, T):
        extras = per_task[k]
        clusters = lines[k]["extras"]["certificate"]["clusters"]
        status = [c["status"] for c in clusters]
        n = 2 * (k + 1)  # class-gaussian: one cluster per class, 2 classes per task
        assert len(clusters) == n
        assert sorted({c["task"] for c in clusters}) == list(range(k + 1))
        assert set(status) <= {"pass", "fail", "not applicable"}
        assert all(np.isfinite([c["delta"] for c in clusters]))
        frac = extras["certificate"]["certified_fraction"]
        assert "clusters" not in extras["certificate"]
        assert frac is None or 0.0 <= frac <= 1.0
        if frac is not None:
            assert frac == pytest.approx(status.count("pass")
                                         / (n - status.count("not applicable")))
    final = runs["base"]["results"]["certificate"]
    assert len(final["clusters"]) == 2 * T
    assert final["certified_fraction_per_task"] == [e["certificate"]["certified_fraction"]
                                                    for e in per_task]
    assert (runs["base"]["dir"] / "certificate_delta.png").is_file()
    for extras in per_task[1:]:
        assert extras["signature_components"] == 2
        assert extras["signature_bytes"] > 0
        assert extras["ridge_lambda"] > 0


def test_oracle_retrieval_is_exact(runs):
    results = runs["oracle"]["results"]
    assert results["metrics"]["task_retrieval_accuracy"] == 1.0
    assert results["retrieval_accuracy_seen"] == [1.0] * T
    confusion = np.asarray(results["retrieval_confusion"])
    assert np.array_equal(confusion, np.diag(_tests_per_task(results)))


def test_task_il_accuracy_is_the_oracle_runs_final_accuracy(runs):
    # given the true task, the default learner predicts exactly as with oracle retrieval
    base, oracle = runs["base"]["results"]["metrics"], runs["oracle"]["results"]["metrics"]
    assert base["task_il_accuracy"] == pytest.approx(oracle["final_accuracy"])
    assert base["task_il_accuracy"] >= base["final_accuracy"]
    assert oracle["task_il_accuracy"] == pytest.approx(oracle["final_accuracy"])


def test_no_retrieval_picks_the_last_task(runs):
    results = runs["none"]["results"]
    n_test = _tests_per_task(results)
    confusion = np.asarray(results["retrieval_confusion"])
    expected = np.zeros((T, T), dtype=int)
    expected[:, T - 1] = n_test
    assert np.array_equal(confusion, expected)
    seen = [n_test[k] / sum(n_test[: k + 1]) for k in range(T)]
    assert results["retrieval_accuracy_seen"] == pytest.approx(seen)
    assert results["metrics"]["task_retrieval_accuracy"] == pytest.approx(seen[-1])


@pytest.mark.parametrize("name", ["adapted", "alpha0"])
def test_ablations_run(runs, name):
    results = runs[name]["results"]
    learner_cfg = results["config"]["learner"]
    for key, value in VARIANTS[name].items():
        assert learner_cfg[key] == value
    assert len(results["accuracy_seen"]) == T
    acc = results["metrics"]["task_retrieval_accuracy"]
    assert acc is not None and 0.0 <= acc <= 1.0
    assert np.asarray(results["retrieval_confusion"]).sum() == sum(_tests_per_task(results))
    assert "certificate" in results["extras"]["per_task"][-1]
    assert not (runs[name]["dir"] / "model").exists()  # save_model: false


def test_every_task_reports_how_far_its_units_moved(runs):
    """Instrumentation (metrics.jsonl and results.json extras, plot in the report): the units
    move (a relative weight update and an embedding change above zero), the cross-entropy and
    each penalty are apart, and alpha 0 gives no transfer weight at all."""
    per_task = runs["base"]["results"]["extras"]["per_task"]
    for k, extras in enumerate(per_task):
        units = extras["units"]
        assert units["ce"] > 0
        (curve,) = extras["training_curves"]  # one fit per task: the units with their head
        assert len(curve["loss"]) == LEARNER["epochs"] and curve["ce"][-1] == units["ce"]
        assert units["delta_w_rel"]["max"] >= units["delta_w_rel"]["mean"] > 0
        assert len(units["delta_w_rel_per_target"]) > 0
        assert units["embedding_change"]["mean"] > 0
        # penalties act from the second task on, when there is a pool to be orthogonal to
        assert sorted(units["penalties"]) == ([] if k == 0 else ["orthogonality", "transfer"])
    assert per_task[0]["units"]["alpha_w_norm"]["max"] == 0.0  # task 0 has no pool
    assert per_task[-1]["units"]["alpha_w_norm"]["max"] > 0
    alpha0 = runs["alpha0"]["results"]["extras"]["per_task"]
    assert all(e["units"]["alpha_w_norm"]["max"] == 0.0 for e in alpha0)
    line = json.loads((runs["base"]["dir"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["extras"]["units"]["delta_w_rel"] == per_task[-1]["units"]["delta_w_rel"]
    assert (runs["base"]["dir"] / "units.png").stat().st_size > 0


def _scenario(raw: dict, manifest: Path | None = None):
    run = assembled(raw, manifest, backbone=False, learner=False)
    return run.config, run.scenario


def test_loaded_model_predicts_like_the_run(runs):
    run = runs["base"]
    _, scenario = _scenario(run["raw"], run["dir"] / "split_manifest.json")
    test = stack([t.test for t in scenario.tasks])
    true_task = np.concatenate([np.full(len(t.test), t.index) for t in scenario.tasks])
    model = proteus.load_model(run["dir"] / "model", device="cpu")
    out = model.predict(test.items)
    ids, tasks = np.asarray(out["class_ids"]), np.asarray(out["task_ids"])
    # the run's final evaluation, reproduced: per-task accuracy and the retrieval confusion
    acc = run["results"]["accuracy_matrix"]
    start = 0
    for task in scenario.tasks:
        n = len(task.test)
        got = float((ids[start:start + n] == task.test.labels).mean())
        assert got == pytest.approx(acc[task.index][T - 1]), task.index
        start += n
    confusion = np.zeros((T, T), dtype=int)
    np.add.at(confusion, (true_task, tasks), 1)
    assert confusion.tolist() == run["results"]["retrieval_confusion"]


@pytest.fixture(scope="module")
def driven(tmp_path_factory, make_tiny_config):
    """A learner driven task by task, with task 0's embeddings recorded right after task 0."""
    root = tmp_path_factory.mktemp("driven")
    raw = make_tiny_config(root, name="driven", learner=LEARNER)
    run = assembled(raw)
    config, scenario, learner, ctx = run.config, run.scenario, run.learner, run.ctx
    items = scenario.tasks[0].train.items
    learner.learn_task(scenario.tasks[0], ctx)
    after_task0 = learner._embed(items, 0, 64)
    for task in scenario.tasks[1:]:
        learner.learn_task(task, ctx)
    return {"config": config, "scenario": scenario, "learner": learner, "ctx": ctx,
            "items": items, "after_task0": after_task0, "root": root}


def test_task0_embeddings_never_change(driven):
    learner, items = driven["learner"], driven["items"]
    assert learner.tasks_learned == T and learner.pool.num_tasks == T
    now = learner._embed(items, 0, 64)
    assert np.array_equal(now, driven["after_task0"])
    # in another batch size too (row-wise computation) and without the training batches
    assert np.allclose(learner._embed(items, 0, 7), now, atol=1e-6)
    frozen = learner._embed(items, None, 64)
    assert not np.allclose(now, frozen, atol=1e-6)  # task 0's update is not empty
    assert not np.allclose(learner._embed(items, T - 1, 64), now, atol=1e-6)
    # the frozen features the signatures use are the pre-trained backbone's
    assert np.allclose(driven["ctx"].features(driven["scenario"].tasks[0].train), frozen,
                       atol=1e-5)


def test_save_load_predict_is_identical(driven):
    learner, ctx, config = driven["learner"], driven["ctx"], driven["config"]
    scenario = driven["scenario"]
    path = save_driven(driven["root"] / "model", learner, config, scenario)
    test = stack([t.test for t in scenario.tasks])
    before = learner.predict(test, ctx)
    model = proteus.load_model(path, device="cpu")
    out = model.predict(test.items)
    assert np.array_equal(np.asarray(out["class_ids"]), before.classes)
    assert np.array_equal(np.asarray(out["task_ids"]), before.tasks)
    # and the reloaded learner's stored backbones are the same per task
    items = driven["items"][:10]
    for k in range(T):
        assert np.allclose(model.learner._embed(items, k, 64), learner._embed(items, k, 64),
                           atol=1e-6), k


def test_class_decision_spans_the_class_gaussians_and_retrieve_then_classify(driven):
    """decision "class": weight 0 is the most likely class Gaussian over every class; one
    candidate task with an overwhelming weight is the paper's retrieve-then-classify; the
    default scores the classes of the two most likely tasks."""
    learner, ctx, scenario = driven["learner"], driven["ctx"], driven["scenario"]
    test = stack([t.test for t in scenario.tasks])
    base = learner.options

    def predict(**update):
        learner.options = base.model_copy(update=update)
        try:
            return learner.predict(test, ctx)
        finally:
            learner.options = base

    assert base.decision == "auto" and base.class_decision_holds()
    features, prefix = learner._signature_features(test, ctx, with_prefix=True)
    D = learner.signatures.class_scores(features, learner.num_classes)
    gaussians = predict(decision="class", decision_weight=0.0)
    assert np.array_equal(gaussians.classes, D.argmax(1))
    assert np.array_equal(gaussians.tasks, learner.class_task[D.argmax(1)])
    two_step = predict(decision="task")
    tasks = learner.infer_tasks(test, ctx, prefix, features)
    assert np.array_equal(two_step.tasks, tasks)
    assert np.array_equal(two_step.classes, learner._classify(test, ctx, tasks, prefix)[0])
    dominant = predict(decision="class", decision_top=1, decision_weight=1e9)
    assert np.array_equal(dominant.classes, two_step.classes)
    assert np.array_equal(dominant.tasks, two_step.tasks)
    # the default: the head's evidence over two candidate tasks, by hand
    default = learner.predict(test, ctx)
    best_task = np.stack([D[:, c].max(1) for c in learner.task_classes], 1)
    ranked = np.argsort(-best_task, axis=1, kind="stable")[:, :2]
    score = np.full_like(D, -np.inf)
    for j in range(2):
        logits = learner._head_logits(test, ctx, ranked[:, j], prefix)
        for i, k in enumerate(ranked[:, j]):
            cls = learner.task_classes[k]
            score[i, cls] = D[i, cls] + base.decision_weight * logits[i, cls]
    assert np.array_equal(default.classes, score.argmax(1))


def test_adapted_space_lda_is_exemplar_free_and_adds_to_the_class_decision(tmp_path):
    """adapted_lda_weight: space i's LDA equals scikit-learn's fitted on the training data of
    tasks i, i+1, ... under task i's units; each sample adds gamma x the LDA of its earliest
    candidate task's space to the default decision (benchmarks/pair_space.py's rule)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    gamma = 3.0
    noisy = [{"name": "synthetic", "num_classes": 6, "samples_per_class": 40, "image_size": 16,
              "noise": 0.6, "seed": 1}]  # where the candidates' tie is not always clear
    run = assembled(tiny_config_dict(tmp_path, data=noisy,
                                     learner={**LEARNER, "adapted_lda_weight": gamma}))
    learner, ctx, tasks = run.learner, run.ctx, run.scenario.tasks
    for task in tasks:
        learner.learn_task(task, ctx)
    assert len(learner.spaces) == T
    train = stack([t.train for t in tasks])
    test = stack([t.test for t in tasks])
    with torch.no_grad():
        prefix = learner._prefix(train.items, 64)
        reference = []
        for i in range(T):
            rows = learner.class_task[train.labels] >= i  # tasks i, i+1, ... only
            h = learner._embed(train.items, i, 64, prefix).astype(np.float64)
            lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
            reference.append(lda.fit(h[rows], train.labels[rows]))
            space = learner.spaces[i]
            coef = space.coef[lda.classes_]
            if len(coef) == 2:  # scikit-learn keeps one row for two classes: their difference
                coef = coef[1:] - coef[:1]
            np.testing.assert_allclose(coef, lda.coef_, rtol=1e-6, atol=1e-6)
            others = np.setdiff1d(np.arange(learner.num_classes), lda.classes_)
            assert np.isneginf(space.intercept[others]).all()

    o = learner.options
    features, prefix = learner._signature_features(test, ctx, with_prefix=True)
    D = learner.signatures.class_scores(features, learner.num_classes)
    best_task = np.stack([D[:, c].max(1) for c in learner.task_classes], 1)
    ranked = np.argsort(-best_task, axis=1, kind="stable")[:, :2]
    logits = [learner._head_logits(test, ctx, ranked[:, j], prefix) for j in range(2)]

    def by_hand(weight: float) -> np.ndarray:
        score = np.full_like(D, -np.inf)
        for n in range(len(test)):
            i = ranked[n].min()  # the earliest candidate: its space holds both tasks' classes
            h = learner._embed(test.items[n:n + 1], i, 64).astype(np.float64)
            E = dict(zip(reference[i].classes_, reference[i].decision_function(h)[0]))
            for j, k in enumerate(ranked[n]):
                for c in learner.task_classes[k]:
                    score[n, c] = D[n, c] + o.decision_weight * logits[j][n, c] + weight * E[c]
        return score.argmax(1)

    def predict(weight: float) -> np.ndarray:
        learner.options = o.model_copy(update={"adapted_lda_weight": weight})
        try:
            return learner.predict(test, ctx).classes
        finally:
            learner.options = o

    np.testing.assert_array_equal(learner.predict(test, ctx).classes, by_hand(gamma))
    # an overwhelming weight lets the LDA decide between the candidates, and it differs here
    # from weight 0, the default decision
    dominant = predict(1e6)
    np.testing.assert_array_equal(dominant, by_hand(1e6))
    assert (dominant != predict(0.0)).any()
    # a model that learned tasks with the option off has no spaces to score in
    off = assembled(tiny_config_dict(tmp_path / "off", learner=LEARNER))
    off.learner.learn_task(tasks[0], off.ctx)
    off.learner.options = off.learner.options.model_copy(update={"adapted_lda_weight": gamma})
    with pytest.raises(ValueError, match="holds 0 task spaces for 1 tasks"):
        off.learner.predict(test, off.ctx)
    with pytest.raises(ValueError, match="learned 1 tasks but holds 0 task spaces"):
        off.learner.learn_task(tasks[1], off.ctx)
    # a class trained on again (a similarity-mixed scenario) is refused before any training
    with pytest.raises(ValueError, match=r"task 3 trains on classes \[0, 1\]"):
        learner.learn_task(tasks[0], ctx)
    assert learner.tasks_learned == T and len(learner.spaces) == T
    assert learner.pool.num_tasks == T  # no units opened for it


def test_class_decision_refuses_signatures_without_classes():
    from proteus.learners.proteus import ProteusOptions

    with pytest.raises(ValueError, match="decision 'class' needs signature.kind"):
        ProteusOptions(decision="class", signature={"kind": "kmeans"})
    with pytest.raises(ValueError, match="decision 'class' needs"):
        ProteusOptions(decision="class", retrieval="oracle")
    assert not ProteusOptions(retrieval="oracle").class_decision_holds()  # auto: two steps
    for where in ({"decision": "task"}, {"retrieval": "oracle"}):  # auto: two steps there
        with pytest.raises(ValueError, match="adapted_lda_weight adds to decision 'class'"):
            ProteusOptions(adapted_lda_weight=1.0, **where)
    from proteus.learners.proteus import ProteusPaperOptions
    assert ProteusPaperOptions().decision == "task"


def test_merged_inference_predicts_like_low_rank_products(driven):
    learner, ctx, scenario = driven["learner"], driven["ctx"], driven["scenario"]
    test = stack([t.test for t in scenario.tasks])
    weights = {n: l.base.weight.detach().clone() for n, l in learner.pool.layers.items()}
    before = learner.predict(test, ctx)
    learner.options = learner.options.model_copy(update={"merge_for_inference": True})
    try:
        merged = learner.predict(test, ctx)
    finally:
        learner.options = learner.options.model_copy(update={"merge_for_inference": False})
    assert np.array_equal(merged.tasks, before.tasks)
    assert np.array_equal(merged.classes, before.classes)
    for name, layer in learner.pool.layers.items():  # the dense weights are restored exactly
        assert torch.equal(layer.base.weight, weights[name]), name


def test_kept_prefixes_keep_values_and_channels_last_layout(make_tiny_config, tmp_path,
                                                            monkeypatch):
    """A run keeps each sample's frozen-stage prefix by id; stacking kept rows must give back
    the same values in the backbone's channels-last layout (CNN convolutions are much slower
    on the plain layout)."""
    run = assembled(make_tiny_config(tmp_path, learner=LEARNER))
    learner, ctx, data = run.learner, run.ctx, run.scenario.tasks[0].train
    maps = torch.randn(len(data.items), 8, 4, 4).contiguous(memory_format=torch.channels_last)
    calls = []

    def fake_prefix(items, size):
        calls.append(len(items))
        return maps[: len(items)]

    monkeypatch.setattr(learner, "start", 1)
    monkeypatch.setattr(learner, "_prefix", fake_prefix)
    first = learner._cached_prefix(data, ctx)
    again = learner._cached_prefix(data, ctx)
    assert calls == [len(data)]  # the second call is served from the kept rows
    for out in (first, again):
        assert torch.equal(out, maps)
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_units_change_predictions_where_frozen_features_fall_short(tmp_path, one_thread):
    """A noisy synthetic task on which the random tiny ViT's frozen features leave errors: with
    the task given (oracle retrieval, so only classification differs), the trained units change
    predictions and classify better than the same run without units."""
    def accuracy(units: bool) -> tuple[np.ndarray, float]:
        raw = tiny_config_dict(tmp_path / str(units), learner={
            "name": "proteus", "train_adapters": units, "epochs": 20, "scale": 1.0, "rank": 4,
            "lr": 0.01, "proj_dim": 256, "retrieval": "oracle"},
            data=[{"name": "synthetic", "num_classes": 6, "samples_per_class": 100,
                   "image_size": 16, "noise": 0.8, "seed": 1}])
        run = assembled(raw)
        for task in run.scenario.tasks:
            run.learner.learn_task(task, run.ctx)
        test = stack([t.test for t in run.scenario.tasks])
        pred = run.learner.predict(test, run.ctx).classes
        return pred, float((pred == test.labels).mean())

    frozen, frozen_acc = accuracy(False)
    adapted, adapted_acc = accuracy(True)
    assert (frozen != adapted).sum() >= 5
    assert adapted_acc >= frozen_acc + 0.03
