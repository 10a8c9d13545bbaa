"""The ``proteus`` command: run a preset (or resume it), check one (dry run), list what is
registered, re-render a report; and on a saved model: learn a new task, predict, describe,
export the serving part, serve over HTTP."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .dist import DistributedError
from .registry import ConfigError

PRESET_DIRS = [Path("configs")]


def _run(args: argparse.Namespace, console: Console) -> int:
    from .config import load_config
    from .engine import run

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.name:
        overrides.append(f"name={args.name}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    config = load_config(args.config, overrides)
    run(config, console=console, resume=args.resume)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``proteus run --nproc N``: the same command under ``torchrun`` on this machine."""
    argv = [args.config, *sum((["--set", s] for s in args.set or []), [])]
    for flag, value in (("--seed", args.seed), ("--name", args.name),
                        ("--output-dir", args.output_dir)):
        if value is not None:
            argv += [flag, str(value)]
    if args.resume:
        argv.append("--resume")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={args.nproc}", "-m", "proteus", "run", *argv]
    return subprocess.run(cmd).returncode


def _learn(args: argparse.Namespace, console: Console) -> int:
    from .inputs import read_learn_data
    from .model import load_model
    from .storage import locked

    with locked(args.model_dir):
        model = load_model(args.model_dir, device=args.device, batch_size=args.batch_size)
        model.holds_lock = True
        model.progress = not args.quiet
        data = read_learn_data(args.data, model.modality, args.set or [])
        summary = model.learn(data, on_known=args.on_known)
    console.print(f"learned task {summary['task']}: {len(summary['new_classes'])} new classes "
                  f"({', '.join(summary['new_classes'][:8])}"
                  f"{' …' if len(summary['new_classes']) > 8 else ''}) from "
                  f"{summary['samples']} samples; {args.model_dir} is now at {summary['version']}",
                  highlight=False)
    if summary["skipped_known"]:
        console.print(f"left out known classes: {', '.join(summary['skipped_known'])}",
                      highlight=False)
    return 0


def _predict(args: argparse.Namespace, console: Console) -> int:
    from .inputs import read_inputs, write_predictions
    from .model import load_model

    model = load_model(args.model_dir, device=args.device, batch_size=args.batch_size)
    names, items = read_inputs(args.inputs, model.modality, column=args.column,
                               texts=args.text or [])
    write_predictions(model, names, items, fmt=args.format, output=args.output,
                      progress=not args.quiet, batch=args.batch_size)
    return 0


def _info(args: argparse.Namespace, console: Console) -> int:
    import json

    from .model import load_model

    info = load_model(args.model_dir, device="cpu").info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    table = Table(title=str(args.model_dir), title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    backbone = info["backbone"]
    table.add_row("learner", info["learner"])
    table.add_row("backbone", escape(", ".join(f"{k}={v}" for k, v in backbone.items())))
    table.add_row("backbone weights", str(info["backbone_fingerprint"]))
    table.add_row("tasks", str(info["tasks"]))
    table.add_row("classes", f"{info['classes']}: " + escape(", ".join(info["class_names"][:12]))
                  + (" …" if info["classes"] > 12 else ""))
    table.add_row("can learn more", "yes" if info["can_learn"] else "no")
    table.add_row("version", f"{info['version']} of {len(info['versions'])}")
    for v in info["versions"]:
        table.add_row("", escape(f"{v['version']}  {v['created']}  {v['tasks']} tasks, "
                                 f"{v['classes']} classes  {v.get('note', '')}"))
    size = info["bytes"]
    table.add_row("size", f"{size['version'] / 1e6:.1f} MB this version ("
                  + ", ".join(f"{k} {b / 1e6:.1f} MB" for k, b in size["files"].items())
                  + f"); {size['directory'] / 1e6:.1f} MB on disk")
    Console().print(table)
    return 0


def _export(args: argparse.Namespace, console: Console) -> int:
    from .model import load_model

    model = load_model(args.model_dir, device="cpu")
    if not args.serve:
        console.print("[bold red]error:[/] say what to export: --serve (the serving part)")
        return 2
    version = model.export_serve(args.output)
    console.print(f"wrote the serving part of {args.model_dir} to {args.output} ({version})")
    return 0


def _check(args: argparse.Namespace, console: Console) -> int:
    import json

    from .check import check, render
    from .config import load_config
    from .data import DataError

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = load_config(args.config, overrides)
    try:
        summary = check(config, build_backbone=args.backbone)
    except DataError as exc:
        console.print(f"[bold red]data error:[/] {escape(str(exc))}", highlight=False)
        return 2
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        render(summary, Console())  # the plan is the output: stdout, errors stay on stderr
    return 0


def _list(args: argparse.Namespace, console: Console) -> int:
    from .backbones import BACKBONES
    from .data import DATASETS
    from .learners import LEARNERS

    for title, registry in (("learners", LEARNERS), ("datasets", DATASETS),
                            ("backbones", BACKBONES)):
        table = Table(title=title, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("options")
        table.add_column("what it is")
        for entry in registry.entries():
            table.add_row(entry.name, ", ".join(entry.options.model_fields), entry.summary)
        console.print(table)
    presets = sorted(p for d in PRESET_DIRS if d.is_dir() for p in d.rglob("*.yaml"))
    table = Table(title="presets", title_justify="left")
    table.add_column("path")
    for p in presets:
        table.add_row(str(p))
    console.print(table)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    import json

    from .report import print_summary, render_run

    written = render_run(Path(args.run_dir))
    results = json.loads((Path(args.run_dir) / "results.json").read_text())
    print_summary(results, console=console)
    for path in written:
        console.print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proteus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a preset: learn every task, evaluate, report")
    p.add_argument("config", help="YAML preset, e.g. configs/offline/vision-fmnist-mnist.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set learner.name=simplecil (repeatable)")
    p.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    p.add_argument("--name", help="run name (directory under output_dir)")
    p.add_argument("--output-dir", help="where run directories go (default runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete task of an interrupted run")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="run as N processes on this machine (torchrun --standalone "
                   "--nproc-per-node N; see docs/distributed.md)")
    p.set_defaults(func=_run)
    p = sub.add_parser("learn", help="add one task of new classes to a saved model (a new "
                       "version; no earlier data needed)")
    p.add_argument("model_dir")
    p.add_argument("data", nargs="+", help="an image folder (root/<class>/<image>), a text "
                   "table (.csv/.tsv/.jsonl with text,label columns) or a YAML data source "
                   "({name: reader, ...options})")
    p.add_argument("--on-known", choices=["error", "skip"], default="error",
                   help="classes the model knows already: an error (default) or left out")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="reader option for folder/table data, e.g. --set text_column=gloss")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_learn)
    p = sub.add_parser("predict", help="classify images or texts with a saved model")
    p.add_argument("model_dir")
    p.add_argument("inputs", nargs="*", help="image files or folders; for a text model text "
                   "files (one text a line) or .csv/.tsv/.jsonl tables (--column)")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--column", default="text", help="the text column of a table input")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--output", help="write here instead of standard output")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_predict)
    p = sub.add_parser("info", help="describe a saved model: tasks, classes, backbone, versions, "
                       "size")
    p.add_argument("model_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)
    p = sub.add_parser("export", help="write part of a saved model as a new model directory")
    p.add_argument("model_dir")
    p.add_argument("output")
    p.add_argument("--serve", action="store_true",
                   help="the serving part alone (no growth statistics; cannot learn)")
    p.set_defaults(func=_export)
    p = sub.add_parser("check", help="dry run: validate a preset, read its data, print the "
                       "task plan and parameter counts; trains and writes nothing")
    p.add_argument("config", help="YAML preset, e.g. configs/paper/cifar100-10t.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, as for run (repeatable)")
    p.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    p.add_argument("--backbone", action="store_true",
                   help="also build the backbone (may need the network for a hub id) to count "
                        "its parameters and the low-rank parameters trained per task")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead")
    p.set_defaults(func=_check)
    p = sub.add_parser("list", help="list learners, datasets, backbones and presets")
    p.set_defaults(func=_list)
    p = sub.add_parser("report", help="re-render report.md and plots from a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)
    from . import serve

    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The offline assets load from local folders; never wait on a hub that cannot be reached.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return args.func(args, console)
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # A collective failed, so the process group's transport threads are in an undefined
        # state: letting the interpreter tear them down can abort the process (gloo: "terminate
        # called without an active exception", SIGABRT) and turn this clear exit 2 into a crash.
        # Nothing is left to write (checkpoints are written atomically per task), so leave now.
        os._exit(2)
    except (ConfigError, ValueError, OSError, ImportError) as exc:
        # plain text, never wrapped: one line per problem, the input named at its start
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
