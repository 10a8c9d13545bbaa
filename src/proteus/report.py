"""Human-readable output of a run: ``report.md``, PNG plots and a terminal summary.

Everything is rendered from the run's results dict (its ``results.json``), so ``proteus report
RUN_DIR`` can re-render a finished or partial run without the engine. Accuracies in the results
are fractions in [0, 1] and are shown as percentages; forgetting and backward transfer are
differences of accuracies, so they show as percentage points with the same format.

``class_names`` is indexed by class id, the same ids as ``class_order`` and ``tasks[].classes``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

# Reports are written from training jobs and CLIs without a display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from proteus.metrics import METRIC_LABELS  # noqa: E402

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
MATRIX_PLOT = "accuracy_matrix.png"
CURVE_PLOT = "accuracy_curve.png"
CONFUSION_PLOT = "retrieval_confusion.png"
CERTIFICATE_PLOT = "certificate_delta.png"
UNITS_PLOT = "units.png"
TRAINING_PLOT = "training_loss.png"
# Past this many tasks, per-cell numbers overlap and hide the heat-map they annotate.
MAX_ANNOTATED_TASKS = 25
MISSING = "—"


# ---------------------------------------------------------------------------------------------
# reading the results dict


def _number(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number or null, got {value!r}")
    return float(value)


def _matrix(rows: Any, where: str) -> np.ndarray:
    """A list of equal-length lists of numbers/null as a float array (null -> NaN)."""
    if rows is None:
        return np.full((0, 0), np.nan)
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ValueError(f"{where}: expected a list of lists")
    if len({len(row) for row in rows}) > 1:
        raise ValueError(f"{where}: rows have different lengths")
    width = len(rows[0]) if rows else 0
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            out[i, j] = _number(value, f"{where}[{i}][{j}]")
    return out


def _vector(values: Any, where: str) -> np.ndarray:
    if values is None:
        return np.zeros(0)
    if not isinstance(values, list):
        raise ValueError(f"{where}: expected a list")
    return np.array([_number(v, f"{where}[{i}]") for i, v in enumerate(values)], dtype=float)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{100.0 * float(value):.2f}%"


def _seconds(value: float) -> str:
    return f"{value:.1f}"


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _title(results: dict) -> str:
    return str(results.get("name") or "run")


def _subtitle(results: dict) -> str:
    parts = [
        f"learner `{results.get('learner', '?')}`",
        f"backbone `{results.get('backbone', '?')}`",
        f"seed {results.get('seed', '?')}",
    ]
    return " · ".join(parts)


def _class_label(class_id: Any, names: list) -> str:
    if isinstance(class_id, int) and 0 <= class_id < len(names):
        return f"{names[class_id]} ({class_id})"
    return str(class_id)


def _timing_columns(timing: list[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for entry in timing:
        columns.update(dict.fromkeys(k for k in entry if k.endswith("_s")))
    return list(columns)


# ---------------------------------------------------------------------------------------------
# atomic writes: a reader (or a crash) never sees a half-written report or plot


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_figure(fig: plt.Figure, path: Path) -> None:
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    _atomic_write(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# plots


def _heatmap(ax, values: np.ndarray, fmt: str, vmax: float) -> Any:
    # Undefined cells (i > t, not run yet) stay blank.
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax)
    rows, cols = values.shape
    if max(rows, cols) <= MAX_ANNOTATED_TASKS:
        size = 9 if max(rows, cols) <= 10 else 6
        for i in range(rows):
            for j in range(cols):
                if not math.isnan(values[i, j]):
                    dark = values[i, j] < 0.6 * vmax  # light text on the dark end of viridis
                    ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                            fontsize=size, color="white" if dark else "black")
    step = max(1, rows // 20)
    ax.set_xticks(range(0, cols, step))
    ax.set_yticks(range(0, rows, step))
    return image


def _figure_size(n: int) -> tuple[float, float]:
    side = min(16.0, max(4.5, 0.55 * n + 2.5))
    return side + 1.0, side


def _plot_matrix(acc: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=_figure_size(acc.shape[0]))
    image = _heatmap(ax, 100.0 * acc, "{:.1f}", 100.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    ax.set_xlabel("after learning task t")
    ax.set_ylabel("evaluated on task i")
    ax.set_title(f"{title}: accuracy matrix")
    _save_figure(fig, path)


def _plot_curve(
    acc: np.ndarray, seen: np.ndarray, retrieval: np.ndarray, final_retrieval: float | None,
    path: Path, title: str,
) -> None:
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for i in range(acc.shape[0]):
        steps = [t for t in range(i, acc.shape[1]) if not math.isnan(acc[i, t])]
        if steps:
            ax.plot(steps, 100.0 * acc[i, steps], color="tab:gray", alpha=0.3, linewidth=1.0,
                    label="single task" if i == 0 else None)
    if seen.size:
        ax.plot(range(seen.size), 100.0 * seen, color="tab:blue", marker="o", linewidth=2.2,
                label="all seen tasks ($A_t$)")
    if retrieval.size:
        ax.plot(range(retrieval.size), 100.0 * retrieval, color="tab:orange", linestyle="--",
                marker=".", label="task retrieval")
    elif final_retrieval is not None and seen.size:
        # Only the end-of-run value is known: show it where it was measured.
        ax.plot([seen.size - 1], [100.0 * final_retrieval], color="tab:orange", marker="D",
                linestyle="none", label="task retrieval (final)")
    steps_total = max(acc.shape[1], seen.size, retrieval.size, 1)
    ax.set_xticks(range(0, steps_total, max(1, steps_total // 20)))
    ax.set_xlim(-0.3, steps_total - 0.7)
    ax.set_ylim(0, 101)
    ax.set_xlabel("after learning task t")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}: accuracy during the run")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _save_figure(fig, path)


def _plot_confusion(confusion: np.ndarray, path: Path, title: str) -> None:
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, confusion / totals, np.nan)
    fig, ax = plt.subplots(figsize=_figure_size(max(confusion.shape)))
    image = _heatmap(ax, 100.0 * share, "{:.0f}", 100.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="share of the true task's samples (%)")
    ax.set_xlabel("predicted task")
    ax.set_ylabel("true task")
    overall = np.trace(confusion) / confusion.sum() if confusion.sum() else math.nan
    ax.set_title(f"{title}: task retrieval ({_percent(overall)} correct)")
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# markdown


CERTIFICATE_FORMS = {
    "per-task": "per-cluster covariances, whitened coordinates",
    "signature": "the signature's own covariances, raw coordinates (the paper's check as stated)",
}


def _plot_certificate(clusters: list[dict], path: Path, title: str,
                      form: str | None = None) -> None:
    """Separation delta of every cluster against its certification threshold (2/d)·max(T1, T2):
    one column per cluster, grouped by task (grey bands), delta coloured by pass / fail / not
    applicable, the threshold a black tick joined to delta by a thin line."""
    fig, ax = plt.subplots(figsize=(max(7.0, min(16.0, 0.12 * len(clusters) + 4)), 4))
    colours = {"pass": "tab:green", "fail": "tab:red", "not applicable": "tab:gray"}
    ordered = sorted(clusters, key=lambda c: (c["task"], c.get("cluster", 0)))
    x, pos, last = [], -1.0, None
    for c in ordered:  # clusters of one task side by side, a gap between tasks
        pos += 1.0 if c["task"] == last else (1.0 if last is None else 2.0)
        last = c["task"]
        x.append(pos)
    x = np.asarray(x)
    tasks = [c["task"] for c in ordered]
    for k, task in enumerate(sorted(set(tasks))):
        xs = x[[t == task for t in tasks]]
        if k % 2 == 0:
            ax.axvspan(xs.min() - 0.5, xs.max() + 0.5, color="0.93", zorder=0)
    deltas = np.array([c["delta"] for c in ordered], dtype=float)
    thresholds = np.array([np.nan if c.get("threshold") is None else c["threshold"]
                           for c in ordered], dtype=float)
    judged = ~np.isnan(thresholds)
    ax.vlines(x[judged], np.minimum(deltas, thresholds)[judged],
              np.maximum(deltas, thresholds)[judged], color="0.6", lw=0.6, zorder=1)
    for status, colour in colours.items():
        chosen = np.array([c.get("status") == status for c in ordered])
        if chosen.any():
            ax.scatter(x[chosen], deltas[chosen], s=16, color=colour, zorder=3,
                       label=f"delta, {status} ({int(chosen.sum())})")
    if judged.any():
        ax.scatter(x[judged], thresholds[judged], s=60, marker="_", color="black", zorder=2,
                   label="threshold (2/d)·max(T1, T2)")
    values = np.concatenate([deltas, thresholds[judged]])
    values = values[np.isfinite(values)]
    if values.size and np.abs(values).max() > 100 * max(np.median(np.abs(values)), 1e-12):
        ax.set_yscale("symlog", linthresh=1.0)  # a few huge deltas would flatten the rest
    centres = [x[[t == task for t in tasks]].mean() for task in sorted(set(tasks))]
    ax.set_xticks(centres, [str(t) for t in sorted(set(tasks))])
    ax.set_xlabel("task (one column per cluster)")
    ax.set_ylabel("separation delta")
    ax.axhline(0.0, color="0.5", lw=0.5)
    form_text = f" [{form}]" if form else ""
    ax.set_title(f"{title}: retrieval certificate{form_text}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save_figure(fig, path)


def _certificate_md(certificate: dict) -> list[str]:
    form = certificate.get("form")
    form_text = (f"Form `{form}`: {CERTIFICATE_FORMS.get(form, form)}. " if form
                 else "")
    clusters = certificate.get("clusters") or []
    if not clusters:
        return [f"{form_text}Certificate: {certificate.get('note', 'not computed')}."]
    counts = {s: sum(c.get("status") == s for c in clusters) for s in ("pass", "fail",
                                                                       "not applicable")}
    return [f"{form_text}Certified fraction {_percent(certificate.get('certified_fraction'))} of "
            f"{len(clusters)} clusters ({counts['pass']} pass, {counts['fail']} fail, "
            f"{counts['not applicable']} not applicable), beside a measured task-retrieval "
            f"accuracy of {_percent(certificate.get('task_retrieval_accuracy'))}."]


def _metrics_md(metrics: dict) -> list[str]:
    lines = ["| metric | value |", "|---|---:|"]
    for key, label in METRIC_LABELS.items():
        lines.append(f"| {label} | {_percent(metrics.get(key))} |")
    return lines


def _matrix_md(acc: np.ndarray, seen: np.ndarray) -> list[str]:
    cols = acc.shape[1]
    lines = [
        "| task \\ after | " + " | ".join(str(t) for t in range(cols)) + " |",
        "|---|" + "---:|" * cols,
    ]
    for i in range(acc.shape[0]):
        cells = ["" if math.isnan(v) else f"{100.0 * v:.2f}" for v in acc[i]]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    if seen.size:
        cells = [f"{100.0 * seen[t]:.2f}" if t < seen.size else "" for t in range(cols)]
        lines.append("| **all seen** | " + " | ".join(cells) + " |")
    return lines


def _timing_md(timing: list[dict]) -> list[str]:
    columns = _timing_columns(timing)
    lines = ["| task | " + " | ".join(columns) + " | total_s |",
             "|---|" + "---:|" * (len(columns) + 1)]
    sums = dict.fromkeys(columns, 0.0)
    for entry in timing:
        row, total = [], _step_seconds(entry)
        for column in columns:
            value = entry.get(column)
            if _is_number(value):
                sums[column] += value
                row.append(_seconds(value))
            else:
                row.append("")
        lines.append(f"| {entry.get('task', '?')} | " + " | ".join(row)
                     + f" | {_seconds(total)} |")
    lines.append("| **total** | " + " | ".join(_seconds(sums[c]) for c in columns)
                 + f" | **{_seconds(sum(_step_seconds(e) for e in timing))}** |")
    return lines


def _step_seconds(entry: dict) -> float:
    """Wall time of one step: train + eval (+ the last step's task-IL pass). Learners report
    finer phases (signature_s, ...) that lie inside train_s, so summing every *_s key would
    count them twice."""
    if _is_number(entry.get("train_s")) or _is_number(entry.get("eval_s")):
        return sum(entry[k] for k in ("train_s", "eval_s", "task_il_eval_s")
                   if _is_number(entry.get(k)))
    return sum(v for k, v in entry.items() if k.endswith("_s") and _is_number(v))


def _tasks_md(results: dict) -> list[str]:
    names = results.get("class_names") or []
    lines = []
    order = results.get("class_order")
    if order:
        lines += [f"Class order: `{' '.join(str(c) for c in order)}`", ""]
    tasks = results.get("tasks") or []
    if tasks:
        lines += ["| task | train | test | classes |", "|---|---:|---:|---|"]
        for task in tasks:
            classes = ", ".join(_class_label(c, names) for c in task.get("classes", []))
            lines.append(f"| {task.get('index', '?')} | {task.get('num_train', '')} | "
                         f"{task.get('num_test', '')} | {_md(classes)} |")
    return lines


def _resources_md(results: dict) -> list[str]:
    lines = []
    memory = results.get("peak_memory_mb")
    if _is_number(memory):
        lines.append(f"- peak memory: {memory:.0f} MB")
    parameters = results.get("parameters") or {}
    if parameters.get("trained_per_task") is not None:
        lines.append(f"- parameters trained per task: {parameters['trained_per_task']:,}")
    if parameters.get("stored_bytes") is not None:
        lines.append(f"- stored state: {parameters['stored_bytes'] / 2**20:.2f} MiB")
    return lines


def _report_md(results: dict, acc: np.ndarray, seen: np.ndarray, plots: list[Path]) -> str:
    out = [f"# {_title(results)}", "", _subtitle(results), ""]
    num_tasks = len(results.get("tasks") or []) or acc.shape[0]
    if seen.size < num_tasks:
        out += [f"> Partial run: {seen.size} of {num_tasks} tasks finished.", ""]
    out += ["## Metrics", "", *_metrics_md(results.get("metrics") or {}), ""]
    if acc.size:
        out += [
            "## Accuracy matrix",
            "",
            "Accuracy (%) on task *i*'s test data (row) after learning task *t* (column), among "
            "all classes seen so far; the last row is the sample-weighted accuracy on all seen "
            "tasks.",
            "",
            *_matrix_md(acc, seen),
            "",
        ]
    if results.get("certificate"):
        out += ["## Retrieval certificate", "", *_certificate_md(results["certificate"]), ""]
    timing = results.get("timing") or []
    if timing:
        out += ["## Timing (seconds)", "", *_timing_md(timing), ""]
    resources = _resources_md(results)
    if resources:
        out += ["## Resources", "", *resources, ""]
    tasks = _tasks_md(results)
    if tasks:
        out += ["## Tasks and class order", "", *tasks, ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in plots]
        out.append("")
    extras = results.get("extras") or {}
    if extras:
        out += ["## Learner extras", "", "```json",
                json.dumps(extras, indent=2, sort_keys=True, default=str), "```", ""]
    config = results.get("config")
    if config:
        out += ["<details><summary>configuration</summary>", "", "```json",
                json.dumps(config, indent=2, sort_keys=True, default=str), "```", "",
                "</details>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# public API


def _plot_units(units: list[dict | None], path: Path, title: str) -> None:
    """Per task: how far the low-rank units moved (relative weight update, embedding change,
    transfer weights) and the loss terms at the end of training (cross-entropy, penalties)."""
    fig, (move, loss) = plt.subplots(1, 2, figsize=(11, 4))
    tasks = [k for k, u in enumerate(units) if u]

    def series(get):
        return [get(units[k]) for k in tasks]

    move.plot(tasks, series(lambda u: u["delta_w_rel"]["mean"]), marker="o",
              label="||dW|| / ||W||, mean over targets")
    move.plot(tasks, series(lambda u: u["delta_w_rel"]["max"]), marker=".", linestyle="--",
              label="||dW|| / ||W||, largest target")
    move.plot(tasks, series(lambda u: u["embedding_change"]["mean"]), marker="s",
              label="||h_k - h|| / ||h||, mean")
    move.plot(tasks, series(lambda u: u["alpha_w_norm"]["mean"]), marker="^",
              label="||alpha w||, mean over layers")
    move.set_xlabel("task")
    move.set_ylabel("relative size")
    move.set_yscale("symlog", linthresh=1e-4)
    move.grid(alpha=0.3)
    move.legend(fontsize=7)
    loss.plot(tasks, series(lambda u: u.get("ce")), marker="o", label="cross-entropy")
    for name in sorted({n for k in tasks for n in (units[k].get("penalties") or {})}):
        loss.plot(tasks, series(lambda u: (u.get("penalties") or {}).get(name, np.nan)),
                  marker=".", label=f"{name} penalty (weighted)")
    loss.set_xlabel("task")
    loss.set_ylabel("last epoch mean")
    loss.set_yscale("log")
    loss.grid(alpha=0.3)
    loss.legend(fontsize=7)
    for ax in (move, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title}: low-rank units")
    _save_figure(fig, path)


def _plot_training(curves: list[list[dict]], path: Path, title: str) -> None:
    """Every gradient fit's mean training loss per epoch (solid) and its cross-entropy alone
    (dashed, where penalties make them differ), one after another, tasks apart: whether each
    task's budget reached a plateau."""
    fig, ax = plt.subplots(figsize=(max(6, min(16, 0.25 * sum(
        len(c["loss"]) for fits in curves for c in fits) + 4)), 4))
    x, starts = 0, []
    for k, fits in enumerate(curves):
        starts.append((x, k))
        for fit in fits:
            epochs = np.arange(x + 1, x + 1 + len(fit["loss"]))
            ax.plot(epochs, fit["loss"], marker=".", color="tab:blue",
                    label="loss" if x == 0 else None)
            if not np.allclose(fit["loss"], fit["ce"]):
                ax.plot(epochs, fit["ce"], linestyle="--", color="tab:orange",
                        label="cross-entropy" if x == 0 else None)
            x += len(fit["loss"])
    for start, k in starts:
        ax.axvline(start + 0.5, color="0.85", linewidth=0.8)
    ax.set_xticks([start + 1 for start, _ in starts], [f"t{k}" for _, k in starts],
                  fontsize=7)
    ax.set_xlabel("epoch, task by task")
    ax.set_ylabel("mean training loss")
    if all(v > 0 for fits in curves for c in fits for v in c["loss"]):
        ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: training loss per epoch")
    _save_figure(fig, path)


def write_report(run_dir: Path, results: dict) -> list[Path]:
    """Write the plots, then ``report.md``, into ``run_dir``; return the paths written."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a JSON object, got {type(results).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    acc = _matrix(results.get("accuracy_matrix"), "accuracy_matrix")
    seen = _vector(results.get("accuracy_seen"), "accuracy_seen")
    retrieval = _vector(results.get("retrieval_accuracy_seen"), "retrieval_accuracy_seen")
    confusion = _matrix(results.get("retrieval_confusion"), "retrieval_confusion")
    if np.isnan(confusion).any():
        raise ValueError("retrieval_confusion: counts must not be null")
    final_retrieval = (results.get("metrics") or {}).get("task_retrieval_accuracy")
    title = _title(results)

    plots: list[Path] = []
    if acc.size:
        _plot_matrix(acc, run_dir / MATRIX_PLOT, title)
        plots.append(run_dir / MATRIX_PLOT)
    if acc.size or seen.size:
        _plot_curve(acc, seen, retrieval, final_retrieval, run_dir / CURVE_PLOT, title)
        plots.append(run_dir / CURVE_PLOT)
    if confusion.size:
        _plot_confusion(confusion, run_dir / CONFUSION_PLOT, title)
        plots.append(run_dir / CONFUSION_PLOT)
    clusters = (results.get("certificate") or {}).get("clusters") or []
    if clusters:
        _plot_certificate(clusters, run_dir / CERTIFICATE_PLOT, title,
                          (results.get("certificate") or {}).get("form"))
        plots.append(run_dir / CERTIFICATE_PLOT)
    per_task = (results.get("extras") or {}).get("per_task") or []
    units = [e.get("units") if isinstance(e, dict) else None for e in per_task]
    if any(units):
        _plot_units(units, run_dir / UNITS_PLOT, title)
        plots.append(run_dir / UNITS_PLOT)
    curves = [(e.get("training_curves") or []) if isinstance(e, dict) else [] for e in per_task]
    if any(curves):
        _plot_training(curves, run_dir / TRAINING_PLOT, title)
        plots.append(run_dir / TRAINING_PLOT)

    report = run_dir / REPORT_FILE
    _atomic_write(report, _report_md(results, acc, seen, plots).encode("utf-8"))
    return [*plots, report]


def summary_table(results: dict) -> Table:
    """The run's metrics (percent, two decimals) plus time and memory, as a rich table."""
    table = Table(title=f"{_title(results)}  ·  {_subtitle(results).replace('`', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = results.get("metrics") or {}
    for key, label in METRIC_LABELS.items():
        table.add_row(label, _percent(metrics.get(key)))
    validation = (results.get("validation") or {}).get("metrics") or {}
    if validation:  # scenario.val_fraction: the same model on held-out training samples
        table.add_section()
        for key in ("final_accuracy", "average_incremental_accuracy",
                    "task_retrieval_accuracy"):
            if key in validation and key in METRIC_LABELS:
                table.add_row(f"validation: {METRIC_LABELS[key]}", _percent(validation[key]))
    timing = results.get("timing") or []
    if timing:
        total = sum(_step_seconds(e) for e in timing)
        table.add_section()
        table.add_row("total time", f"{_seconds(total)} s")
    memory = results.get("peak_memory_mb")
    if _is_number(memory):
        if not timing:
            table.add_section()
        table.add_row("peak memory", f"{memory:.0f} MB")
    return table


def print_summary(results: dict, console: Console | None = None) -> None:
    (console or Console()).print(summary_table(results))


def render_run(run_dir: Path) -> list[Path]:
    """Re-render a run from ``run_dir/results.json`` (``proteus report RUN_DIR``)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; is {run_dir} a run directory?") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    try:
        return write_report(Path(run_dir), results)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
