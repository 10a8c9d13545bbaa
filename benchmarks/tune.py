"""Choose settings on a validation split, never on the test data, and write down what was tuned.

    python benchmarks/tune.py configs/offline/vision-fmnist-mnist.yaml \\
        --grid learner.signature.reg_covar=1e-6,1e-4,1e-2 --grid learner.restrict_to_task=true,false \\
        --val-fraction 0.1 --seeds 1993 1994 --out docs/tuning/proteus-vision.json

Settings that only make sense together (a whole training recipe) are given as explicit points
instead, each a ``;``-separated list of overrides (keys a point leaves out keep the preset's
value)::

    python benchmarks/tune.py configs/offline/text-large.yaml --point "learner.epochs=2" \
        --point "learner.rank=8;learner.scale=1.0;learner.epochs=4" --out docs/tuning/x.json

Every point of the grid (the product of the ``--grid`` lists) runs the preset with
``scenario.val_fraction`` set, so a seeded share of every class's training samples is held out
and the model trains on the rest. The point with the highest mean *validation* final accuracy
over the seeds is chosen (ties: the first in grid order). Test accuracies are recorded beside,
for the report, and play no part in the choice. The JSON holds the preset, the grid, the
selection rule, every point's validation and test numbers per seed, and the chosen point; a
markdown table goes beside it. Point n at a seed runs in ``<runs-dir>/point<n>-s<seed>``; with
``--reuse`` a finished run there of exactly that config is read instead of rerun (an interrupted
tuning resumes where it stopped, a longer list of points reuses the shorter one's runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import proteus  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402

RULE = "highest mean validation final accuracy over the seeds; ties: first in grid order"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[key] = values.split(",")
    return grid


def parse_point(item: str) -> dict[str, str]:
    point: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in item.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"--point {item!r}: expected KEY=V;KEY=V...")
        point[key] = value
    return point


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def finished_run(config) -> dict | None:
    """The results of ``config``'s run where its directory holds a finished run of exactly this
    config (``--reuse``), else None."""
    path = Path(config.output_dir) / config.name / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    differ = config.differs_from(results.get("config", {}))
    if differ:
        print(f"{path}: not reused, its config differs in {', '.join(differ)}")
        return None
    print(f"{path}: reused")
    return results


def resolved_values(recorded: dict, keys: list[str]) -> dict:
    """The values a resolved config (:meth:`RunConfig.recorded`) gives the dotted ``keys``, so
    that a point that leaves a key to the preset still says what it ran after the preset
    changes (None where the config has no such key)."""
    out = {}
    for key in keys:
        node = recorded
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def tune(preset: Path, points: list[dict[str, str]], seeds: list[int], val_fraction: float,
         runs_dir: str, grid: dict[str, list[str]] | None = None, reuse: bool = False) -> dict:
    """Run every point (a dict of overrides) on validation; ``grid`` is only recorded. With
    ``reuse``, a point whose run directory already holds a finished run of the same config is
    read, not rerun."""
    keys = list(dict.fromkeys(k for point in points for k in point))
    measured = []
    for number, point in enumerate(points):
        per_seed = {}
        for seed in seeds:
            overrides = [f"{k}={v}" for k, v in point.items()] + [
                f"scenario.val_fraction={val_fraction}", f"seed={seed}", "progress=false",
                f"output_dir={runs_dir}", f"name=point{number}-s{seed}"]
            config = proteus.load_config(preset, overrides)
            results = (reuse and finished_run(config)) or proteus.run(config)
            per_seed[str(seed)] = {
                "val_final_accuracy": results["validation"]["metrics"]["final_accuracy"],
                "test_final_accuracy": results["metrics"]["final_accuracy"]}
        measured.append({"point": point, "resolved": resolved_values(config.recorded(), keys),
                         "seeds": per_seed,
                         "val_mean": statistics.mean(s["val_final_accuracy"]
                                                     for s in per_seed.values()),
                         "test_mean": statistics.mean(s["test_final_accuracy"]
                                                      for s in per_seed.values())})
    best = max(range(len(measured)), key=lambda i: (measured[i]["val_mean"], -i))
    return {"preset": str(preset), "grid": grid, "seeds": seeds, "val_fraction": val_fraction,
            "rule": RULE, "points": measured, "chosen": measured[best]["point"],
            "chosen_val": measured[best]["val_mean"], "chosen_test": measured[best]["test_mean"]}


def shown(value) -> str:
    """A resolved value as a point would spell it (a list in YAML flow, as typed)."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(f"'{v}'" if isinstance(v, str) else shown(v) for v in value) + "]"
    return str(value)


def cell(row: dict, key: str) -> str:
    """A point's value for ``key``: its own, else the preset's when it ran (italics), else
    blank (a record written before points kept their resolved values)."""
    if key in row["point"]:
        return row["point"][key]
    if key in row.get("resolved", {}):
        # HTML, not *...*: a regex's own "*" would end markdown's emphasis
        return f"<i>{shown(row['resolved'][key])}</i>"
    return ""


def render(result: dict) -> str:
    keys = list(dict.fromkeys(k for row in result["points"] for k in row["point"]))
    over = (f"Grid over {', '.join(keys)}" if result["grid"] else
            f"{len(result['points'])} points over {', '.join(keys)} (in italics or blank: the "
            "preset's value when the point ran)")
    lines = [f"# Tuning {result['preset']}", "",
             f"Written by `benchmarks/tune.py`. {over}; seeds "
             f"{', '.join(map(str, result['seeds']))}; validation: {result['val_fraction']} of "
             f"every class's training samples. Rule: {result['rule']}.", "",
             "| " + " | ".join(keys) + " | validation final % | test final % | chosen |",
             "|" + "---|" * (len(keys) + 3)]
    for row in result["points"]:
        chosen = "yes" if row["point"] == result["chosen"] else ""
        # a regex alternative's "|" would end the cell
        lines.append("| " + " | ".join(cell(row, k).replace("|", "\\|") for k in keys)
                     + f" | {100 * row['val_mean']:.2f} | {100 * row['test_mean']:.2f} | "
                     f"{chosen} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", type=Path)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--grid", action="append", metavar="KEY=V1,V2,...")
    how.add_argument("--point", action="append", metavar="KEY=V;KEY=V...")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1993])
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--runs-dir", default="runs/tune")
    parser.add_argument("--out", type=Path, required=True, help="JSON; the .md goes beside it")
    parser.add_argument("--reuse", action="store_true",
                        help="read a point's finished run from --runs-dir instead of rerunning "
                             "it, where its recorded config is the one this point runs")
    args = parser.parse_args(argv)
    if args.grid:
        grid = parse_grid(args.grid)
        points = grid_points(grid)
    else:
        grid, points = None, [parse_point(p) for p in args.point]
    result = tune(args.preset, points, args.seeds, args.val_fraction, args.runs_dir, grid,
                  reuse=args.reuse)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
