"""The continual loop: learn task t, let the evaluator test every task seen so far, checkpoint.

source -> scenario -> learner -> evaluator -> report; the run directory receives the resolved
config, the class order, the split manifest, one ``metrics.jsonl`` line per task, ``results.json``,
``report.md``, plots and the saved model. After every task the run is checkpointed atomically
(``checkpoint/``, a model directory with the learner's session state and the run's state), so
``proteus run CONFIG --resume`` continues from the last complete task and ends with the same
results and model as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from . import dist
from .assemble import Run, assemble
from .backbones.base import autocast_context
from .config import RunConfig
from .evaluate import Evaluator
from .learners import Learner, TaskOutcome
from .metrics import AccuracyTracker
from .report import print_summary, write_report
from .storage import (SESSION, ModelDirError, SaveSpec, read_manifest, read_tensors, save_model,
                      write_json_atomic, write_text_atomic)
from .tracking import open_trackers

CHECKPOINT = "checkpoint"
#: test hook: "after-learn:K" kills the process with SIGKILL once task K is learned, before it is
#: evaluated or checkpointed (a deterministic point of death for the resume test);
#: "after-learn:K@R" kills rank R of a multi-process run only
FAULT_ENV = "PROTEUS_FAULT"


class ResumeError(ValueError):
    """A run that cannot be resumed: no checkpoint, or one of another config."""


def write_run_files(run: Run) -> Path:
    """Create the run directory with the resolved config, class order and split manifest."""
    run_dir = run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml",
                      yaml.safe_dump(run.config.resolved(), sort_keys=False))
    run.scenario.save_manifest(run_dir / "split_manifest.json")
    write_json_atomic(run_dir / "class_order.json", {
        "class_order": run.scenario.class_order, "class_names": run.scenario.class_names,
        "tasks": [t.classes for t in run.scenario.tasks]})
    return run_dir


def save_spec(run: Run) -> SaveSpec:
    return SaveSpec(backbone_config=run.config.backbone.resolved(),
                    backbone_fingerprint=run.backbone_fingerprint,
                    learner_config=run.config.learner.resolved(),
                    class_names=run.scenario.class_names, class_order=run.scenario.class_order,
                    extra={"seed": run.config.seed})


def run(config: RunConfig, console: Console | None = None, resume: bool = False
        ) -> dict[str, Any]:
    """Run ``config``; under ``torchrun`` every process runs this, sharing the work
    (``proteus.dist``), and rank 0 alone writes the run directory and the model."""
    group = dist.init_from_env(config.device)
    try:
        results = _run(config, console, resume, group)
        with dist.sharding(group):
            dist.barrier()  # every process leaves once rank 0 has written the run
        return results
    finally:
        dist.shutdown()


def _run(config: RunConfig, console: Console | None, resume: bool, group: dist.Dist
         ) -> dict[str, Any]:
    main = group.is_main
    console = console if console is not None and main else Console(stderr=True, quiet=not main)
    parts = assemble(config)
    learner, ctx, scenario = parts.learner, parts.ctx, parts.scenario
    ctx.progress = ctx.progress and main
    run_dir = write_run_files(parts) if main else parts.run_dir
    device = parts.device

    def amp():
        return autocast_context(device, config.precision)

    n_tasks = len(scenario.tasks)
    evaluator = Evaluator(scenario)
    # per task: timing, extras (certificate summaries included) and the metrics line; the last
    # certificate in full (a checkpoint carries all of it, so a resumed run ends the same)
    state: dict[str, Any] = {"timing": [], "extras": [], "lines": [], "last_certificate": None}
    start = 0
    if resume:
        start, state = _restore(parts, evaluator)
        console.print(f"resuming [bold]{config.name}[/] after task {start} of {n_tasks}")
    metrics_file = run_dir / "metrics.jsonl"
    if main:
        write_text_atomic(metrics_file,
                          "".join(json.dumps(line) + "\n" for line in state["lines"]))
    trackers = open_trackers(config, run_dir) if main else []
    console.print(f"[bold]{config.name}[/]: {config.learner.name} on {config.backbone.name}, "
                  f"{n_tasks} tasks, {len(scenario.class_names)} classes, device {device}"
                  + (f", {group.world} processes ({group.backend})" if group.enabled else ""))

    for task in scenario.tasks[start:]:
        t0 = time.perf_counter()
        with amp(), dist.sharding(group):
            outcome: TaskOutcome = learner.learn_task(task, ctx)
        train_s = time.perf_counter() - t0
        _fault("after-learn", task.index, group.rank)
        eval_timing = evaluator.after_task(task, learner, ctx, amp)

        step_timing = {"task": task.index, "train_s": round(train_s, 3),
                       "eval_s": round(eval_timing["eval_s"], 3),
                       **{k: round(float(v), 3) for k, v in outcome.timing.items()}}
        for key in ("task_il_eval_s", "val_eval_s"):
            if key in eval_timing:
                step_timing[key] = round(eval_timing[key], 3)
        extras = dict(outcome.extras)
        curves = learner.training_curves()
        if curves:  # per-epoch training loss of each gradient fit of this task (the report plots)
            extras["training_curves"] = curves
        if outcome.certificate is not None:
            # per task the summary; the clusters of the last certificate go in once, at the end
            extras["certificate"] = {k: v for k, v in outcome.certificate.items()
                                     if k != "clusters"}
            state["last_certificate"] = outcome.certificate
        state["timing"].append(step_timing)
        state["extras"].append(extras)
        line = {**evaluator.line(task), **step_timing,
                "extras": {**extras, **({"certificate": outcome.certificate}
                                        if outcome.certificate is not None else {})}}
        state["lines"].append(line)
        if main:
            with metrics_file.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
        for tracker in trackers:
            tracker.log_task(line)
        retrieval = line["task_retrieval_accuracy"]
        console.print(
            f"task {task.index + 1}/{n_tasks}: accuracy on seen {line['accuracy_seen']:.4f}"
            + (f", task retrieval {retrieval:.4f}" if retrieval is not None else "")
            + (f", validation {line['val_accuracy_seen']:.4f}" if "val_accuracy_seen" in line
               else "")
            + f"  (train {train_s:.1f}s, eval {eval_timing['eval_s']:.1f}s)")
        if task.index < n_tasks - 1 and config.checkpoint and main:
            _checkpoint(parts, evaluator.tracker, state, task.index + 1, evaluator.val_tracker)

    results = _results(config, scenario, evaluator.tracker, state, learner)
    if evaluator.val_tracker is not None:
        results["validation"] = evaluator.validation_results()
    if group.enabled:
        results["distributed"] = {"world_size": group.world, "backend": group.backend}
    if not main:
        return results
    write_json_atomic(run_dir / "results.json", results)
    if config.save_model:
        save_model(run_dir / "model", learner=learner, spec=save_spec(parts), fresh=True)
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)  # the run is complete
    write_report(run_dir, results)
    for tracker in trackers:
        tracker.close(results)
    print_summary(results, console=console)
    console.print(f"results in [bold]{run_dir}[/]")
    return results


def _fault(point: str, task: int, rank: int = 0) -> None:
    """``point:task`` kills every process of the run there, ``point:task@rank`` that rank only."""
    if os.environ.get(FAULT_ENV) in (f"{point}:{task}", f"{point}:{task}@{rank}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _checkpoint(parts: Run, tracker: AccuracyTracker, state: dict, next_task: int,
                val_tracker: AccuracyTracker | None = None) -> None:
    run_state = {"next_task": next_task, "config": parts.config.resolved(),
                 "tracker": tracker.state(), **state}
    if val_tracker is not None:
        run_state["val_tracker"] = val_tracker.state()
    save_model(parts.run_dir / CHECKPOINT, learner=parts.learner, spec=save_spec(parts),
               fresh=True, keep=1, session=True, run_state=run_state, compact=False,
               note=f"checkpoint after task {next_task - 1}")


def _restore(parts: Run, evaluator: Evaluator) -> tuple[int, dict]:
    """Load the last checkpoint into the learner and evaluator; returns the next task and the
    run's state (timing, extras, metrics lines, last certificate of the tasks done)."""
    folder = parts.run_dir / CHECKPOINT
    try:
        manifest = read_manifest(folder)
    except ModelDirError as exc:
        raise ResumeError(f"cannot resume {parts.config.name}: {exc}") from None
    run_state = manifest["run_state"]
    here = json.loads(json.dumps(parts.config.resolved()))
    differ = sorted(k for k in set(here) | set(run_state["config"])
                    if k != "progress" and here.get(k) != run_state["config"].get(k))
    if differ:
        raise ResumeError(f"{folder}: the checkpoint was written with another config "
                          f"(differs in {', '.join(differ)}); resume with the same config")
    if manifest["class_order"] != parts.scenario.class_order:
        raise ResumeError(f"{folder}: the checkpoint's class order differs from this run's")
    learner: Learner = parts.learner
    learner.load_state(read_tensors(manifest), manifest["learner_state"])
    next_task = int(run_state["next_task"])
    learner.load_session_state(read_tensors(manifest, parts=(SESSION,)),
                               manifest.get("session_state") or {},
                               parts.scenario.tasks[:next_task])
    evaluator.tracker = AccuracyTracker.from_state(run_state["tracker"])
    if "val_tracker" in run_state:
        evaluator.val_tracker = AccuracyTracker.from_state(run_state["val_tracker"])
    return next_task, {k: run_state[k] for k in ("timing", "extras", "lines",
                                                 "last_certificate")}


def _results(config: RunConfig, scenario, tracker: AccuracyTracker, state: dict,
             learner: Learner) -> dict[str, Any]:
    acc = tracker.accuracy_matrix()
    confusion = tracker.retrieval_confusion
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    extras = state["extras"]
    results: dict[str, Any] = {
        "name": config.name,
        "learner": config.learner.name,
        "backbone": config.backbone.name,
        "seed": config.seed,
        "config": config.resolved(),
        "class_order": scenario.class_order,
        "class_names": scenario.class_names,
        "tasks": [{"index": t.index, "classes": t.classes, "num_train": len(t.train),
                   "num_test": len(t.test),
                   **({"num_val": len(t.val)} if t.val is not None else {})}
                  for t in scenario.tasks],
        "accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in acc],
        "accuracy_seen": [float(v) for v in tracker.accuracy_seen()],
        "metrics": tracker.summary(),
        "retrieval_confusion": None if confusion is None else np.asarray(confusion).tolist(),
        "retrieval_accuracy_seen": tracker.retrieval_history or None,
        "timing": state["timing"],
        "peak_memory_mb": round(peak_mb, 1),
        "parameters": learner.parameter_counts(),
        "extras": {"per_task": extras} if any(extras) else {},
    }
    if state["last_certificate"] is not None:
        # section 6: the last certificate in full (per cluster), beside the retrieval accuracy
        results["certificate"] = {
            **state["last_certificate"],
            "task_retrieval_accuracy": results["metrics"].get("task_retrieval_accuracy"),
            "certified_fraction_per_task": [e["certificate"].get("certified_fraction")
                                            for e in extras if "certificate" in e]}
    if torch.cuda.is_available():
        results["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return results
