"""Where a learner's class-incremental predictions go, task by task.

    python benchmarks/diagnose_heads.py configs/offline/baselines/sd-lora-vision.yaml --seed 1993

Runs the preset's learner through every task (only the config, class order and split are
written, under runs/diagnose/), then scores the whole test set once with the learner's scores
over all seen classes and prints, per true task: accuracy with all classes competing
(class-IL), accuracy with the task given (task-IL), how many of the task's test samples are
predicted into each task, and the mean over all test samples of that task's highest logit.
High task-IL with low class-IL and predictions piled into a few tasks means the heads of
different tasks are not comparable (their logit scales differ), not that the representation
forgot. Learners without scores over all classes (proteus, s-prompts) are refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import proteus  # noqa: E402
from proteus.assemble import assemble  # noqa: E402
from proteus.backbones.base import autocast_context  # noqa: E402
from proteus.data import stack  # noqa: E402
from proteus.learners.base import argmax_within_task  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = [*args.set, "progress=false", "output_dir=runs/diagnose"]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = proteus.load_config(args.config, overrides)
    run = assemble(config)
    scenario, device, learner, ctx = run.scenario, run.device, run.learner, run.ctx
    console = Console()
    for task in scenario.tasks:
        with autocast_context(device, config.precision):
            learner.learn_task(task, ctx)
        console.print(f"learned task {task.index + 1}/{len(scenario.tasks)}")

    test = stack([t.test for t in scenario.tasks])
    true_task = np.concatenate([np.full(len(t.test), t.index) for t in scenario.tasks])
    classes = [t.classes for t in scenario.tasks]
    with autocast_context(device, config.precision):
        scores = learner.scores(test, ctx)
    if scores is None:
        parser.error(f"learner {config.learner.name!r} has no scores over all classes "
                     "(it predicts through task retrieval)")
    owner = np.zeros(scores.shape[1], dtype=np.int64)
    for k, cls in enumerate(classes):
        owner[cls] = k
    pred = scores.argmax(1)
    within = argmax_within_task(scores, true_task, classes)
    top = np.stack([scores[:, cls].max(1) for cls in classes], 1)  # N x tasks

    n = len(classes)
    table = Table(title=f"{config.learner.name} on {Path(args.config).name}, seed {config.seed}")
    for col in ["true task", "class-IL", "task-IL", "predicted into tasks 0..T-1",
                "mean top logit"]:
        table.add_column(col, justify="right")
    for k in range(n):
        rows = true_task == k
        hist = np.bincount(owner[pred[rows]], minlength=n)
        table.add_row(str(k), f"{100 * (pred[rows] == test.labels[rows]).mean():.1f}",
                      f"{100 * (within[rows] == test.labels[rows]).mean():.1f}",
                      " ".join(str(int(c)) for c in hist), f"{top[:, k].mean():.2f}")
    hist = np.bincount(owner[pred], minlength=n)
    table.add_section()
    table.add_row("all", f"{100 * (pred == test.labels).mean():.2f}",
                  f"{100 * (within == test.labels).mean():.2f}",
                  " ".join(str(int(c)) for c in hist), "")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
