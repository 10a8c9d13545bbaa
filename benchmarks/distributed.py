"""Speed-up of N processes over 1 on one preset, and whether their results agree.

    python benchmarks/distributed.py                       # vision preset, 1 vs 2 processes
    python benchmarks/distributed.py --nproc 1 2 4 --repeats 3 --set learner.name=ranpac

Each process count runs the preset through ``proteus run --nproc N`` (torchrun, gloo on CPU),
interleaved over ``--repeats`` rounds; a 1-process run gets every CPU thread, an N-process run
``threads / N`` threads per process, so the comparison is at equal cores. Writes
``docs/distributed.json`` (every run's wall time and metrics) and renders its table into
``docs/distributed.md`` between the ``bench`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def run_once(preset: str, nproc: int, threads: int, sets: list[str], out: Path,
             name: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nproc)),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "proteus", "run", preset, "--nproc", str(nproc), "--name", name,
           "--output-dir", str(out), *sum((["--set", s] for s in sets), []),
           "--set", "progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / name / "results.json").read_text())
    return {"nproc": nproc, "wall_s": round(wall, 2),
            "train_s": round(sum(t["train_s"] for t in results["timing"]), 2),
            "eval_s": round(sum(t["eval_s"] for t in results["timing"]), 2),
            "accuracy_seen": results["accuracy_seen"], "metrics": results["metrics"]}


def render(data: dict) -> str:
    rows = []
    base = data["summary"][str(min(data["nproc"]))]
    for n in data["nproc"]:
        s = data["summary"][str(n)]
        rows.append(f"| {n} | {s['wall_s']:.1f} | {base['wall_s'] / s['wall_s']:.2f}x | "
                    f"{s['train_s']:.1f} | {s['eval_s']:.1f} | {100 * s['final']:.2f} | "
                    f"{100 * s['max_abs_diff']:.2f} |")
    return "\n".join([
        f"Command: `{data['command']}` ({data['threads']} CPU threads in all; median of "
        f"{data['repeats']} interleaved rounds).",
        "",
        "| processes | wall s | speed-up | learn s | eval s | final accuracy % | "
        "max difference to 1 process, points |",
        "|---|---|---|---|---|---|---|",
        *rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="configs/offline/vision-fmnist-mnist.yaml")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "docs" / "distributed.json"))
    p.add_argument("--no-doc", action="store_true", help="leave docs/distributed.md alone")
    args = p.parse_args(argv)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for n in args.nproc:
                run = run_once(args.preset, n, args.threads, args.set, Path(tmp), f"n{n}-r{r}")
                print(f"round {r + 1}/{args.repeats}, {n} process(es): {run['wall_s']:.1f} s, "
                      f"final {run['accuracy_seen'][-1]:.4f}", flush=True)
                runs.append(run)
    one = [r for r in runs if r["nproc"] == min(args.nproc)]
    summary = {}
    for n in args.nproc:
        mine = [r for r in runs if r["nproc"] == n]
        diff = max(abs(a - b) for r, o in zip(mine, one)
                   for a, b in zip(r["accuracy_seen"], o["accuracy_seen"]))
        summary[str(n)] = {key: statistics.median(r[key] for r in mine)
                           for key in ("wall_s", "train_s", "eval_s")}
        summary[str(n)].update(final=statistics.median(r["accuracy_seen"][-1] for r in mine),
                               max_abs_diff=diff)
    command = "python benchmarks/distributed.py " + " ".join(
        (["--preset", args.preset] if args.preset != p.get_default("preset") else [])
        + ["--nproc", *map(str, args.nproc), "--repeats", str(args.repeats)]
        + sum((["--set", s] for s in args.set), []))
    data = {"command": command, "preset": args.preset, "nproc": args.nproc,
            "repeats": args.repeats, "threads": args.threads, "sets": args.set,
            "summary": summary, "runs": runs}
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    table = render(data)
    print(table)
    if not args.no_doc:
        doc = ROOT / "docs" / "distributed.md"
        text = doc.read_text()
        head, rest = text.split(BEGIN, 1)
        doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
