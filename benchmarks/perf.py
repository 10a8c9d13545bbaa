"""Performance of PROTEUS against plain passes, measured in one process on the same inputs.

    python benchmarks/perf.py                       # T = 1 2 5 10 20, writes docs/performance.*
    python benchmarks/perf.py --tasks 1 10 50 --out /tmp/perf.json --no-doc

On the vision preset's backbone (EfficientNet-Lite0 at 64 px, the preset's low-rank targets,
rank, head width and signature features) a PROTEUS model learns T synthetic tasks of 2 classes
(the ``synthetic`` reader at 64 px: the cost of a pass does not depend on what the images show,
and synthetic data gives any number of tasks). After each T in ``--tasks`` it measures:

* predict with retrieval on ``--n`` images (a fresh context: nothing cached) / one plain
  EfficientNet-Lite0 pass over the same images (a separately built backbone without units);
* a PROTEUS training step (pool of T-1 tasks, transfer weights, penalties) / a single-LoRA step
  (seq-lora's units on the same targets and rank), each the median over the task's steps;
* signature bytes per task, the model directory's serving and growth parts, peak RSS, and on
  CUDA the peak GPU memory.

Every time is the median of ``--repeats`` interleaved runs; ratios are of medians taken in this
one process. Results go to JSON, and (unless ``--no-doc``) to ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from proteus.assemble import assemble, build_backbone, build_learner, make_context  # noqa: E402
from proteus.backbones import embed  # noqa: E402
from proteus.config import Component, load_config  # noqa: E402
from proteus.data import DATASETS, LabeledData  # noqa: E402
from proteus.learners import LEARNERS  # noqa: E402
from proteus.learners.proteus import Proteus  # noqa: E402
from proteus.storage import GROW, SERVE, read_manifest, save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/offline/vision-fmnist-mnist.yaml"


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class StepTimer:
    """Wraps a learner's ``_fit`` to time each optimiser step (via its loss closure's calls)."""

    def __init__(self, learner):
        self.learner, self.steps = learner, []
        real = learner._fit

        def timed(params, head, items, targets, prefix, seed, extra_loss=None, **kw):
            last = [time.perf_counter()]

            def extra():
                now = time.perf_counter()
                self.steps.append(now - last[0])
                last[0] = now
                return list(extra_loss()) if extra_loss else []

            return real(params, head, items, targets, prefix, seed, extra_loss=extra, **kw)

        learner._fit = timed

    def take(self) -> float:
        # a task's first interval also holds its set-up (optimiser, first-call warm-up)
        steps, self.steps = (self.steps[1:] if len(self.steps) > 1 else self.steps), []
        return statistics.median(steps) if steps else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--n", type=int, default=1000, help="images to predict")
    parser.add_argument("--per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1993)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/performance.json")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/performance.md")
    parser.add_argument("--demo-runs", type=int, default=0, metavar="N",
                        help="also time the demo (proteus run on the vision preset, as `make "
                        "demo` runs it) N times in a child process: median wall time, peak RSS")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render docs/performance.md from --out without measuring")
    args = parser.parse_args(argv)
    console = Console()
    if args.render_only:
        result = json.loads(args.out.read_text())
        console.print(table(result))
        (ROOT / "docs/performance.md").write_text(render(result, _longer_runs()))
        return 0
    T = max(args.tasks)
    torch.manual_seed(args.seed)

    # the preset's backbone and PROTEUS options, on synthetic 64 px tasks of 2 classes
    config = load_config(PRESET, [
        f"seed={args.seed}", "progress=false", f"device={args.device}",
        f"data=[{{name: synthetic, num_classes: {2 * T}, samples_per_class: "
        f"{args.per_class + 10}, image_size: 64, noise: 0.3, seed: 1}}]",
        f"scenario={{num_tasks: {T}, train_per_class: {args.per_class}}}",
        f"learner.epochs={args.epochs}"])
    run = assemble(config)
    learner, ctx = run.learner, run.ctx
    device = run.device
    plain, _ = build_backbone(config.backbone, device)
    probe = DATASETS.build("synthetic", {"num_classes": 4, "samples_per_class": args.n // 4 + 1,
                                         "image_size": 64, "noise": 0.3, "seed": 7})
    images = probe.items[: args.n]
    ids = -1 - np.arange(len(images))
    # a single LoRA on the same targets, rank and recipe: seq-lora with PROTEUS's unit options
    shared = LEARNERS.get("seq-lora").options.model_fields
    single_options = {k: v for k, v in config.learner.options.items() if k in shared}
    single = build_learner(Component.of(LEARNERS, {"name": "seq-lora", **single_options},
                                        "learner"),
                           build_backbone(config.backbone, device)[0], config.seed)
    single_ctx = make_context(single, seed=config.seed, batch_size=config.eval.batch_size,
                              progress=False)
    proteus_steps, single_steps = StepTimer(learner), StepTimer(single)

    rows, learn_s = [], []
    for task in run.scenario.tasks:
        t0 = time.perf_counter()
        outcome = learner.learn_task(task, ctx)
        learn_s.append(time.perf_counter() - t0)
        step = proteus_steps.take()
        single.learn_task(task, single_ctx)
        lora_step = single_steps.take()
        k = task.index + 1
        if k not in args.tasks:
            continue
        data = LabeledData(images, np.zeros(len(images), np.int64),
                           run.scenario.class_names, "image", ids=ids)

        def predict():
            learner.predict(data, make_context(learner, seed=config.seed,
                                               batch_size=config.eval.batch_size,
                                               progress=False))

        def plain_pass():
            embed(plain, images, config.eval.batch_size, progress=False)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        predict(), plain_pass()  # warm-up: lazy caches (whitened means), thread pools
        predict_s, plain_s = [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            predict_s.append(_median_time(predict, 1))
            plain_s.append(_median_time(plain_pass, 1))
        with tempfile.TemporaryDirectory() as tmp:
            save_model(Path(tmp) / "m", learner=learner, spec=_spec(run), fresh=True)
            files = read_manifest(Path(tmp) / "m")["files"]
        row = {
            "tasks": k,
            "predict_s": statistics.median(predict_s), "plain_pass_s": statistics.median(plain_s),
            "predict_over_plain": statistics.median(predict_s) / statistics.median(plain_s),
            "per_sample_predict_ms": 1000 * statistics.median(predict_s) / len(images),
            "train_step_ms": 1000 * step, "single_lora_step_ms": 1000 * lora_step,
            "train_step_over_single_lora": step / lora_step,
            "learn_task_s": learn_s[-1],
            "signature_bytes_per_task": int(outcome.extras["signature_bytes"]),
            "signature_shared_bytes": int(outcome.extras["signature_shared_bytes"]),
            "serve_bytes": files[SERVE]["bytes"], "grow_bytes": files[GROW]["bytes"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
        console.print(f"T={k}: predict/plain {row['predict_over_plain']:.2f}x, "
                      f"step/single-LoRA {row['train_step_over_single_lora']:.2f}x")

    result = {"command": "python benchmarks/perf.py " + " ".join(argv or sys.argv[1:]),
              "device": str(device), "threads": torch.get_num_threads(),
              "n_images": len(images), "repeats": args.repeats, "epochs": args.epochs,
              "per_class": args.per_class, "learner": config.learner.resolved(),
              "backbone": config.backbone.resolved(), "rows": rows,
              "learn_s_per_task": learn_s, "paper_scale": paper_scale_bytes()}
    if args.demo_runs:
        result["demo"] = time_demo(args.demo_runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(table(result))
    if not args.no_doc:
        (ROOT / "docs/performance.md").write_text(render(result, _longer_runs()))
    return 0


class _PaperScaleState:
    """PROTEUS's growth statistics at the paper's scale (ViT-B/16: d = 768, M = 10,000 random
    features, 200 classes, class-Gaussian signatures on the embedding), with PROTEUS's storage
    rules, so that ``save_model`` writes them exactly as it would a real model's."""

    grow_keys = Proteus.grow_keys
    compact_keys = Proteus.compact_keys
    symmetric_keys = Proteus.symmetric_keys

    def __init__(self, d: int, m: int, classes: int):
        from proteus.heads import RidgeHead
        from proteus.stats import ClassStats

        self.head = RidgeHead(d, m, seed=0)
        self.head.Q = torch.zeros(m, classes, dtype=torch.float64)
        self.head.W_out = torch.zeros(m, classes, dtype=torch.float64)
        self.stats = ClassStats(d, classes)

    def state(self):
        tensors, meta = self.head.state()
        tensors.update(self.stats.state("sig.stats."))
        return tensors, {"head": meta, "tasks_learned": 10}


def paper_scale_bytes(d: int = 768, m: int = 10_000, classes: int = 200) -> dict:
    """Bytes of the growth part PROTEUS saves at paper scale (written and measured; the
    statistics' values do not change their size)."""
    from proteus.storage import SaveSpec

    learner = _PaperScaleState(d, m, classes)
    spec = SaveSpec(backbone_config={}, backbone_fingerprint="", learner_config={},
                    class_names=[str(c) for c in range(classes)],
                    class_order=list(range(classes)))
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / "m", learner=learner, spec=spec, fresh=True)
        files = read_manifest(Path(tmp) / "m")["files"]
    return {"d": d, "M": m, "classes": classes, "grow_bytes": files[GROW]["bytes"]}


def time_demo(runs: int) -> dict:
    """Wall time and peak RSS of the demo run, each in a fresh child process (the command
    `make demo` runs, with the progress bars off), ``runs`` times; medians."""
    walls, rss = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            # a fresh interpreter per run, so the peak RSS is that run's alone
            code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                    "rc = subprocess.call(sys.argv[1:]); "
                    "print(time.perf_counter() - t, "
                    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
            out = subprocess.run(
                [sys.executable, "-c", code, sys.executable, "-m", "proteus", "run", str(PRESET),
                 "--set", "progress=false", "--output-dir", tmp, "--name", f"demo{i}"],
                capture_output=True, text=True, cwd=ROOT)
            wall, peak, rc = out.stdout.split()[-3:]
            if int(rc):
                raise SystemExit(f"the demo run failed:\n{out.stderr[-3000:]}")
            walls.append(float(wall))
            rss.append(int(peak) / 1024)
    return {"runs": runs, "wall_s": walls, "peak_rss_mb": rss,
            "median_wall_s": statistics.median(walls), "median_peak_rss_mb": statistics.median(rss)}


def _longer_runs() -> list[dict]:
    """Long task sequences measured apart (``--out docs/performance-<T>.json --no-doc``)."""
    return [json.loads(p.read_text()) for p in sorted((ROOT / "docs").glob("performance-*.json"))]


def _spec(run):
    from proteus.engine import save_spec

    return save_spec(run)


COLUMNS = [("tasks", "T", "{:d}"), ("predict_over_plain", "predict / plain pass", "{:.2f}x"),
           ("per_sample_predict_ms", "predict ms/image", "{:.2f}"),
           ("train_step_over_single_lora", "train step / single LoRA", "{:.2f}x"),
           ("learn_task_s", "learn task s", "{:.1f}"),
           ("signature_bytes_per_task", "signature B/task", "{:,}"),
           ("serve_bytes", "serve MB", "{:.1f}"), ("grow_bytes", "grow MB", "{:.1f}"),
           ("peak_rss_mb", "peak RSS MB", "{:.0f}")]


def _cell(key: str, fmt: str, row: dict) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if key in ("serve_bytes", "grow_bytes"):
        value = value / 1e6
    return fmt.format(value)


def table(result: dict) -> Table:
    out = Table(title=f"PROTEUS performance ({result['device']}, {result['n_images']} images)")
    for _, title, _ in COLUMNS:
        out.add_column(title, justify="right")
    for row in result["rows"]:
        out.add_row(*(_cell(k, f, row) for k, _, f in COLUMNS))
    return out


def render(result: dict, longer: list[dict] | None = None) -> str:
    lines = ["# Performance", "",
             "Generated by `benchmarks/perf.py` from `docs/performance.json`; do not edit by hand.",
             "", f"Command: `{result['command']}` (device {result['device']}, "
             f"{result['threads']} threads, median of {result['repeats']} interleaved runs, "
             f"{result['n_images']} images at 64 px).", "",
             "| " + " | ".join(t for _, t, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_cell(k, f, row) for k, _, f in COLUMNS) + " |")
    learn = result["learn_s_per_task"]
    lines += ["", f"Learn time per task over the {len(learn)}-task sequence (s): "
              + ", ".join(f"{v:.1f}" for v in learn) + ".", ""]
    for extra in longer or []:
        lines += [f"## {len(extra['learn_s_per_task'])} tasks", "",
                  f"Command: `{extra['command']}` ({extra['n_images']} images, "
                  f"{extra['per_class']} training images per class).", "",
                  "| " + " | ".join(t for _, t, _ in COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(k, f, row) for k, _, f in COLUMNS) + " |"
                  for row in extra["rows"]]
        per_task = extra["learn_s_per_task"]
        lines += ["", "Learn time per task (s): " + ", ".join(f"{v:.1f}" for v in per_task)
                  + ".", ""]
    lines += ["## Targets (the performance issue)", "",
              "| target | measured | met |", "|---|---|---|"]
    for name, value, ok in targets(result):
        lines.append(f"| {name} | {value} | {'yes' if ok else 'no'} |")
    missed = [name for name, _, ok in targets(result) if not ok]
    if missed:
        lines += ["", "Why the missed ones are missed, in the current default:", ""]
        lines += [f"- *{name}*: {why}" for name, why in REASONS.items()
                  if any(m.startswith(name) for m in missed)]
        lines.append("")
    return "\n".join(lines) + "\n"


#: why a target is missed (printed for the missed ones only), keyed by the target's first words
REASONS = {
    "predict / plain pass": "retrieval reads frozen features of every block, the adapted ones "
    "included, so the stages that carry units run twice (frozen for retrieval, adapted for the "
    "class); everything else runs once. The cost is one pass plus the adapted stages' share of "
    "it, whatever T is.",
    "growth part": "the class scatter (d x d over the multi-block signature features) and the "
    "ridge Gram (M x M), each stored as a float32 upper triangle.",
    "paper-scale growth part": "the ridge Gram alone is M (M + 1) / 2 float32 values: 200 MB at "
    "M = 10,000. It fits 100 MB for M <= 7,071 (a smaller M at equal accuracy, to be measured "
    "on the paper's benchmarks with a GPU) or with a factorised Gram; neither is the default.",
    "demo <=": "the demo trains the units for 3 epochs on 200 images a class and embeds every "
    "sample through EfficientNet-Lite0 at 64 px twice (frozen for the signatures, adapted for "
    "the head); the per-task timing in its results.json says where the time goes. The default "
    "(and so its cost) is the evidence issue's to settle first.",
    "demo peak RSS": "as for the benchmark's process below.",
    "peak RSS": "the libraries (torch, transformers) hold about 0.5 GB before any work; on top, "
    "the frozen-feature and frozen-stage caches of the run and d x d float64 temporaries while "
    "the shared precision is refactored after each task.",
}


def targets(result: dict) -> list[tuple[str, str, bool]]:
    """The issue's targets, judged on the rows (the T = 10 row where one T is meant)."""
    rows = {r["tasks"]: r for r in result["rows"]}
    out = []
    at = rows.get(10) or rows[max(rows)]
    out.append((f"predict / plain pass <= 1.5x at T = {at['tasks']}",
                f"{at['predict_over_plain']:.2f}x", at["predict_over_plain"] <= 1.5))
    if len(rows) > 1:
        lo, hi = rows[min(rows)], rows[max(rows)]
        growth = hi["per_sample_predict_ms"] / lo["per_sample_predict_ms"]
        out.append((f"flat in T: per-image predict time, T = {hi['tasks']} / T = {lo['tasks']}"
                    " <= 1.2", f"{growth:.2f}", growth <= 1.2))
    out.append(("serving part <= 15 MB", f"{at['serve_bytes'] / 1e6:.1f} MB",
                at["serve_bytes"] <= 15e6))
    out.append(("growth part <= 40 MB", f"{at['grow_bytes'] / 1e6:.1f} MB",
                at["grow_bytes"] <= 40e6))
    paper = result.get("paper_scale")
    if paper:
        out.append((f"paper-scale growth part (d = {paper['d']}, M = {paper['M']:,}) <= 100 MB",
                    f"{paper['grow_bytes'] / 1e6:.1f} MB", paper["grow_bytes"] <= 100e6))
    peak = max(r["peak_rss_mb"] for r in result["rows"])
    out.append(("peak RSS <= 1 GB (this benchmark's process)", f"{peak:.0f} MB", peak <= 1024))
    demo = result.get("demo")
    if demo:
        out.append((f"demo <= 90 s (median of {demo['runs']})", f"{demo['median_wall_s']:.0f} s",
                    demo["median_wall_s"] <= 90))
        out.append(("demo peak RSS <= 1 GB", f"{demo['median_peak_rss_mb']:.0f} MB",
                    demo["median_peak_rss_mb"] <= 1024))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
