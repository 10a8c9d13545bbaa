"""How far do the frozen features go? The evidence issue's missed targets, measured.

    python benchmarks/ceiling.py --presets vision text --seeds 1993 1994 1995

``proteus`` decides across tasks on frozen features: its class Gaussians (one covariance shared
by every class, on the embedding plus every block's pooled output) pick the two most likely
tasks, and the adapted heads only re-rank those two (``docs/rerank.md``). Its final class-IL
accuracy is then bounded by how well *any* classifier on those frozen features tells apart
classes of different tasks. This script measures that bound. On each preset's frozen features
and split (the ``lda`` control's preset, with ``scenario.val_fraction``, so every row trains
on the training part only and the same validation and test samples score it), it fits:

* ``lda, streaming``: the ``lda`` control, task by task, as it runs (PROTEUS's class Gaussians
  are the same model);
* ``logistic, joint``: multinomial logistic regression over every class, fitted on every
  task's training samples at once, its inverse regularisation C chosen on validation;
* ``mlp, joint``: a one-hidden-layer network (512 units), likewise joint, its L2 weight
  chosen on validation.

The joint rows see every task's data together, which no continual learner may: they are the
ceiling of a head on these features, linear and not, not continual methods. For each row it
reports final class-IL accuracy and task retrieval (the predicted class belongs to the right
task), on validation and test. Writes ``docs/ceiling.json`` (merged by preset and seed) and
``docs/ceiling.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
from proteus.assemble import assemble  # noqa: E402
from proteus.data import stack  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402

PRESETS = {"vision": "configs/offline/baselines/lda-vision.yaml",
           "text": "configs/offline/baselines/lda-text.yaml"}
VAL_FRACTION = 0.1  # the fraction every validation tune of these presets held out
#: the joint heads and the grid each one's setting is chosen from, on validation
GRIDS = {"logistic, joint": ("C", [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]),
         "mlp, joint": ("alpha", [1e-5, 1e-3, 1e-1])}
ROWS = ["lda, streaming", *GRIDS]


def joint_head(name: str, value: float, seed: int):
    """The joint head ``name`` at its grid value; features standardised on the training part."""
    if name == "logistic, joint":
        model = LogisticRegression(C=value, max_iter=2000)
    elif name == "mlp, joint":
        model = MLPClassifier(hidden_layer_sizes=(512,), alpha=value, max_iter=200,
                              random_state=seed)
    else:
        raise ValueError(f"unknown joint head {name!r}; known: {sorted(GRIDS)}")
    return make_pipeline(StandardScaler(), model)


def accuracies(pred: np.ndarray, labels: np.ndarray, task_of: np.ndarray) -> dict[str, float]:
    """Class-IL accuracy and task retrieval (predicted class in the right task), percent."""
    return {"class_il": float(100 * np.mean(pred == labels)),
            "retrieval": float(100 * np.mean(task_of[pred] == task_of[labels]))}


def fit_joint(name: str, seed: int, train: tuple, val: tuple, test: tuple,
              task_of: np.ndarray) -> dict:
    """Fit ``name`` at every grid value on ``train``; keep the best validation accuracy's (the
    first on ties), and score it on ``test``. Test labels never enter the choice."""
    key, grid = GRIDS[name]
    tried = []
    for value in grid:
        model = joint_head(name, value, seed).fit(*train)
        tried.append((accuracies(model.predict(val[0]), val[1], task_of)["class_il"], value,
                      model))
    best = max(tried, key=lambda t: t[0])  # max keeps the first of equal scores
    model = best[2]
    return {"setting": {key: best[1]},
            "grid": {str(v): acc for acc, v, _ in tried},
            "val": accuracies(model.predict(val[0]), val[1], task_of),
            "test": accuracies(model.predict(test[0]), test[1], task_of)}


def measure(preset: str, seed: int, console: Console) -> dict:
    """Every row of ``ROWS`` on ``preset``'s frozen features at ``seed``."""
    config = proteus.load_config(ROOT / PRESETS[preset],
                                 [f"seed={seed}", f"scenario.val_fraction={VAL_FRACTION}",
                                  "progress=false"])
    run = assemble(config)
    tasks, learner, ctx = run.scenario.tasks, run.learner, run.ctx
    task_of = np.zeros(max(max(t.classes) for t in tasks) + 1, dtype=int)
    for k, t in enumerate(tasks):
        task_of[list(t.classes)] = k
    out = {"preset": preset, "seed": seed, "config": PRESETS[preset],
           "val_fraction": VAL_FRACTION, "rows": {}}
    t0 = time.perf_counter()
    with console.status(f"{preset} · seed {seed}: frozen features and lda, task by task"):
        for t in tasks:
            learner.learn_task(t, ctx)
        parts = {}
        for split in ("train", "val", "test"):
            data = stack([getattr(t, split) for t in tasks])
            parts[split] = (learner.features(data, ctx), data.labels)
    row = {}
    for split in ("val", "test"):
        pred = np.argmax(learner.scores(stack([getattr(t, split) for t in tasks]), ctx), 1)
        row[split] = accuracies(pred, parts[split][1], task_of)
    out["rows"]["lda, streaming"] = row
    for name in GRIDS:
        with console.status(f"{preset} · seed {seed}: {name}"):
            out["rows"][name] = fit_joint(name, seed, parts["train"], parts["val"],
                                          parts["test"], task_of)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with ``new`` replacing any entry of the same preset and seed."""
    fresh = {(r["preset"], r["seed"]) for r in new}
    return sorted([r for r in old if (r["preset"], r["seed"]) not in fresh] + new,
                  key=lambda r: (list(PRESETS).index(r["preset"]), r["seed"]))


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def render(runs: list[dict]) -> str:
    lines = ["# How far the frozen features go", "",
             ("Written by `benchmarks/ceiling.py` from `docs/ceiling.json` (its docstring has the "
             "protocol). On each preset's frozen features (the embedding plus every block's "
             "pooled output, what `proteus` and `lda` decide with) and its validation split "
             f"({VAL_FRACTION:g} of every class's training samples, held out), final class-IL "
             "accuracy and task retrieval (the predicted class is in the right task), percent, "
             "mean ± std over the seeds. The joint rows fit every task's training data at once, "
             "which no continual learner may: they bound what a head on these features can do. "
             "Their setting is chosen on validation from the grid shown."), ""]
    for preset in PRESETS:
        mine = [r for r in runs if r["preset"] == preset]
        if not mine:
            continue
        seeds = ", ".join(str(r["seed"]) for r in mine)
        lines += [f"## {preset}: `{mine[0]['config']}`, seeds {seeds}", "",
                  ("| head | class-IL (val / test) | task retrieval (val / test) | "
                   "setting chosen per seed |"), "|---|---:|---:|---|"]
        for name in ROWS:
            got = [r["rows"][name] for r in mine if name in r["rows"]]
            if not got:
                continue
            cells = [" / ".join(mean_std([g[s][m] for g in got]) for s in ("val", "test"))
                     for m in ("class_il", "retrieval")]
            chosen = ", ".join(f"{k} {v:g}" for g in got for k, v in g.get("setting", {}).items())
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {chosen or '—'} |")
        lines.append("")
    lines += ["Rerun: `python benchmarks/ceiling.py --presets "
              + " ".join(sorted({r['preset'] for r in runs}, key=list(PRESETS).index))
              + " --seeds " + " ".join(str(s) for s in sorted({r["seed"] for r in runs}))
              + "`.", ""]
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
            for col in ("head", "class-IL val / test", "retrieval val / test", "setting"):
                table.add_column(col)
            for name, row in got["rows"].items():
                table.add_row(name, *(f"{row['val'][m]:.2f} / {row['test'][m]:.2f}"
                                      for m in ("class_il", "retrieval")),
                              str(row.get("setting", "—")))
            console.print(table)
    write_text_atomic(args.out.with_suffix(".md"), render(runs))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
