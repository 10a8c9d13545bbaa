"""Head-swap control: each baseline's final features under analytic heads fitted over all classes.

    python benchmarks/head_swap.py --presets vision --seeds 1993
    python benchmarks/head_swap.py --learners inflora sd-lora --presets vision text --seeds 1994
    python benchmarks/head_swap.py --runs runs/bench --presets text --seeds 1993 1994 1995

Runs each learner's preset (``configs/offline/baselines/<learner>-<preset>.yaml``) through every
task, then takes the embedding its head reads after the last task (``Learner.embedding``) for
every training and test sample of the scenario and fits, over all classes at once:

* **NCM**: cosine nearest class mean (SimpleCIL's head);
* **ridge**: the ridge classifier of RanPAC / PROTEUS on the embedding itself (no random
  projection), lambda chosen on a split of the training data as there.

For a learner with classifier alignment (``-ca``, ``slca``) two more numbers test whether its
stored class Gaussians went stale, i.e. were estimated on a backbone that later tasks moved:

* **CA, fresh Gaussians**: the learner's own alignment (same options, same starting head) run
  once more on Gaussians re-estimated from the final features of every class;
* **drift**: for each class of an earlier task, the distance between its stored mean and its
  mean on the final features, in units of its final within-class standard deviation (root of
  the mean per-dimension variance), averaged over those classes. The last task's classes were
  stored on the final backbone, so their drift is zero.

With ``--runs``, the finished runs of ``benchmarks/results.py`` are measured instead (their saved
final model on their rebuilt scenario), so the head-swap rows cost no retraining.

Class-IL accuracy of the learner's own head beside the two analytic heads on the same features
separates representation quality (the analytic heads) from head calibration (the gap to the
learner's own head). The analytic heads see every task's training data at the end, which no
continual learner does: this is a diagnosis of the final features, not a continual method.
Writes ``docs/head_swap.json`` (merged by preset, learner and seed) and ``docs/head_swap.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import proteus  # noqa: E402
from proteus.assemble import assemble, make_context  # noqa: E402
from proteus.backbones.base import autocast_context  # noqa: E402
from proteus.config import config_fingerprint  # noqa: E402
from proteus.data import DataError, stack  # noqa: E402
from proteus.heads import RidgeHead  # noqa: E402
from proteus.learners.align import ClassAligner  # noqa: E402
from proteus.learners.base import argmax_within_task  # noqa: E402
from proteus.learners.simplecil import cosine_scores  # noqa: E402
from proteus.model import load_model  # noqa: E402
from proteus.registry import ConfigError  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402
from results import run_name  # noqa: E402

LEARNERS = ["seq-lora", "o-lora", "inflora", "sd-lora", "joint-lora"]


def measure(path: Path, seed: int, console: Console) -> dict:
    """Run the preset at ``path`` with ``seed``; class-IL of its own head and the two
    analytic heads on its final features (module docstring)."""
    config = proteus.load_config(path, [f"seed={seed}", "progress=false",
                                        "output_dir=runs/head-swap"])
    learner, preset = config.learner.name, path.stem
    run = assemble(config)
    with autocast_context(run.device, config.precision):
        for task in run.scenario.tasks:
            run.learner.learn_task(task, run.ctx)
            console.print(f"{preset} · {learner} · seed {seed}: task {task.index + 1}/"
                          f"{len(run.scenario.tasks)}")
    return {**swap_heads(run, seed), "config_sha": config.fingerprint()}


def measure_saved(run_dir: Path) -> dict:
    """The same measurement on a finished run (``benchmarks/results.py`` writes them under
    ``runs/bench/<preset>/``). Nothing is retrained."""
    run = load_saved(run_dir)
    # the run's config as results.py fingerprints its row, so a later rerun of the row at
    # another config is not shown beside these features
    try:
        recorded = json.loads((run_dir / "results.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"{run_dir}: no readable results.json with its config ({exc!r})"
                         ) from None
    return {**swap_heads(run, run.config.seed), "config_sha": config_fingerprint(recorded)}


def load_saved(run_dir: Path):
    """A finished run: its scenario rebuilt from the recorded config and split manifest, its
    learner (and ``ctx``) from the model it saved after the last task."""
    if not (run_dir / "config.yaml").is_file():
        raise SystemExit(f"{run_dir}: not a finished run's directory (no config.yaml)")
    config = proteus.load_config(run_dir / "config.yaml", ["progress=false"])
    # the run's own split manifest, not its scenario options: a recorded scenario.manifest may
    # be a path relative to where the run was started, and a class order that matches says
    # nothing about which samples each task drew (caps, val_fraction); reusing the manifest
    # checks the source and its sample count and takes exactly the run's ids
    manifest = run_dir / "split_manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"{run_dir}: no split_manifest.json to rebuild the run's scenario from")
    config.scenario = {**config.scenario, "manifest": str(manifest)}
    try:
        run = assemble(config, backbone=False, learner=False)
    except (ConfigError, DataError) as exc:
        raise SystemExit(f"{run_dir}: its scenario does not rebuild from the data here: {exc}"
                         ) from None
    model = load_model(run_dir / "model", device=config.device)
    if list(model.manifest["class_order"]) != list(run.scenario.class_order):
        raise SystemExit(f"{run_dir}: the saved model's class order differs from the run's "
                         "split manifest; the model is from another run")
    run.learner, run.backbone = model.learner, model.backbone
    run.ctx = make_context(model.learner, seed=config.seed, batch_size=config.eval.batch_size,
                           progress=False, num_tasks=len(run.scenario.tasks))
    return run


def swap_heads(run, seed: int) -> dict:
    """Own head against NCM and ridge fitted over all classes on ``run.learner``'s final
    embedding."""
    scenario, ctx, model = run.scenario, run.ctx, run.learner
    with autocast_context(run.device, run.config.precision):
        train = stack([t.train for t in scenario.tasks])
        test = stack([t.test for t in scenario.tasks])
        own = model.scores(test, ctx)
        x_train, x_test = model.embedding(train, ctx), model.embedding(test, ctx)
    if own is None or x_train is None:
        raise SystemExit(f"{run.config.learner.name}: no scores over all classes or no single "
                         "embedding")
    classes = [t.classes for t in scenario.tasks]
    true_task = np.concatenate([np.full(len(t.test), t.index) for t in scenario.tasks])
    n_classes = len(scenario.class_names)
    means = np.stack([x_train[train.labels == c].mean(0) for c in range(n_classes)])
    ncm = cosine_scores(x_test, means)
    ridge = RidgeHead(x_train.shape[1], proj_dim=0, seed=seed)
    ridge.update(x_train, train.labels, n_classes)
    ridge_scores = ridge.logits(x_test)

    def accuracy(scores: np.ndarray) -> float:
        return float((np.asarray(scores).argmax(1) == test.labels).mean())

    def task_il(scores: np.ndarray) -> float:
        return float((argmax_within_task(scores, true_task, classes) == test.labels).mean())

    result = {"own": accuracy(own), "ncm": accuracy(ncm), "ridge": accuracy(ridge_scores),
              "own_task_il": task_il(own), "ridge_lambda": ridge.lam}
    aligner = getattr(model, "aligner", None)
    if isinstance(aligner, ClassAligner) and bool(aligner.seen.any()):
        result.update(stale_gaussians(model, aligner, x_train, train.labels, x_test, seed,
                                      accuracy, set(scenario.tasks[-1].classes)))
    return result


def stale_gaussians(model, aligner: ClassAligner, x_train: np.ndarray, labels: np.ndarray,
                    x_test: np.ndarray, seed: int, accuracy, last: set) -> dict:
    """CA re-run on Gaussians of the final features, and the drift of the stored means
    (module docstring)."""
    fresh = ClassAligner(x_train.shape[1], aligner.o)
    fresh.add(x_train, labels)
    weight, bias, _ = fresh.align(*model._head_tensors(), seed)
    scores = (torch.as_tensor(x_test, dtype=weight.dtype, device=weight.device) @ weight.T
              + bias)
    drift = []
    for c in torch.nonzero(aligner.seen).flatten().tolist():
        if c in last:  # stored on the final backbone: no drift to measure
            continue
        xc = x_train[labels == c].astype(np.float64)
        spread = float(np.sqrt(xc.var(0, ddof=1).mean()))
        drift.append(float(np.linalg.norm(aligner.means[c].numpy() - xc.mean(0))) / spread)
    return {"ca_fresh": accuracy(scores.cpu().numpy()),
            "ca_drift": float(np.mean(drift)) if drift else 0.0}


def render(store: dict) -> str:
    lines = ["# Head-swap control", "",
             "Written by `benchmarks/head_swap.py` from `docs/head_swap.json`. Class-IL accuracy "
             "(percent, mean over the seeds run) of each baseline's own head, and of two "
             "analytic heads fitted over all classes on the same final features (the embedding "
             "its head reads after the last task, every task's training data): cosine nearest "
             "class mean (NCM) and ridge on the embedding. The analytic heads see all tasks' "
             "data at the end, so they measure the features, not a continual method. A large "
             "gap between the own head and the analytic heads is a calibration problem of the "
             "head; analytic heads far below frozen features (simplecil, ranpac in results.md) "
             "mean the representation itself lost information. For learners with classifier "
             "alignment: their alignment re-run on Gaussians of the final features (CA, fresh) "
             "and the drift of their stored class means, in final within-class standard "
             "deviations, over the classes of earlier tasks; a fresh CA far above the own head "
             "says the stored Gaussians went stale.", ""]
    for preset, learners in store.items():
        lines += [f"## {preset}", "",
                  "| learner | seeds | own head | NCM | ridge | own head, task given "
                  "| CA, fresh Gaussians | drift (sd) |",
                  "|---|---|---|---|---|---|---|---|"]
        for learner, seeds in learners.items():
            def mean(key: str, scale: float = 100) -> str:
                values = [s[key] for s in seeds.values() if key in s]
                if len(values) < len(seeds):  # measured before the column existed
                    return "–"
                return f"{scale * statistics.mean(values):.2f}"

            lines.append(f"| {learner} | {', '.join(sorted(seeds))} | {mean('own')} | "
                         f"{mean('ncm')} | {mean('ridge')} | {mean('own_task_il')} | "
                         f"{mean('ca_fresh')} | {mean('ca_drift', 1)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # text-large and text-relations-paired have few baseline presets of their own
    # (benchmarks/results.py runs the text ones on their data): measure their finished runs
    # with --runs
    parser.add_argument("--presets", nargs="+", default=["vision"],
                        choices=["vision", "text", "text-large", "text-relations-paired"])
    parser.add_argument("--learners", nargs="+", default=LEARNERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1993])
    parser.add_argument("--runs", type=Path, default=None,
                        help="measure the finished runs of benchmarks/results.py under RUNS "
                             "(it writes them to runs/bench) instead of training the learners "
                             "again; a learner may then also be one of its baseline variants, "
                             "e.g. 'inflora-ca, official form'; missing runs are skipped")
    parser.add_argument("--store", type=Path, default=ROOT / "docs/head_swap.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/head_swap.md")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    store = json.loads(args.store.read_text()) if args.store.exists() else {}
    for preset in args.presets:
        for learner in args.learners:
            for seed in args.seeds:
                if args.runs is not None:
                    run_dir = args.runs / preset / run_name(learner, seed)
                    if not (run_dir / "model").is_dir():
                        console.print(f"{run_dir}: no finished run with a saved model, skipped")
                        continue
                    result = measure_saved(run_dir)
                else:
                    path = ROOT / f"configs/offline/baselines/{learner}-{preset}.yaml"
                    if not path.is_file():
                        console.print(f"{path}: no such preset (measure its runs with --runs), "
                                      "skipped")
                        continue
                    result = measure(path, seed, console)
                console.print(f"{preset} · {learner} · seed {seed}: own "
                              f"{100 * result['own']:.2f}, NCM {100 * result['ncm']:.2f}, "
                              f"ridge {100 * result['ridge']:.2f}")
                store.setdefault(preset, {}).setdefault(learner, {})[str(seed)] = result
                write_json_atomic(args.store, store)  # each result kept once it is measured
    write_text_atomic(args.out, render(store) + "\n")
    console.print(render(store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
