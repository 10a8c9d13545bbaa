"""Does task k's adapted backbone add evidence beyond the frozen class Gaussians? An experiment on
a finished ``proteus`` run that held out a validation split (``scenario.val_fraction``).

    python -m proteus run configs/offline/vision-fmnist-mnist.yaml --set scenario.val_fraction=0.1 \
        --seed 1993 --output-dir runs/rerank --name vision-s1993
    python benchmarks/rerank.py runs/rerank/vision-s1993 --out docs/rerank.json

Writes the JSON (every grid point's validation and test accuracy) and a markdown summary beside
it (``--out`` with ``.md``).

``proteus`` decides in two steps: retrieve the task whose best class Gaussian (shared
covariance, multi-block frozen features) is most likely, then take the ridge head's best class
of that task on the task's adapted embedding h_k. The ``lda`` control decides in one: the most
likely class Gaussian over every class. This script scores every class c of task k = task(c) by

    s(c) = D(c) + beta * E_k(c),   only for the ``top`` tasks of highest best D,

where D(c) is the class Gaussian's log-likelihood (up to a per-sample constant: the signature's
linear retrieval scores) and E_k(c) is evidence from h_k:

* ``raw``: the ridge logit of c on h_k(x), compared across tasks as it is;
* ``within``: its log-softmax over task k's classes at temperature ``tau`` (reorders classes
  inside a task only).

beta = 0 is the class-level Gaussian decision (the ``lda`` control on the signature's own
Gaussians); ``top`` 1 with beta large is the paper's retrieve-then-classify (``proteus`` with
``decision: task``). The grid point with the best validation accuracy is chosen, per run and
over all runs given (mean), and test accuracy is reported for it and for the two reference
points; the choice never sees the test data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from scipy.special import log_softmax  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

sys.path.insert(0, str(ROOT / "benchmarks"))

from head_swap import load_saved  # noqa: E402
from proteus.data import stack  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402

BETAS = [0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]
TAUS = [0.03, 0.1, 0.3, 1.0]
TOPS = [1, 2, 3]
DEFAULT_PURPOSE = ("The point chosen over all runs below set the default `learner.decision` of "
                   "`proteus`.")


def load(run_dir: Path):
    run = load_saved(run_dir)  # head_swap's: scenario from the run's manifest, its saved model
    if not hasattr(run.learner, "signatures"):
        raise SystemExit(f"{run_dir}: not a proteus run ({type(run.learner).__name__})")
    return run.scenario, run.learner, run.ctx


def evidence(learner, ctx, data, embeddings: list[np.ndarray] | None = None) -> dict:
    """D (N, C) in class-position order, and the ridge logits of every class on its own
    task's adapted embedding (N, C); ``embeddings``: each task's embedding of ``data`` where
    the caller has them already."""
    sig = learner.signatures
    feats, prefix = learner._signature_features(data, ctx, with_prefix=True)
    W, b = sig.linear_retrieval()
    comp_classes = np.concatenate([c.classes for c in sig.tasks]).astype(int)
    C = learner.num_classes
    D = np.full((len(data), C), -np.inf)
    D[:, comp_classes] = sig.prepare(feats) @ W + b
    R = np.full((len(data), C), -np.inf)
    for k, classes in enumerate(learner.task_classes):
        h = embeddings[k] if embeddings is not None else learner._embed(
            data.items, k if learner.pool is not None else None, ctx.batch_size, prefix)
        R[:, classes] = learner.head.logits(h)[:, classes]
    return {"D": D, "R": R, "labels": data.labels}


def decide(ev: dict, task_classes: list, top: int, beta: float, mode: str, tau: float
           ) -> np.ndarray:
    D, R = ev["D"], ev["R"]
    best = np.stack([D[:, c].max(1) for c in task_classes], 1)  # (N, T) retrieval scores
    keep = np.argsort(-best, axis=1)[:, :top]
    s = np.full_like(D, -np.inf)
    for k, classes in enumerate(task_classes):
        rows = (keep == k).any(1)
        if mode == "raw":
            e = R[:, classes]
        else:
            e = log_softmax(R[:, classes] / tau, axis=1)
        s[np.ix_(rows, classes)] = (D[:, classes] + beta * e)[rows]
    return s.argmax(1)


def two_step(ev: dict, task_classes: list) -> np.ndarray:
    """Retrieve the task of the best class Gaussian, then the head's best class of it."""
    D, R = ev["D"], ev["R"]
    best = np.stack([D[:, c].max(1) for c in task_classes], 1)
    task = best.argmax(1)
    out = np.empty(len(D), dtype=int)
    for k, classes in enumerate(task_classes):
        rows = task == k
        out[rows] = np.asarray(classes)[R[np.ix_(rows, classes)].argmax(1)]
    return out


def finished_runs_parser(description: str) -> argparse.ArgumentParser:
    """The command line of an experiment on finished runs: their directories, the JSON to
    write (``--out``, its markdown beside it) and ``--render-only``."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the markdown from --out's JSON; the run_dirs are ignored")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = finished_runs_parser(__doc__)
    parser.add_argument("--tops", type=int, nargs="+", default=TOPS,
                        help="how many of the most likely tasks the decision scores (grid)")
    parser.add_argument("--purpose", default=DEFAULT_PURPOSE,
                        help="the markdown's first sentence: what this measurement decided")
    args = parser.parse_args(argv)
    if not args.render_only and not args.run_dirs:
        parser.error("give the finished runs, or --render-only")
    if min(args.tops) < 1:
        parser.error("--tops: every value must be at least 1")
    if args.render_only:
        report = choose_over_runs(json.loads(args.out.read_text()))
        write_json_atomic(args.out, report)
        write_text_atomic(args.out.with_suffix(".md"), render(report) + "\n")
        return 0
    tops = sorted(set(args.tops))
    grid = [(top, beta, "raw", None) for top, beta in itertools.product(tops, BETAS)] + [
        (top, beta, "within", tau) for top, beta, tau in itertools.product(tops, BETAS[1:], TAUS)]
    report = {"purpose": args.purpose, "grid": {"top": tops, "beta": BETAS, "tau": TAUS},
              "runs": {}}
    for run_dir in args.run_dirs:
        scenario, learner, ctx = load(run_dir)
        if any(t.val is None or len(t.val) == 0 for t in scenario.tasks):
            raise SystemExit(f"{run_dir}: no validation split (run it with scenario.val_fraction)")
        val = evidence(learner, ctx, stack([t.val for t in scenario.tasks]))
        test = evidence(learner, ctx, stack([t.test for t in scenario.tasks]))
        tc = learner.task_classes

        def acc(ev, pred):
            return float((pred == ev["labels"]).mean())

        points = [{"top": top, "beta": beta, "mode": mode, "tau": tau,
                   "val": acc(val, decide(val, tc, top, beta, mode, tau or 1.0)),
                   "test": acc(test, decide(test, tc, top, beta, mode, tau or 1.0))}
                  for top, beta, mode, tau in grid]
        chosen = max(points, key=lambda p: p["val"])  # first in grid order on ties
        lda_like = next(p for p in points if p["beta"] == 0.0 and p["top"] == 1)
        today = {"val": acc(val, two_step(val, tc)),
                 "test": acc(test, two_step(test, tc))}
        report["runs"][str(run_dir)] = {"chosen": chosen, "class_gaussians": lda_like,
                                        "two_step": today, "points": points}
        print(f"{run_dir}: retrieve then classify val {100 * today['val']:.2f} test "
              f"{100 * today['test']:.2f}; class Gaussians val {100 * lda_like['val']:.2f} test "
              f"{100 * lda_like['test']:.2f}; chosen {chosen['mode']} top {chosen['top']} "
              f"beta {chosen['beta']} tau {chosen['tau']}: val {100 * chosen['val']:.2f} test "
              f"{100 * chosen['test']:.2f}")
        for mode in ("raw", "within"):
            best = max((p for p in points if p["mode"] == mode), key=lambda p: p["val"])
            print(f"  best {mode}: {best}")
    write_json_atomic(args.out, choose_over_runs(report))
    write_text_atomic(args.out.with_suffix(".md"), render(report) + "\n")
    return 0


def choose_over_runs(report: dict) -> dict:
    """The grid point of the best mean validation accuracy over every run (ties: first in
    grid order), stored as ``chosen_over_runs``."""
    runs = list(report["runs"].values())
    size = len(runs[0]["points"])
    mean_val = [sum(r["points"][i]["val"] for r in runs) / len(runs) for i in range(size)]
    best = max(range(size), key=lambda i: mean_val[i])
    report["chosen_over_runs"] = {**{k: runs[0]["points"][best][k]
                                     for k in ("top", "beta", "mode", "tau")},
                                  "mean_val": mean_val[best]}
    return report


def render(report: dict) -> str:
    lines = ["# Re-ranking with the adapted backbones", "",
             report.get("purpose", DEFAULT_PURPOSE) + " Written by `benchmarks/rerank.py` (its "
             "docstring has the rule) from the JSON of the same name. Final class-IL accuracy, "
             "percent, on the validation split the run held out and on the test split. *class "
             "Gaussians*: beta = 0, the most likely class over every class. *retrieve then "
             "classify*: retrieve the task, then its head's best class. *chosen*: the grid "
             "point with the best validation accuracy.", "",
             "| run | class Gaussians (val / test) | retrieve then classify (val / test) | "
             "chosen point | chosen (val / test) |", "|---|---|---|---|---|"]
    for run, r in report["runs"].items():
        c, g, t = r["chosen"], r["class_gaussians"], r["two_step"]
        point = f"{c['mode']}, top {c['top']}, beta {c['beta']:g}" + (
            f", tau {c['tau']:g}" if c["tau"] is not None else "")
        lines.append(f"| `{run}` | {100 * g['val']:.2f} / {100 * g['test']:.2f} | "
                     f"{100 * t['val']:.2f} / {100 * t['test']:.2f} | {point} | "
                     f"{100 * c['val']:.2f} / {100 * c['test']:.2f} |")
    if "chosen_over_runs" in report:
        c = report["chosen_over_runs"]
        lines += ["", f"Chosen over all runs (mean validation accuracy {100 * c['mean_val']:.2f}): "
                  f"{c['mode']}, top {c['top']}, beta {c['beta']:g}"
                  + (f", tau {c['tau']:g}" if c["tau"] is not None else "") + "."]
    lines += ["", "On test, against the class Gaussians (beta = 0):", ""]
    for run, r in report["runs"].items():
        c, g, t = r["chosen"], r["class_gaussians"], r["two_step"]
        lines.append(f"- `{run}`: the validation-chosen weight on the adapted heads' evidence "
                     f"{100 * (c['test'] - g['test']):+.2f} points; retrieve-then-classify "
                     f"{100 * (t['test'] - g['test']):+.2f} points.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
