"""How much SD-LoRA's magnitude restart rescales each finished task's update, from a saved run.

    python benchmarks/diagnose_sd_lora.py runs/bench/vision/sd-lora-ca-s1993

The authors' code restarts every old task's magnitude at 0.8 when a task begins, with the
direction divided by ||B_j||_F ||A_j||_F. A task's update at the end of its own training is
B_j A_j (its learnable scale folded into B_j); the next task starts it at 0.8 B_j A_j /
(||B_j|| ||A_j||), i.e. multiplied by 0.8 / (||B_j|| ||A_j||). Where B stays small (few SGD steps
from B = 0), that factor is far above 1: every finished task's update jumps when the next task
begins, old classes' features move, and class statistics stored for them (classifier alignment)
go stale. Prints, per task, the factor over the adapted layers (median, min, max), the final
magnitude, and each task's final class-IL accuracy from the run's results.json.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory of sd-lora or sd-lora-ca "
                                               "with a saved model")
    args = parser.parse_args(argv)
    model = proteus.load_model(args.run / "model", device="cpu")
    learner = model.learner
    if not hasattr(learner.options, "magnitude_init"):
        parser.error(f"{args.run}: not an sd-lora run (learner {type(learner).__name__})")
    init = learner.options.magnitude_init
    if init is None:
        parser.error(f"{args.run}: magnitudes carried over (magnitude_init null): no restart")
    layers = list(learner.pool.layers.values())
    T = len(layers[0].task_range)
    results = json.loads((args.run / "results.json").read_text())
    final = [row[-1] for row in results["accuracy_matrix"]]  # row k: task k after each task
    table = Table(title=f"{args.run.name}: factor {init} / (||B_j|| ||A_j||) per finished task")
    for col in ("task", "median", "min", "max", "final magnitude", "final class-IL"):
        table.add_column(col, justify="right")
    for j in range(T):
        factors = np.array([init / float(layer.task_norms()[j]) for layer in layers])
        mags = [float(layer.magnitudes(T - 1)[j]) for layer in layers] if j < T - 1 else []
        table.add_row(str(j), f"{np.median(factors):.2f}", f"{factors.min():.2f}",
                      f"{factors.max():.2f}", f"{np.mean(mags):.3f}" if mags else "-",
                      f"{100 * final[j]:.1f}" if final[j] is not None else "-")
    Console().print(table)
    m = results["metrics"]
    print(f"final class-IL {100 * m['final_accuracy']:.2f}, task-IL "
          f"{100 * m['task_il_accuracy']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
