"""``proteus check``: a dry run of a config — validate, read the data, cut the tasks, count.

Nothing is trained and nothing is written: the data sources are read exactly as a run reads them
(image folders are listed, not decoded), the scenario is built in memory (the split manifest a run
would save is not saved), and the backbone is built only when asked (``build_backbone``), since
building ViT-B/16 from a hub id may need the network. :func:`check` returns a plain, JSON-ready
dict; :func:`render` prints it with rich.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import RunConfig
from .assemble import assemble, build_learner
from .assemble import build_backbone as make_backbone
from .data import ScenarioOptions
from .registry import ConfigError

# the options that say where a reader's data lives, in the order they are looked for
_LOCATION_KEYS = ("root", "path")


class CheckError(ValueError):
    """The check could not finish for a reason outside the data (e.g. the backbone would not
    build); the message says what failed."""


def check(config: RunConfig, build_backbone: bool = False) -> dict[str, Any]:
    """Validate ``config``'s data and scenario (and optionally its backbone) without training.

    Raises :class:`~proteus.data.DataError` for missing or malformed data (its message names the
    file or folder and the expected layout), :class:`~proteus.registry.ConfigError` for a
    scenario that does not fit the data, :class:`CheckError` when the backbone cannot be built.
    """
    run = assemble(config, backbone=False, learner=False)
    data, scenario, manifest = run.data, run.scenario, run.scenario.manifest
    options = ScenarioOptions.model_validate(config.scenario)
    sources = [_source_summary(i, c.name, c.options, part)
               for i, (c, part) in enumerate(zip(config.data, run.sources))]

    tasks = []
    for task in scenario.tasks:
        spec = manifest["tasks"][task.index]
        tasks.append({
            "index": task.index,
            "classes": list(task.classes),
            "original_classes": [int(c) for c in spec["original_classes"]],
            "class_names": [scenario.class_names[c] for c in task.classes],
            "num_train": len(task.train),
            "num_test": len(task.test),
        })

    summary: dict[str, Any] = {
        "name": config.name,
        "seed": config.seed,
        "device": config.device,
        "run_dir": str(Path(config.output_dir) / config.name) if config.name else None,
        "class_order": _class_order_summary(options, manifest, config.seed),
        "split": _split_summary(options, manifest, data, config.seed),
        "sources": sources,
        "modality": data.modality,
        "num_samples": len(data),
        "num_classes": scenario.num_classes,
        "num_tasks": len(scenario.tasks),
        "tasks": tasks,
        "num_train": sum(t["num_train"] for t in tasks),
        "num_test": sum(t["num_test"] for t in tasks),
        "warnings": _warnings(scenario, manifest, data),
        "parameters": _parameters(config, build_backbone),
    }
    return summary


# -- pieces of the summary ---------------------------------------------------------------------


def _source_summary(index: int, name: str, options: dict[str, Any], part) -> dict[str, Any]:
    location = next((str(options[k]) for k in _LOCATION_KEYS if options.get(k)), None)
    out: dict[str, Any] = {
        "index": index,
        "reader": name,
        "location": location,
        "source": part.source,
        "modality": part.modality,
        "num_samples": len(part),
        "num_classes": part.num_classes,
        "official_split": None,
    }
    if part.official_split is not None:
        s = part.official_split
        out["official_split"] = {"train": int((s == 0).sum()), "test": int((s == 1).sum()),
                                 "none": int((s == -1).sum())}
    return out


def _class_order_summary(o: ScenarioOptions, manifest: dict, seed: int) -> dict[str, Any]:
    if o.manifest is not None:
        how, order_seed = f"from manifest {o.manifest}", manifest.get("class_order_seed")
    elif o.class_order is not None:
        how, order_seed = "explicit (scenario.class_order)", None
    elif not o.shuffle_classes:
        how, order_seed = "data order (scenario.shuffle_classes: false)", None
    else:
        how = "seeded permutation"
        order_seed = seed if o.class_order_seed is None else o.class_order_seed
    return {"how": how, "seed": order_seed, "order": [int(c) for c in manifest["class_order"]]}


def _split_summary(o: ScenarioOptions, manifest: dict, data, seed: int) -> dict[str, Any]:
    split = data.official_split
    if o.manifest is not None:
        how = f"from manifest {o.manifest}"
    elif split is None:
        how = f"seeded per-class split, test_fraction {o.test_fraction}"
    elif (split == -1).any():
        how = ("official where the source has one, elsewhere seeded per class "
               f"(test_fraction {o.test_fraction})")
    else:
        how = "official"
    return {"how": how,
            "seed": manifest.get("split_seed", seed if o.split_seed is None else o.split_seed),
            "train_per_class": o.train_per_class, "test_per_class": o.test_per_class}


def _warnings(scenario, manifest: dict, data) -> list[str]:
    out = []
    for task in scenario.tasks:
        spec = manifest["tasks"][task.index]
        for key, what in (("train_counts", "training"), ("test_counts", "test")):
            counts = spec.get(key)
            if counts is None:  # a manifest written before per-class counts were kept
                continue
            empty = [scenario.class_names[c] for c, n in zip(task.classes, counts) if n == 0]
            if empty:
                out.append(f"task {task.index}: no {what} samples for "
                           f"{len(empty)} class(es): {', '.join(empty[:5])}"
                           + (" …" if len(empty) > 5 else ""))
    unused = data.num_classes - scenario.num_classes
    if unused > 0:
        out.append(f"{unused} of the data's {data.num_classes} classes are not in any task "
                   "(scenario.num_classes or class_order leaves them out)")
    return out


def _parameters(config: RunConfig, build_backbone: bool) -> dict[str, Any]:
    learner_options = config.learner.options
    rank = learner_options.get("rank")
    out: dict[str, Any] = {
        "backbone": config.backbone.name,
        "backbone_model": config.backbone.options.get("model"),
        "backbone_built": False,
        "backbone_parameters": None,
        "learner": config.learner.name,
        "low_rank": rank is not None,
        "rank": rank,
        "target_layers": None,
        "trained_per_task": None,
        "trained_per_task_source": None,
    }
    if not build_backbone:
        return out

    try:
        backbone, _ = make_backbone(config.backbone)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hub or file problem, reported as one line
        raise CheckError(f"backbone {config.backbone.name!r} could not be built "
                         f"({type(exc).__name__}: {exc}); check runs without --backbone "
                         "when the model is not reachable from here") from None
    out["backbone_built"] = True
    out["backbone_parameters"] = int(sum(p.numel() for p in backbone.parameters()))
    out["embed_dim"] = int(getattr(backbone, "embed_dim", 0)) or None

    try:
        learner = build_learner(config.learner, backbone, config.seed)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. target patterns that match no layer
        raise CheckError(f"learner {config.learner.name!r} could not be set up on backbone "
                         f"{config.backbone.name!r} ({type(exc).__name__}: {exc})") from None
    reported = 0
    try:
        reported = int(learner.parameter_counts().get("trained_per_task", 0))
    except Exception:  # noqa: BLE001 - some learners can only count after a first task
        reported = 0
    if rank is not None:
        layers = _low_rank_layers(learner, backbone, learner_options.get("targets"))
        out["target_layers"] = len(layers)
        formula = sum(int(rank) * (i + o) for i, o in layers.values())
        if reported > 0:
            out["trained_per_task"], out["trained_per_task_source"] = reported, "learner"
        else:
            out["trained_per_task"], out["trained_per_task_source"] = formula, "rank*(in+out)"
        out["low_rank_per_task"] = formula
    elif reported > 0:
        out["trained_per_task"], out["trained_per_task_source"] = reported, "learner"
    return out


def _low_rank_layers(learner, backbone, targets) -> dict[str, tuple[int, int]]:
    """``name -> (in, out)`` of the layers that carry low-rank units."""
    pool = getattr(learner, "pool", None)
    layers = getattr(pool, "layers", None)
    if layers:
        return {n: (int(m.in_features), int(m.out_features)) for n, m in layers.items()}
    out = {}
    for name, module in backbone.target_layers(targets).items():
        i = getattr(module, "in_features", getattr(module, "in_channels", None))
        o = getattr(module, "out_features", getattr(module, "out_channels", None))
        if i is not None and o is not None:
            out[name] = (int(i), int(o))
    return out


# -- rendering -----------------------------------------------------------------------------------


def render(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print a :func:`check` summary: sources, order and split, the task plan, parameters."""
    console = console or Console()
    e = escape
    console.print(f"[bold]{e(str(summary['name']))}[/]: {summary['num_tasks']} tasks, "
                  f"{summary['num_classes']} classes, {summary['num_samples']} samples "
                  f"({summary['modality']}), seed {summary['seed']}", highlight=False)

    table = Table(title="data sources", title_justify="left")
    for col in ("#", "reader", "location", "samples", "classes", "official split"):
        table.add_column(col, overflow="fold")
    for s in summary["sources"]:
        split = s["official_split"]
        split_text = ("none" if split is None else
                      f"{split['train']} train / {split['test']} test"
                      + (f" / {split['none']} unsplit" if split["none"] else ""))
        table.add_row(str(s["index"]), e(s["reader"]), e(s["location"] or "-"),
                      str(s["num_samples"]), str(s["num_classes"]), split_text)
    console.print(table)

    order, split = summary["class_order"], summary["split"]
    seed_text = "" if order["seed"] is None else f", class order seed {order['seed']}"
    console.print(f"class order: {e(order['how'])}{seed_text}", highlight=False)
    caps = [f"{k.split('_')[0]} cap {v}/class" for k, v in
            (("train_per_class", split["train_per_class"]),
             ("test_per_class", split["test_per_class"])) if v is not None]
    # the split seed matters only where samples are split per class or capped
    seeded = split["how"] != "official" or caps
    console.print(f"train/test split: {e(split['how'])}"
                  + (f", split seed {split['seed']}" if seeded else "")
                  + (f" ({', '.join(caps)})" if caps else ""), highlight=False)

    table = Table(title="task plan", title_justify="left")
    table.add_column("task", justify="right")
    table.add_column("classes", overflow="fold")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for t in summary["tasks"]:
        first, last = t["classes"][0], t["classes"][-1]
        names = ", ".join(t["class_names"])
        table.add_row(str(t["index"]), e(f"{first}-{last}: {names}"),
                      str(t["num_train"]), str(t["num_test"]))
    table.add_row("all", f"{summary['num_classes']} classes", str(summary["num_train"]),
                  str(summary["num_test"]), style="bold")
    console.print(table)

    p = summary["parameters"]
    table = Table(title="parameters", title_justify="left")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    model = f" ({p['backbone_model']})" if p.get("backbone_model") else ""
    table.add_row("backbone", e(f"{p['backbone']}{model}"))
    table.add_row("backbone parameters",
                  f"{p['backbone_parameters']:,}" if p["backbone_built"]
                  else "not built (pass --backbone to build it and count)")
    table.add_row("learner", e(p["learner"]))
    if p["low_rank"]:
        table.add_row("rank", str(p["rank"]))
        if p["target_layers"] is not None:
            table.add_row("adapted layers", str(p["target_layers"]))
    if p["trained_per_task"] is not None:
        table.add_row("trained per task", f"{p['trained_per_task']:,} "
                      f"({e(p['trained_per_task_source'])})")
    elif p["low_rank"]:
        table.add_row("trained per task", "needs the backbone (--backbone)")
    console.print(table)

    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {e(warning)}", highlight=False)
    where = f" (a run would write {e(summary['run_dir'])})" if summary.get("run_dir") else ""
    console.print(f"[bold green]check passed[/]: nothing trained, nothing written{where}",
                  highlight=False)
