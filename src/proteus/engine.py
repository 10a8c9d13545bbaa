"""The continual loop: learn task t, then evaluate on the test data of every task seen so far.

source -> scenario -> learner -> evaluator -> report; the run directory receives the resolved
config, the class order, the split manifest, one ``metrics.jsonl`` line per task, ``results.json``,
``report.md``, plots and the saved model.
"""

from __future__ import annotations

import json
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from .backbones import BACKBONES, resolve_device
from .backbones.base import autocast_context
from .config import RunConfig
from .data import DATASETS, ScenarioOptions, build_scenario, concat
from .data.base import LabeledData, stack
from .data.scenario import Scenario
from .learners import LEARNERS, Context, Learner
from .metrics import AccuracyTracker
from .report import print_summary, write_report
from .storage import save_model, write_json_atomic, write_text_atomic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(config: RunConfig) -> LabeledData:
    parts = [DATASETS.build(c.name, c.options, where=f"data.{i}") for i, c in enumerate(config.data)]
    return parts[0] if len(parts) == 1 else concat(parts)


def build_learner(config: RunConfig, backbone) -> Learner:
    return LEARNERS.build(config.learner.name, config.learner.options, where="learner",
                          backbone=backbone, seed=config.seed)


def prepare(config: RunConfig) -> tuple[Scenario, Path]:
    """Load data, build the scenario, create the run directory with config, order and split."""
    run_dir = Path(config.output_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.resolved()
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    data = load_data(config)
    scenario = build_scenario(data, ScenarioOptions.model_validate(config.scenario), config.seed)
    scenario.save_manifest(run_dir / "split_manifest.json")
    write_json_atomic(run_dir / "class_order.json", {
        "class_order": scenario.class_order, "class_names": scenario.class_names,
        "tasks": [t.classes for t in scenario.tasks]})
    return scenario, run_dir


def setup(config: RunConfig) -> tuple[Scenario, Path, torch.device, Learner, Context]:
    """Seed, :func:`prepare`, and build the backbone, the learner and its context."""
    seed_everything(config.seed)
    scenario, run_dir = prepare(config)
    device = resolve_device(config.device)
    backbone = BACKBONES.build(config.backbone.name, config.backbone.options,
                               where="backbone").to(device)
    learner = build_learner(config, backbone)
    ctx = Context(backbone=backbone, seed=config.seed, batch_size=config.eval.batch_size,
                  progress=config.progress, num_tasks=len(scenario.tasks))
    # a learner that installs adapters tells the context how to switch them off
    if hasattr(learner, "frozen_scope"):
        ctx.frozen_scope = learner.frozen_scope
    return scenario, run_dir, device, learner, ctx


def run(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    scenario, run_dir, device, learner, ctx = setup(config)

    def amp():
        return autocast_context(device, config.precision)

    n_tasks = len(scenario.tasks)
    tracker = AccuracyTracker(n_tasks)
    timing: list[dict[str, float]] = []
    extras: list[dict[str, Any]] = []
    metrics_file = run_dir / "metrics.jsonl"
    metrics_file.write_text("")
    console.print(f"[bold]{config.name}[/]: {config.learner.name} on {config.backbone.name}, "
                  f"{n_tasks} tasks, {len(scenario.class_names)} classes, device {device}")

    for task in scenario.tasks:
        t0 = time.perf_counter()
        with amp():
            step_extras = learner.learn_task(task, ctx) or {}
        train_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        seen = scenario.tasks[: task.index + 1]
        test = stack([t.test for t in seen])
        true_task = np.concatenate([np.full(len(t.test), t.index) for t in seen])
        with amp():
            pred = learner.predict(test, ctx)
        correct = pred.classes == test.labels
        for t in seen:
            mask = true_task == t.index
            tracker.record(task.index, t.index, int(correct[mask].sum()), int(mask.sum()))
        if pred.tasks is not None:
            tracker.record_retrieval(true_task, np.asarray(pred.tasks))
        eval_s = time.perf_counter() - t0

        step_timing = {"task": task.index, "train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
                       **{k: round(float(v), 3) for k, v in step_extras.pop("timing", {}).items()}}
        if task.index == n_tasks - 1:  # task-IL once, at the end: one more prediction pass
            t0 = time.perf_counter()
            with amp():
                given = learner.predict_given_task(test, ctx, true_task,
                                                   [t.classes for t in scenario.tasks])
            if given is not None:
                tracker.record_task_il(int((np.asarray(given) == test.labels).sum()), len(test))
            step_timing["task_il_eval_s"] = round(time.perf_counter() - t0, 3)
        timing.append(step_timing)
        extras.append(step_extras)
        summary = tracker.summary()
        acc = tracker.accuracy_matrix()
        line = {"task": task.index, "accuracy_seen": float(tracker.accuracy_seen()[-1]),
                "accuracy_per_task": [float(acc[i, task.index]) for i in range(task.index + 1)],
                "task_retrieval_accuracy": summary.get("task_retrieval_accuracy"),
                **step_timing, "extras": step_extras}
        with metrics_file.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        retrieval = line["task_retrieval_accuracy"]
        console.print(
            f"task {task.index + 1}/{n_tasks}: accuracy on seen {line['accuracy_seen']:.4f}"
            + (f", task retrieval {retrieval:.4f}" if retrieval is not None else "")
            + f"  (train {train_s:.1f}s, eval {eval_s:.1f}s)")

    results = _results(config, scenario, tracker, timing, extras, learner)
    write_json_atomic(run_dir / "results.json", results)
    if config.save_model:
        save_model(run_dir / "model", learner=learner, backbone_config=config.backbone.resolved(),
                   learner_config=config.learner.resolved(), class_names=scenario.class_names,
                   class_order=scenario.class_order, extra={"seed": config.seed})
    write_report(run_dir, results)
    print_summary(results, console=console)
    console.print(f"results in [bold]{run_dir}[/]")
    return results


def _without_clusters(extras: dict[str, Any]) -> dict[str, Any]:
    """Per-task extras with the certificate cut to its summary (clusters go in once, at the end)."""
    if "certificate" not in extras:
        return extras
    cert = {k: v for k, v in extras["certificate"].items() if k != "clusters"}
    return {**extras, "certificate": cert}


def _results(config: RunConfig, scenario: Scenario, tracker: AccuracyTracker,
             timing: list[dict], extras: list[dict], learner: Learner) -> dict[str, Any]:
    acc = tracker.accuracy_matrix()
    confusion = tracker.retrieval_confusion
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    results: dict[str, Any] = {
        "name": config.name,
        "learner": config.learner.name,
        "backbone": config.backbone.name,
        "seed": config.seed,
        "config": config.resolved(),
        "class_order": scenario.class_order,
        "class_names": scenario.class_names,
        "tasks": [{"index": t.index, "classes": t.classes, "num_train": len(t.train),
                   "num_test": len(t.test)} for t in scenario.tasks],
        "accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in acc],
        "accuracy_seen": [float(v) for v in tracker.accuracy_seen()],
        "metrics": tracker.summary(),
        "retrieval_confusion": None if confusion is None else np.asarray(confusion).tolist(),
        "retrieval_accuracy_seen": tracker.retrieval_history or None,
        "timing": timing,
        "peak_memory_mb": round(peak_mb, 1),
        "parameters": learner.parameter_counts(),
        "extras": {"per_task": [_without_clusters(e) for e in extras]} if any(extras) else {},
    }
    certificates = [e["certificate"] for e in extras if "certificate" in e]
    if certificates:
        # section 6: the last certificate in full (per cluster), beside the retrieval accuracy
        results["certificate"] = {
            **certificates[-1],
            "task_retrieval_accuracy": results["metrics"].get("task_retrieval_accuracy"),
            "certified_fraction_per_task": [c["certified_fraction"] for c in certificates]}
    if torch.cuda.is_available():
        results["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return results
