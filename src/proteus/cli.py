"""The ``proteus`` command: run a preset, check one (dry run), list what is registered,
re-render a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
    config = load_config(args.config, overrides)
    run(config, console=console)
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
    p.set_defaults(func=_run)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    # The offline assets load from local folders; never wait on a hub that cannot be reached.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return args.func(args, console)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
