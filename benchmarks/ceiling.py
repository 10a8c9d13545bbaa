"""How far do heads on the frozen features go? The evidence issue's missed targets, measured.

    python benchmarks/ceiling.py --presets vision text --seeds 1993 1994 1995

``proteus`` decides across tasks on frozen features: its class Gaussians (one covariance
shared by every class, on the embedding plus every block's pooled output) pick the two most
likely tasks, and its adapted heads add evidence only between those two (``docs/rerank.md``).
Two quantities on the frozen features then tell where its misses come from: how well a head on
them classifies over every class at once, and how often the right task is among a head's two
most likely ones (what re-ranking the top two can at most recover). On each preset's frozen
features this script fits:

* ``lda, streaming``: the ``lda`` control, task by task. Its statistics are exact sums, so it
  is the same model as a fit on every task at once; it is the family of PROTEUS's class
  Gaussians (shared covariance), though PROTEUS normalises and shrinks differently;
* ``logistic, joint``: multinomial logistic regression over every class, fitted on every
  task's training samples at once;
* ``mlp, joint``: a one-hidden-layer network (512 units), likewise joint.

Protocol: the split is the ``lda`` preset's with ``scenario.val_fraction`` (0.1 of every
class's training samples held out). Each joint head's setting is chosen on that validation
split from its grid (first best on ties); then every head is fitted again on the training and
validation samples together, all of each class's training samples as the runs of
``docs/results.md`` train on, and scored on test. The test labels never enter a choice.

The joint heads see every task's data at once, which no continual learner may: they are
references for what a head on these features does, not continual methods, and not a proof that
no other head does better. For each head: final class-IL accuracy, task retrieval (the most
likely task is right) and top-2 task recall, percent. Writes ``docs/ceiling.json`` (merged by
preset and seed; each entry records its config fingerprint and grids) and ``docs/ceiling.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import proteus  # noqa: E402
from proteus.assemble import assemble, build_learner  # noqa: E402
from proteus.config import config_fingerprint  # noqa: E402
from proteus.data import stack  # noqa: E402
from proteus.metrics import mean_std  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402

PRESETS = {"vision": "configs/offline/baselines/lda-vision.yaml",
           "text": "configs/offline/baselines/lda-text.yaml",
           # the hard vision preset: its cross-task decision is where proteus trails joint-lora
           "vision-clutter": "configs/offline/baselines/lda-vision-clutter.yaml"}
VAL_FRACTION = 0.1  # the fraction every validation tune of these presets held out
#: the joint heads and the grid each one's setting is chosen from, on validation
GRIDS = {"logistic, joint": ("C", [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]),
         "mlp, joint": ("alpha", [1e-5, 1e-3, 1e-1])}
ROWS = ["lda, streaming", *GRIDS]
METRICS = {"class_il": "class-IL", "retrieval": "task retrieval", "top2": "top-2 task recall"}


def joint_head(name: str, value: float, seed: int):
    """The joint head ``name`` at its grid value; features standardised on its training data."""
    if name == "logistic, joint":
        model = LogisticRegression(C=value, max_iter=2000)
    elif name == "mlp, joint":
        model = MLPClassifier(hidden_layer_sizes=(512,), alpha=value, max_iter=200,
                              random_state=seed)
    else:
        raise ValueError(f"unknown joint head {name!r}; known: {sorted(GRIDS)}")
    return make_pipeline(StandardScaler(), model)


def accuracies(scores: np.ndarray, labels: np.ndarray, task_of: np.ndarray) -> dict[str, float]:
    """Class-IL accuracy, task retrieval (the best class's task is right) and top-2 task recall
    (the right task is one of the two whose best class scores highest), percent. ``scores``
    has one column per class id; ``task_of`` maps a class id to its task."""
    pred = np.argmax(scores, 1)
    tasks = int(task_of.max()) + 1
    per_task = np.full((len(scores), tasks), -np.inf)
    for k in range(tasks):
        per_task[:, k] = scores[:, task_of == k].max(1)
    top2 = np.argsort(-per_task, 1, kind="stable")[:, :2]
    truth = task_of[labels]
    return {"class_il": float(100 * np.mean(pred == labels)),
            "retrieval": float(100 * np.mean(task_of[pred] == truth)),
            "top2": float(100 * np.mean((top2 == truth[:, None]).any(1)))}


def class_scores(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """The fitted joint head's log-probabilities, one column per class id."""
    out = np.full((len(x), num_classes), -np.inf)
    out[:, model.classes_] = model.predict_log_proba(x)
    return out


def fit_joint(name: str, seed: int, train: tuple, val: tuple, test: tuple,
              task_of: np.ndarray) -> dict:
    """Fit ``name`` at every grid value on ``train``; keep the best validation class-IL's (the
    first on ties); fit it again on ``train`` and ``val`` together and score ``test``. The test
    samples enter nothing but that last score."""
    key, grid = GRIDS[name]
    num = len(task_of)
    tried = []
    for value in grid:
        model = joint_head(name, value, seed).fit(*train)
        tried.append((accuracies(class_scores(model, val[0], num), val[1], task_of), value))
    best_val, best = max(tried, key=lambda t: t[0]["class_il"])  # max keeps the first of ties
    final = joint_head(name, best, seed).fit(np.concatenate([train[0], val[0]]),
                                             np.concatenate([train[1], val[1]]))
    return {"setting": {key: best},
            "grid": {str(v): acc["class_il"] for acc, v in tried},
            "val": best_val,
            "test": accuracies(class_scores(final, test[0], num), test[1], task_of)}


def measure(preset: str, seed: int, console: Console) -> dict:
    """Every row of ``ROWS`` on ``preset``'s frozen features at ``seed``."""
    config = proteus.load_config(ROOT / PRESETS[preset],
                                 [f"seed={seed}", f"scenario.val_fraction={VAL_FRACTION}",
                                  "progress=false"])
    run = assemble(config)
    tasks, learner, ctx = run.scenario.tasks, run.learner, run.ctx
    if any(t.val is None or len(t.val) == 0 for t in tasks):
        raise SystemExit(f"{PRESETS[preset]}: a task has no validation samples at "
                         f"scenario.val_fraction={VAL_FRACTION}")
    # a class belongs to the task that holds its test data (as PROTEUS maps them)
    task_of = np.full(max(c for t in tasks for c in t.classes) + 1, -1)
    for k, t in enumerate(tasks):
        task_of[list(t.own_classes)] = k
    out = {"preset": preset, "seed": seed, "config": PRESETS[preset],
           "config_sha": config_fingerprint(config.resolved()),
           "val_fraction": VAL_FRACTION,
           "grids": {name: {key: values} for name, (key, values) in GRIDS.items()},
           "rows": {}}
    t0 = time.perf_counter()
    val_data, test_data = (stack([getattr(t, s) for t in tasks]) for s in ("val", "test"))
    with console.status(f"{preset} · seed {seed}: frozen features and lda, task by task"):
        for t in tasks:  # on the training part: the validation numbers
            learner.learn_task(t, ctx)
        row = {"val": accuracies(learner.scores(val_data, ctx), val_data.labels, task_of)}
        # then on all of each class's training samples, as the results' runs: the test numbers
        whole = build_learner(config.learner, run.backbone, config.seed)
        for t in tasks:
            whole.learn_task(dataclasses.replace(t, train=stack([t.train, t.val])), ctx)
        row["test"] = accuracies(whole.scores(test_data, ctx), test_data.labels, task_of)
        out["rows"]["lda, streaming"] = row
        parts = {"train": stack([t.train for t in tasks]), "val": val_data, "test": test_data}
        parts = {k: (learner.features(d, ctx), d.labels) for k, d in parts.items()}
    for name in GRIDS:
        with console.status(f"{preset} · seed {seed}: {name}"):
            out["rows"][name] = fit_joint(name, seed, parts["train"], parts["val"],
                                          parts["test"], task_of)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise SystemExit(f"{path}: not a ceiling store (expected an object with a 'runs' list)")
    return data["runs"]


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with ``new`` replacing any entry of the same preset and seed."""
    fresh = {(r["preset"], r["seed"]) for r in new}
    order = list(PRESETS)
    return sorted([r for r in old if (r["preset"], r["seed"]) not in fresh] + new,
                  key=lambda r: (order.index(r["preset"]) if r["preset"] in order
                                 else len(order), r["preset"], r["seed"]))


def render(runs: list[dict]) -> str:
    lines = ["# How far heads on the frozen features go", "",
             ("Written by `benchmarks/ceiling.py` from `docs/ceiling.json` (its docstring has "
              "the protocol). On each preset's frozen features (the embedding plus every "
              "block's pooled output, what `proteus` and `lda` decide across tasks with): final "
              "class-IL accuracy, task retrieval (the most likely task is right) and top-2 task "
              "recall (the right task is one of the two most likely, the two `proteus` "
              "re-ranks), percent, mean ± population std over the seeds. Validation: the "
              f"heads fitted on the training part ({VAL_FRACTION:g} of every class's training "
              "samples held out); test: fitted again on all of them, at the setting validation "
              "chose. The joint rows fit every task's data at once, which no continual learner "
              "may: references, not methods."), ""]
    for preset in dict.fromkeys(r["preset"] for r in runs):
        mine = [r for r in runs if r["preset"] == preset]
        seeds = [r["seed"] for r in mine]
        header = " | ".join(f"{label} (val / test)" for label in METRICS.values())
        lines += [f"## {preset}: `{mine[0]['config']}`, seeds {', '.join(map(str, seeds))}", "",
                  f"| head | {header} | setting chosen on validation |",
                  "|---|" + "---:|" * len(METRICS) + "---|"]
        for name in ROWS:
            got = {r["seed"]: r["rows"][name] for r in mine if name in r["rows"]}
            if not got:
                continue
            cells = []
            for metric in METRICS:
                stats = [mean_std([{"v": g[split][metric]} for g in got.values()])["v"]
                         for split in ("val", "test")]
                cells.append(" / ".join(f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}"
                                                              if len(got) > 1 else "")
                                        for s in stats))
            chosen = "; ".join(f"{k} {v:g} ({seed})" for seed, g in got.items()
                               for k, v in g.get("setting", {}).items()) or "—"
            if len(got) < len(mine):
                chosen += f" (seeds {', '.join(map(str, got))} only)"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {chosen} |")
        grids = mine[-1].get("grids", {})
        if grids:
            lines += ["", "Grids: " + "; ".join(
                f"{name}: {key} in {', '.join(f'{v:g}' for v in values)}"
                for name, spec in grids.items() for key, values in spec.items()) + "."]
        lines.append("")
    if runs:
        presets = " ".join(dict.fromkeys(r["preset"] for r in runs))
        seeds = " ".join(str(s) for s in sorted({r["seed"] for r in runs}))
        lines += [(f"Rerun: `python benchmarks/ceiling.py --presets {presets} --seeds {seeds}`, "
                   "then `python benchmarks/results.py --render-only` for the summary in "
                   "[results.md](results.md)."), ""]
    else:
        lines += ["Nothing measured yet: `python benchmarks/ceiling.py --presets vision text`.",
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1993])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ceiling.json")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the markdown from the JSON without measuring")
    args = parser.parse_args(argv)
    console = Console()
    runs = load(args.out)
    for preset in ([] if args.render_only else args.presets):
        for seed in args.seeds:
            got = measure(preset, seed, console)
            runs = merge(runs, [got])
            # written after every measurement, so an interrupted run keeps what it finished
            write_json_atomic(args.out, {"runs": runs})
            table = Table(title=f"{preset} · seed {seed} ({got['seconds']:.0f} s)")
            table.add_column("head")
            for label in METRICS.values():
                table.add_column(f"{label} val / test")
            table.add_column("setting")
            for name, row in got["rows"].items():
                table.add_row(name, *(f"{row['val'][m]:.2f} / {row['test'][m]:.2f}"
                                      for m in METRICS), str(row.get("setting", "—")))
            console.print(table)
    write_text_atomic(args.out.with_suffix(".md"), render(runs))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
