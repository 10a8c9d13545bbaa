"""Can the adapted backbone of the earlier of two candidate tasks break the tie between them?
An experiment on finished ``proteus`` runs that held out a validation split
(``scenario.val_fraction``), like ``rerank.py``.

    python -m proteus run configs/offline/text-wordnet.yaml --set scenario.val_fraction=0.1 \
        --seed 1993 --output-dir runs/pair --name text-s1993
    python benchmarks/pair_space.py runs/pair/text-s1993 --out docs/pair_space.json

Why: the right task is among the class Gaussians' two most likely far more often than it is the
most likely (``docs/ceiling.md``: top-2 task recall), and the ridge heads' logits, trained within
a task, barely break that tie (``docs/rerank.md``). A tie-breaker needs evidence that compares
the two tasks on one scale and that the frozen features do not already hold.

The evidence tried here. For every task i, a shrinkage LDA (scikit-learn's, ``lsqr`` with
Ledoit-Wolf shrinkage) over the classes of tasks i, i+1, ... in *space i*: the features of
task i's adapted backbone. It is exemplar-free: task j >= i's training data passes task i's
stored units when task j arrives, and no earlier task's data is ever needed. For a sample whose
two most likely tasks are a and b, the space of i = min(a, b) holds both tasks' classes, and
every class c of a and b is scored

    s(c) = D(c) + beta * R(c) + gamma * E_i(c)

with D the class Gaussian's log-likelihood (frozen multi-block features), R the ridge logit on
c's task's adapted embedding (``proteus``'s default decision: beta = ``decision_weight``), and
E_i the space-i LDA's decision function. gamma = 0 is today's decision; gamma ``None`` scores
by E_i alone. Space i's features, each with its frozen control:

* ``adapted``: h_i, the final embedding under task i's units;
* ``frozen + adapted``: the frozen multi-block features beside h_i;
* ``frozen embedding`` (control): the final embedding without units, the same for every i;
* ``frozen multi-block`` (control): the signature features alone.

A control gains whatever re-fitting an LDA on fewer classes gains; only what ``adapted`` gains
beyond it is the adapted backbone's. The point (features, beta, gamma) of the best mean
validation accuracy over the runs given is chosen per preset; test is reported for it, and
never seen by the choice.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rerank import evidence, finished_runs_parser, load  # noqa: E402
from proteus.data import stack  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402

GAMMAS = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, None]  # None: E_i alone
FEATURES = ["adapted", "frozen + adapted", "frozen embedding", "frozen multi-block"]
CONTROLS = {"adapted": "frozen embedding", "frozen + adapted": "frozen multi-block"}


def space_features(learner, ctx, data) -> dict:
    """Every space's features of ``data``: the signature features F, the frozen embedding and
    h_i for every task i."""
    with torch.no_grad():
        F, prefix = learner._signature_features(data, ctx, with_prefix=True)
        frozen = learner._embed(data.items, None, ctx.batch_size, prefix)
        H = [learner._embed(data.items, i, ctx.batch_size, prefix)
             for i in range(learner.tasks_learned)] if learner.pool is not None else []
    return {"F": F, "frozen": frozen, "H": H or [frozen] * learner.tasks_learned}


def features_of(kind: str, f: dict, i: int) -> np.ndarray:
    if kind == "adapted":
        return f["H"][i]
    if kind == "frozen + adapted":
        return np.hstack([f["F"], f["H"][i]])
    if kind == "frozen embedding":
        return f["frozen"]
    if kind == "frozen multi-block":
        return f["F"]
    raise ValueError(f"unknown features {kind!r}; one of {FEATURES}")


def fit_spaces(kind: str, f_train: dict, labels: np.ndarray, class_task: np.ndarray,
               num_tasks: int) -> list:
    """Space i's LDA over the classes of tasks >= i, on those tasks' training data only."""
    models = []
    for i in range(num_tasks):
        rows = class_task[labels] >= i
        models.append(LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(
            features_of(kind, f_train, i)[rows], labels[rows]))
    return models


def pair_evidence(models: list, kind: str, f: dict, top2: np.ndarray, num_classes: int
                  ) -> np.ndarray:
    """E (N, C): each sample's space-min(top2) LDA scores; -inf outside that space's classes."""
    E = np.full((len(top2), num_classes), -np.inf)
    space = top2.min(1)
    for i, model in enumerate(models):
        rows = space == i
        if rows.any():
            E[np.ix_(rows, model.classes_)] = model.decision_function(
                features_of(kind, f, i)[rows])
    return E


def top_two(D: np.ndarray, task_classes: list) -> np.ndarray:
    best = np.stack([D[:, c].max(1) for c in task_classes], 1)
    return np.argsort(-best, axis=1, kind="stable")[:, :2]  # ties: the earlier task


def decide(D, R, E, task_classes, top2, beta: float, gamma: float | None) -> np.ndarray:
    """The best class of the two candidate tasks by D + beta R + gamma E (E alone at None)."""
    s = np.full_like(D, -np.inf)
    for k, classes in enumerate(task_classes):
        rows = (top2 == k).any(1)
        if not rows.any():
            continue
        score = E[:, classes] if gamma is None else (
            D[:, classes] + beta * R[:, classes] + (gamma * E[:, classes] if gamma else 0.0))
        s[np.ix_(rows, classes)] = score[rows]
    return s.argmax(1)


def measure(run_dir: Path) -> dict:
    scenario, learner, ctx = load(run_dir)
    if any(t.val is None or len(t.val) == 0 for t in scenario.tasks):
        raise SystemExit(f"{run_dir}: no validation split (run it with scenario.val_fraction)")
    tc, C, T = learner.task_classes, learner.num_classes, learner.tasks_learned
    class_task = np.asarray(learner.class_task)
    beta_default = float(learner.options.decision_weight)
    parts = {"val": stack([t.val for t in scenario.tasks]),
             "test": stack([t.test for t in scenario.tasks])}
    train = stack([t.train for t in scenario.tasks])
    f_train = space_features(learner, ctx, train)
    ev, feats, top2 = {}, {}, {}
    for name, data in parts.items():
        feats[name] = space_features(learner, ctx, data)
        ev[name] = evidence(learner, ctx, data, feats[name]["H"])  # h_k embedded once
        top2[name] = top_two(ev[name]["D"], tc)
    points = []
    for kind in FEATURES:
        models = fit_spaces(kind, f_train, train.labels, class_task, T)
        E = {p: pair_evidence(models, kind, feats[p], top2[p], C) for p in parts}
        for beta in sorted({0.0, beta_default}):
            for gamma in GAMMAS:
                acc = {p: float((decide(ev[p]["D"], ev[p]["R"], E[p], tc, top2[p], beta, gamma)
                                 == ev[p]["labels"]).mean()) for p in parts}
                points.append({"features": kind, "beta": beta, "gamma": gamma, **acc})
        print(f"{run_dir}: {kind} done", flush=True)
    return {"beta_default": beta_default, "points": points}


def _best(rows: list, indices) -> dict:
    """The point of ``indices`` with the best mean validation accuracy over the runs' points
    ``rows`` (ties: the first), with its mean test accuracy and each run's."""
    def mean(i, part):
        return sum(r[i][part] for r in rows) / len(rows)

    i = max(indices, key=lambda j: mean(j, "val"))
    return {**{k: rows[0][i][k] for k in ("features", "beta", "gamma")},
            "val": mean(i, "val"), "test": mean(i, "test"),
            "test_per_run": [r[i]["test"] for r in rows]}


def choose(report: dict) -> dict:
    """Per preset (the run directory's name up to ``-s<seed>``), the point of the best mean
    validation accuracy over its runs, among every point and among each feature set's; ties:
    today's decision, then the first in grid order."""
    by_preset = defaultdict(list)
    for run in report["runs"]:
        by_preset[Path(run).name.rsplit("-s", 1)[0]].append(run)
    out = {}
    for preset, runs in by_preset.items():
        rows = [report["runs"][r]["points"] for r in runs]
        beta = report["runs"][runs[0]]["beta_default"]
        everything = range(len(rows[0]))
        default = next(i for i in everything
                       if rows[0][i]["beta"] == beta and rows[0][i]["gamma"] == 0.0)
        # ties: today's decision, then grid order (no change without validation evidence)
        out[preset] = {"runs": runs, "chosen": _best(rows, [default, *everything]),
                       "default": _best(rows, [default]),
                       "per_features": {kind: _best(rows, [i for i in everything
                                                           if rows[0][i]["features"] == kind
                                                           and rows[0][i]["gamma"] != 0.0])
                                        for kind in FEATURES}}
    report["chosen"] = out
    return report


def _gamma(gamma: float | None) -> str:
    return "E alone" if gamma is None else f"{gamma:g}"


def render(report: dict) -> str:
    pct = "{:.2f}".format
    lines = ["# Breaking the top-2 task tie in the earlier task's adapted space", "",
             ("Written by `benchmarks/pair_space.py` (its docstring has the rule and the "
              "controls) from the JSON of the same name. Final class-IL accuracy, percent, mean "
              "over the runs of each preset; the point of each row is chosen on the validation "
              "split (mean over runs), test is shown beside it. *today*: `proteus`'s default "
              "decision (gamma 0). A control row's gain is what re-fitting an LDA on fewer "
              "classes gains; the adapted backbone's own gain is its row minus its control's.")]
    for preset, c in report["chosen"].items():
        d = c["default"]
        lines += ["", f"## {preset} ({len(c['runs'])} run{'s' if len(c['runs']) > 1 else ''}: "
                  + ", ".join(f"`{r}`" for r in c["runs"]) + ")", "",
                  "| space-i features | beta | gamma | val | test | test vs today | test per run |",
                  "|---|---:|---:|---:|---:|---:|---|",
                  f"| today (no space-i evidence) | {d['beta']:g} | 0 | {pct(100 * d['val'])} | "
                  f"{pct(100 * d['test'])} | | "
                  + ", ".join(pct(100 * t) for t in d["test_per_run"]) + " |"]
        for kind in FEATURES:
            p = c["per_features"][kind]
            name = kind + (" (control)" if kind not in CONTROLS else "")
            lines.append(f"| {name} | {p['beta']:g} | {_gamma(p['gamma'])} | {pct(100 * p['val'])} | "
                         f"{pct(100 * p['test'])} | {100 * (p['test'] - d['test']):+.2f} | "
                         + ", ".join(pct(100 * t) for t in p["test_per_run"]) + " |")
        best = c["chosen"]
        lines += ["", (f"Chosen on validation: {best['features']}, beta {best['beta']:g}, gamma "
                       f"{_gamma(best['gamma'])} (test {pct(100 * best['test'])}, "
                       f"{100 * (best['test'] - d['test']):+.2f} against today)."
                       if best["gamma"] != 0.0 else
                       f"Chosen on validation: no space-i evidence, beta {best['beta']:g} "
                       f"(test {pct(100 * best['test'])}).")]
        for kind, control in CONTROLS.items():
            a, b = c["per_features"][kind], c["per_features"][control]
            lines.append(f"- {kind} against its control ({control}): "
                         f"{100 * (a['val'] - b['val']):+.2f} validation, "
                         f"{100 * (a['test'] - b['test']):+.2f} test.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = finished_runs_parser(__doc__)
    args = parser.parse_args(argv)
    if args.render_only:
        if not args.out.is_file():
            parser.error(f"--render-only: {args.out} does not exist; measure runs first")
        report = json.loads(args.out.read_text())
    else:
        if not args.run_dirs:
            parser.error("give the finished runs, or --render-only")
        # a run measured before keeps its points: add runs one at a time
        report = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
        report["gammas"] = GAMMAS
        for run_dir in args.run_dirs:
            report["runs"][str(run_dir)] = measure(run_dir)
            write_json_atomic(args.out, choose(report))
    report = choose(report)
    report["controls"] = CONTROLS  # each adapted feature set's frozen control, for results.py
    write_json_atomic(args.out, report)
    write_text_atomic(args.out.with_suffix(".md"), render(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
