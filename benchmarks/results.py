"""Run learner variants x offline presets x seeds and write the comparison table.

    python benchmarks/results.py --presets vision --variants proteus simplecil --seeds 1993 1994 1995

Every run is a normal ``proteus run`` (its directory lands in runs/bench/...). Summaries are kept in
docs/results.json, merged with earlier invocations, so presets can be run separately; the markdown
table docs/results.md and the plot docs/results-<preset>.png are rebuilt from all of them.

A run already made elsewhere (say by benchmarks/adaptation_gap.py) joins the store without a rerun:

    python benchmarks/results.py --adopt text-large lda runs/adaptation-gap/text-large-lda-s1993

It is adopted only if its recorded config is the one this script would run for that preset,
variant and seed (its name and output directory aside); its wall time is the run's own timing
(training plus evaluation, model loading left out).

Every stored row keeps a fingerprint of its run's config (``config_sha``). When a preset changes
after its rows ran, docs/results.md lists those rows as stale until they are rerun; rows stored
before fingerprints were kept are counted there as unchecked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import yaml  # noqa: E402

import proteus  # noqa: E402
from proteus.config import config_fingerprint, read_yaml  # noqa: E402
from proteus.metrics import mean_std  # noqa: E402
from proteus.storage import write_json_atomic, write_text_atomic  # noqa: E402
from tune import resolved_values, shown  # noqa: E402

PRESETS = {
    "vision": ROOT / "configs/offline/vision-fmnist-mnist.yaml",
    "text": ROOT / "configs/offline/text-wordnet.yaml",
    # the hard preset of the evidence issue closest to its criterion (docs/adaptation_gap.md)
    "text-large": ROOT / "configs/offline/text-large.yaml",
    # the hard text preset that meets the evidence issue's room criterion (docs/adaptation_gap.md)
    "text-relations-paired": ROOT / "configs/offline/text-relations-paired.yaml",
    # the hard vision preset that meets the evidence issue's room criterion (adaptation_gap.md)
    "vision-clutter": ROOT / "configs/offline/vision-clutter.yaml",
}
# a preset cut from another benchmark's data: its baselines run from that benchmark's baseline
# presets with this preset's data and scenario sections on top (one learner recipe per family)
DERIVED = {"text-large": "text", "text-relations-paired": "text", "vision-clutter": "vision"}
ADAPTED_LDA = "proteus, adapted-space LDA"
# its control: the same evidence without units, every task space the frozen embedding
ADAPTED_LDA_FROZEN = "proteus, adapted-space LDA, frozen backbone"
# variant -> config overrides applied on top of the preset (whose learner is `proteus`)
VARIANTS = {
    "proteus": [],
    # the paper's unit form (rank 4, the authors' 0.1 scale; METHOD.md section 1) whatever
    # units the preset's default runs
    "proteus-paper": ["learner.name=proteus-paper", "learner.rank=4", "learner.scale=0.1"],
    "proteus (oracle task id)": ["learner.retrieval=oracle"],
    "proteus, alpha=0": ["learner.alpha=0"],
    "proteus, no orthogonality": ["learner.lambda_orth=0"],
    "proteus, k-means signatures": ["learner.signature.kind=kmeans"],
    "proteus, adapted-space signatures": ["learner.signature_space=adapted",
                                          "learner.signature_stages=[]"],
    "proteus, frozen-space DP-GMM (paper signature)": [
        "learner.signature={kind: dpgmm, covariance: full, l2_normalize: false}",
        "learner.signature_stages=[]"],
    # every input through the last task's backbone, logits over all classes (restricting them
    # to the last task's classes would make this ablation trivially 1/T)
    "proteus, no retrieval (last task's backbone)": ["learner.retrieval=none",
                                                     "learner.restrict_to_task=false"],
    "proteus, no low-rank units (frozen backbone)": ["learner.train_adapters=false"],
    # the control of the default's class decision: the paper's two steps (docs/rerank.md)
    "proteus, retrieve then classify": ["learner.decision=task"],
    # the class decision plus the earliest candidate task's adapted-space LDA, at the weight
    # chosen on the text preset's validation split (docs/pair_space.md: 'adapted', gamma 0.3)
    ADAPTED_LDA: ["learner.adapted_lda_weight=0.3"],
    ADAPTED_LDA_FROZEN: ["learner.adapted_lda_weight=0.3", "learner.train_adapters=false"],
}
# baselines run from their presets, configs/offline/baselines/<name>-<preset>.yaml
# (lda: the frozen-feature control, streaming shrinkage LDA on PROTEUS's retrieval features)
BASELINES = ["simplecil", "ranpac", "seq-lora", "joint-lora", "o-lora", "inflora", "sd-lora",
             "s-prompts", "lda", "inflora-ca", "sd-lora-ca", "o-lora-ca", "slca", "aper", "fecam",
             "l2p", "dualprompt", "coda-prompt", "hide-prompt"]
NO_UNITS = "proteus, no low-rank units (frozen backbone)"
# the analytic controls on frozen features that PROTEUS's own parts must beat
CONTROLS = ["lda", "lda, embedding only", "fecam", "aper", "ranpac", "simplecil"]
#: the evidence issue's absolute targets for `proteus` (mean of its seeds), per preset
EVIDENCE_TARGETS = {"vision": {"final_accuracy": 0.93, "task_retrieval_accuracy": 0.94}}
# InfLoRA's former text recipe: units on the last two of MiniLM's six blocks, 70 steps a task
TEXT_RECIPE = ["learner.targets=['.*layer\\.(4|5)\\.attention\\.self\\.(key|value)']",
               "learner.steps_per_task=70"]
# O-LoRA's and SD-LoRA's former text recipes: the last two blocks' q, v, 35 and 70 steps a task
QV_LAST_TWO = "learner.targets=['.*layer\\.(4|5)\\.attention\\.self\\.(query|value)']"
O_LORA_TEXT_RECIPE = [QV_LAST_TWO, "learner.steps_per_task=35"]
SD_LORA_TEXT_RECIPE = [QV_LAST_TWO, "learner.steps_per_task=70"]
# diagnostic variants of a baseline: (baseline, overrides on top of its preset)
BASELINE_VARIANTS = {
    "o-lora, CE over every seen class": ("o-lora", ["learner.head_loss=seen"]),
    "lda, embedding only": ("lda", ["learner.signature_stages=[]"]),
    # SD-LoRA's magnitudes carried over per layer instead of restarting at 0.8 (the control
    # for benchmarks/diagnose_sd_lora.py)
    "sd-lora-ca, magnitudes carried over": ("sd-lora-ca", ["learner.magnitude_sharing=per-layer",
                                                            "learner.magnitude_init=null"]),
    # InfLoRA's, O-LoRA's and SD-LoRA's text presets run their official forms (every block's
    # k, v and the authors' 20 epochs; every block's q, v and one epoch; every block's q, v and
    # 20 epochs); these are the CPU-budget recipes they ran before, kept as the control of that
    # deviation (MiniLM's names, so the text presets only)
    "inflora-ca, text recipe": ("inflora-ca", TEXT_RECIPE),
    "inflora, text recipe": ("inflora", TEXT_RECIPE),
    "o-lora-ca, text recipe": ("o-lora-ca", O_LORA_TEXT_RECIPE),
    "o-lora, text recipe": ("o-lora", O_LORA_TEXT_RECIPE),
    "sd-lora-ca, text recipe": ("sd-lora-ca", SD_LORA_TEXT_RECIPE),
    "sd-lora, text recipe": ("sd-lora", SD_LORA_TEXT_RECIPE),
    # InfLoRA's units on every EfficientNet block's 1x1 convolutions (joint-lora's units on
    # vision-clutter, where adapting the early blocks is what opens the room there,
    # docs/adaptation_gap.md), its own rank and budget otherwise; EfficientNet's names, so the
    # vision presets only
    "inflora-ca, every block": ("inflora-ca", [
        "learner.targets=['_blocks\\.\\d+\\._(expand|project)_conv']"]),
    # SLCA fine-tunes every weight: joint-lora's units on text-relations (every block's q, v,
    # feed-forward and output layers, rank 8, scale 1.0; MiniLM's names, so the text presets
    # only) under SLCA's code's SGD (momentum 0.9, lr 1e-2, the units at 1/100 of it, no
    # clipping), 20 epochs of batch 128
    "slca, official form": ("slca", [
        "learner.targets=['.*(attention\\.self\\.(query|value)|intermediate\\.dense"
        "|output\\.dense)']", "learner.rank=8", "learner.scale=1.0", "learner.optimizer=sgd",
        "learner.lr=0.01", "learner.grad_clip=0", "learner.epochs=20", "learner.batch_size=128"]),
}
# baselines that retrieve a task and read that task's units: no one embedding for every input
# (their Learner.embedding is None), so the head-swap control does not apply
PER_TASK_EMBEDDING = {"s-prompts"}
# what the protocol sanity check compares: learners trained by gradient on one task at a time
CONTINUAL_LORA = ["seq-lora", "o-lora", "inflora", "sd-lora", "s-prompts"]
COLUMNS = [("final_accuracy", "final accuracy"),
           ("task_il_accuracy", "task-IL acc. (task given)"),
           ("average_incremental_accuracy", "avg. incremental acc."),
           ("average_forgetting", "avg. forgetting"),
           ("task_retrieval_accuracy", "task retrieval"),
           ("certified_fraction", "certified fraction"),
           ("wall_s", "wall time (s)"),
           ("signature_bytes_per_task", "signature bytes / task"),
           ("signature_shared_bytes", "signature bytes shared")]
PERCENT = {"final_accuracy", "task_il_accuracy", "average_incremental_accuracy",
           "average_forgetting", "task_retrieval_accuracy", "certified_fraction"}


def baseline_preset(name: str, preset: str) -> tuple[Path, list[str]] | None:
    """The baseline's preset file on ``preset``'s benchmark and the overrides that go on top
    (a ``DERIVED`` preset's data and scenario), or None where it has none."""
    path = ROOT / f"configs/offline/baselines/{name}-{preset}.yaml"
    if path.is_file():
        return path, []
    parent = DERIVED.get(preset)
    found = baseline_preset(name, parent) if parent else None
    if found is None:
        return None
    own = read_yaml(PRESETS[preset])  # with its base chain: a preset may state only changes
    return found[0], found[1] + flat_overrides({k: own[k] for k in ("data", "scenario")
                                                if k in own})


def flat_overrides(section: dict, prefix: str = "") -> list[str]:
    """``{"scenario": {"num_tasks": 2}}`` -> ``["scenario.num_tasks=2"]``: mappings merge key
    by key as a ``base:`` preset would; lists and values replace (JSON is YAML flow)."""
    out = []
    for key, value in section.items():
        if isinstance(value, dict):
            out += flat_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def run_name(variant: str, seed: int) -> str:
    """The directory name, under ``<runs>/<preset>/``, of ``variant``'s run at ``seed``."""
    slug = variant.replace(" ", "").replace(",", "_").replace("(", "").replace(")", "")
    return f"{slug}-s{seed}"


def run_config(preset: str, variant: str, seed: int, runs_dir: str):
    """The config this script runs for ``variant`` on ``preset`` at ``seed``, or None where the
    baseline has no preset on that benchmark."""
    if variant in BASELINES or variant in BASELINE_VARIANTS:
        base, changes = BASELINE_VARIANTS.get(variant, (variant, []))
        found = baseline_preset(base, preset)
        if found is None:  # e.g. the prompt family: transformer presets only
            return None
        path, overrides = found[0], found[1] + list(changes)
    else:
        path, overrides = PRESETS[preset], list(VARIANTS[variant])
    overrides += [f"seed={seed}", "progress=false", f"output_dir={runs_dir}/{preset}",
                  f"name={run_name(variant, seed)}"]
    return proteus.load_config(path, overrides)


def adopt(store: dict, preset: str, variant: str, run_dir: Path) -> str:
    """Put a finished run's summary in the store as ``variant`` on ``preset`` at its seed, if
    its recorded config is the one :func:`run_config` gives; returns the seed."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--adopt {run_dir}: no readable results.json ({exc})") from None
    seed = int(results["seed"])
    config = run_config(preset, variant, seed, "runs/bench")
    if config is None:
        raise SystemExit(f"--adopt: {variant} has no preset on {preset}")
    differ = config.differs_from(results["config"])
    if differ:
        raise SystemExit(f"--adopt {run_dir}: its config differs from {variant} on {preset} at "
                         f"seed {seed} in {', '.join(differ)}")
    wall = sum(t.get("train_s", 0) + t.get("eval_s", 0) + t.get("task_il_eval_s", 0)
               for t in results["timing"])
    summary = summarise(results, wall)
    summary["adopted_from"] = str(run_dir)
    summary["config_sha"] = config_fingerprint(results["config"])
    store.setdefault(preset, {}).setdefault(variant, {})[str(seed)] = summary
    return str(seed)


def relabel(store: dict, head_swap: dict, preset: str, source: str, target: str) -> list[str]:
    """Move every stored row of ``source`` on ``preset`` (and its head-swap rows) to ``target``,
    where each ran at the config ``target`` resolves to now: after a preset takes a variant's
    recipe as its default, the variant's runs are the default's, and the default's former rows
    become the variant that keeps the old recipe. Checks every row before moving any; returns
    the moved seeds."""
    rows = store.get(preset, {}).get(source)
    if not rows:
        raise SystemExit(f"--relabel: no stored rows of {source} on {preset}")
    for seed, row in sorted(rows.items()):
        config = run_config(preset, target, int(seed), "runs/bench")
        if config is None:
            raise SystemExit(f"--relabel: {target} has no preset on {preset}")
        if row.get("config_sha") != config.fingerprint():
            raise SystemExit(f"--relabel {preset} {source} -> {target}: seed {seed}'s row ran at "
                             f"a config that is not {target}'s now; nothing moved")
    for rows_of in (store, head_swap):
        moved = rows_of.get(preset, {}).pop(source, None)
        if moved:
            rows_of[preset].setdefault(target, {}).update(moved)
    return sorted(rows)


# validation tunings of the default's signature settings (benchmarks/tune.py), per preset
TUNING = {"vision": ["tuning/proteus-vision-reg-covar.json",
                     "tuning/proteus-vision-signature-stages.json",
                     "tuning/proteus-vision-units.json"],
          "text": ["tuning/proteus-text-reg-covar.json", "tuning/proteus-text-units.json",
                   "tuning/proteus-text-epochs.json", "tuning/proteus-text-every-linear.json"]}


def point_label(row: dict) -> str:
    """A tuning point as its overrides; a point that left everything to its preset as the
    values the preset gave then (records that kept them), so the label stays true after the
    preset takes another point."""
    def named(pairs) -> str:
        return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in pairs)
    if row["point"]:
        return named(row["point"].items())
    if row.get("resolved"):
        return f"the preset's then ({named((k, shown(v)) for k, v in row['resolved'].items())})"
    return "the preset's"


def points_text(record: dict) -> str:
    """A ``benchmarks/tune.py`` record's points with their validation final accuracy (%), the
    chosen one marked."""
    return "; ".join(
        point_label(row) + f": {100 * row['val_mean']:.2f}"
        + (" (chosen)" if row["point"] == record["chosen"] else "")
        for row in record["points"])


def signature_tuning_sentence(tuning: dict[str, list[str]], docs: Path = ROOT / "docs") -> str:
    """What the validation split said about the signature settings, from the tuning records
    (``benchmarks/tune.py``); says so where a record is missing."""
    parts, missing = [], []
    for preset, records in tuning.items():
        for record in records:
            path = docs / record
            if not path.is_file():
                missing.append(f"{preset} ({record})")
                continue
            result = json.loads(path.read_text())
            points = points_text(result)
            md = str(Path(record).with_suffix(".md"))
            seeds = ", ".join(map(str, result["seeds"]))
            parts.append(f"{preset} ([{md}]({md}), seed {seeds}, validation "
                         f"{result['val_fraction']:g}) {points}")
    text = ""
    if parts:
        text = ("Re-checked on a validation split of every class's training samples "
                "(validation final accuracy, %): " + "; ".join(parts) + ".")
    if missing:
        text += (" " if text else "") + ("Not yet checked on validation: "
                                         + ", ".join(missing) + ".")
    return text


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(results: dict, wall_s: float) -> dict:
    out = dict(results["metrics"])
    per_task = (results.get("extras") or {}).get("per_task") or []
    certs = [e["certificate"]["certified_fraction"] for e in per_task if "certificate" in e]
    out["certified_fraction"] = certs[-1] if certs else None
    sig = [e["signature_bytes"] for e in per_task if "signature_bytes" in e]
    out["signature_bytes_per_task"] = float(np.mean(sig)) if sig else None
    shared = [e["signature_shared_bytes"] for e in per_task if "signature_shared_bytes" in e]
    out["signature_shared_bytes"] = float(shared[-1]) if shared else None
    out["wall_s"] = wall_s
    out["accuracy_seen"] = results["accuracy_seen"]
    return out


def fmt(key: str, stat: dict, spread: bool = True) -> str:
    if stat["mean"] is None:
        return "—"
    spread = spread and stat["n"] > 1
    if key in PERCENT:
        text = f"{100 * stat['mean']:.2f}"
        return text + (f" ± {100 * stat['std']:.2f}" if spread else "")
    if key in ("signature_bytes_per_task", "signature_shared_bytes"):
        return f"{stat['mean'] / 1e6:.2f} MB"
    return f"{stat['mean']:.0f}" + (f" ± {stat['std']:.0f}" if spread else "")


def variant_stats(runs: dict) -> dict:
    """``mean_std`` of a variant's runs over its seeds (the per-task curve left out)."""
    return mean_std([{k: v for k, v in runs[s].items() if k not in NOT_METRICS}
                     for s in sorted(runs)])


# what a stored row holds beside its metrics
NOT_METRICS = ("accuracy_seen", "adopted_from", "config_sha")


def stale_rows(store: dict) -> tuple[list[str], int]:
    """Stored rows whose recorded config is not the one :func:`run_config` gives now (their
    preset changed since they ran), as "preset · variant · seeds" lines, and the number of rows
    stored before configs were fingerprinted, which cannot be checked."""
    stale, unchecked = [], 0
    for preset, variants in store.items():
        for variant, runs in variants.items():
            known = preset in PRESETS and (variant in VARIANTS or variant in BASELINES
                                           or variant in BASELINE_VARIANTS)
            seeds = []
            for seed, row in runs.items():
                if "config_sha" not in row:
                    unchecked += 1
                    continue
                config = run_config(preset, variant, int(seed), "runs/bench") if known else None
                if config is None or config.fingerprint() != row["config_sha"]:
                    seeds.append(seed)
            if seeds:
                stale.append(f"{preset} · {variant} · seeds {', '.join(sorted(seeds))}")
    return stale, unchecked


def stale_text(store: dict) -> list[str]:
    stale, unchecked = stale_rows(store)
    lines = []
    if stale:
        lines += ["**Rows measured at a config that is no longer their preset's** (the preset "
                  "changed after they ran; rerun them):", "", *(f"- {s}" for s in stale), ""]
    if unchecked:
        lines += [f"{unchecked} stored rows predate config fingerprints (`config_sha`) and are "
                  "not checked against their presets.", ""]
    return lines


def cell(key: str, stats: dict, n_seeds: int, spread: bool = True) -> str:
    """One table cell: the formatted mean (± std with ``spread``), and how many of the row's
    seeds had the metric where some lack it (older runs)."""
    stat = stats.get(key, {"mean": None, "std": None, "n": 0})
    text = fmt(key, stat, spread)
    if stat["mean"] is not None and stat["n"] < n_seeds:
        text += f" ({stat['n']} of {n_seeds} seeds)"
    return text


def _mean(runs: dict, key: str) -> float | None:
    values = [r.get(key) for r in runs.values()]
    return None if not values or None in values else float(np.mean(values))


def sanity_check(variants: dict) -> list[str]:
    """The protocol check of the baselines issue, from the measured runs: seq-lora must forget
    and joint-lora must sit above the continual learners."""
    lines = ["**Protocol sanity check** (means over the seeds measured; what the numbers mean "
             "and why: [baselines.md](baselines.md)):"]
    forgetting = _mean(variants.get("seq-lora", {}), "average_forgetting")
    if forgetting is not None:
        lines.append(f"- seq-lora average forgetting {100 * forgetting:.2f}: "
                     + ("it forgets." if forgetting > 0.5 else "less than expected."))
    joint = _mean(variants.get("joint-lora", {}), "final_accuracy")
    if joint is not None:
        for group, names in (("continual LoRA learners (gradient-trained, one task at a time)",
                              CONTINUAL_LORA),
                             ("analytic / retrieval learners", ["simplecil", "ranpac", "proteus"])):
            finals = {n: _mean(variants[n], "final_accuracy") for n in names if n in variants}
            finals = {n: v for n, v in finals.items() if v is not None}
            if not finals:
                continue
            above = [n for n, v in finals.items() if v > joint]
            best = max(finals, key=finals.get)
            lines.append(f"- joint-lora final accuracy {100 * joint:.2f} vs the best of the "
                         f"{group}, {best} {100 * finals[best]:.2f}: "
                         + (f"above joint-lora: {', '.join(above)}." if above
                            else "joint-lora is above all of them."))
    return lines if len(lines) > 1 else []


def paired_gap(ours: dict, theirs: dict) -> tuple[float, list[float], str]:
    """Mean final-accuracy gap of two variants' rows, the per-seed paired differences over the
    seeds both ran, and the verdict of the evidence issue's rule (positive on every seed and at
    least 1 point on average)."""
    gap = _mean(ours, "final_accuracy") - _mean(theirs, "final_accuracy")
    paired = [ours[s]["final_accuracy"] - theirs[s]["final_accuracy"]
              for s in sorted(set(ours) & set(theirs))]
    verdict = "beats" if paired and min(paired) > 0 and gap >= 0.01 else "does not beat"
    return gap, paired, verdict


def gap_text(gap: float, paired: list[float]) -> str:
    return (f"mean final accuracy {100 * gap:+.2f} points; per seed "
            + (", ".join(f"{100 * d:+.2f}" for d in paired) or "no common seeds")
            + " (beating means positive on every seed and at least +1.00 on average).")


def control_summary(store: dict) -> list[str]:
    """Per preset: does `proteus` beat the best frozen-feature control? (mean final accuracy,
    and the per-seed paired differences where both ran the same seeds). Then the control of
    its decision: the same learner deciding in the paper's two steps."""
    lines = ["## PROTEUS against the best control on the same features", ""]
    for preset, targets in EVIDENCE_TARGETS.items():
        ours = store.get(preset, {}).get("proteus")
        if not ours:
            continue
        parts = []
        for key, target in targets.items():
            got = _mean(ours, key)
            if got is not None:  # judged as shown (percent, two decimals), not on float noise
                parts.append(f"{dict(COLUMNS)[key]} >= {100 * target:.2f}: {100 * got:.2f}, "
                             + ("met" if round(got, 4) >= target else "**missed**"))
        if parts:
            lines += [f"The evidence issue's targets on **{preset}** (`proteus`, mean of seeds "
                      f"{', '.join(sorted(ours))}): " + "; ".join(parts) + ".", ""]
    decision, units, upper, adapted = [], [], [], []
    for preset, variants in store.items():
        joint = variants.get("joint-lora", {})
        shared = sorted(set(variants.get("proteus", {})) & set(joint))
        if shared:  # on the seeds both ran: joint-lora is often run on fewer
            gap, paired, verdict = paired_gap({s: variants["proteus"][s] for s in shared},
                                              {s: joint[s] for s in shared})
            upper.append(f"- **{preset}** (seed{'s' if len(shared) > 1 else ''} "
                         f"{', '.join(shared)}): `proteus` {verdict} joint-lora: "
                         + gap_text(gap, paired))
        ran = [c for c in CONTROLS if c in variants]
        if "proteus" not in variants or not ran:
            continue
        ours = variants["proteus"]
        # the verdict is against controls that ran every seed of proteus: a control run once
        # would otherwise win or lose on one seed's luck; those are listed after it
        full = [c for c in ran if set(ours) <= set(variants[c])] or ran
        best = max(full, key=lambda c: _mean(variants[c], "final_accuracy"))
        gap, paired, verdict = paired_gap(ours, variants[best])
        line = (f"- **{preset}**: `proteus` {verdict} the best control, `{best}`: "
                + gap_text(gap, paired))
        partial = [c for c in ran if c not in full]
        if partial:
            def diffs(c: str) -> str:
                _, paired, _ = paired_gap(ours, variants[c])  # sorted by the common seeds
                seeds = sorted(set(ours) & set(variants[c]))
                return ", ".join(f"{100 * d:+.2f} (seed {x})" for d, x in zip(paired, seeds))
            line += (" Controls run on fewer seeds, per common seed: "
                     + "; ".join(f"`{c}` {diffs(c)}" for c in partial) + ".")
        lines.append(line)
        frozen = variants.get(NO_UNITS, {})
        if frozen and set(ours) <= set(frozen):  # the same seeds, not one older
            gap, paired, verdict = paired_gap(ours, frozen)
            units.append(f"- **{preset}**: `proteus` with its units {verdict} a frozen "
                         "backbone: " + gap_text(gap, paired))
        tied = variants.get(ADAPTED_LDA, {})
        if tied:
            parts = []
            for name, rows in (("the default `proteus`", ours),
                               (f"the same without units (its control, `{ADAPTED_LDA_FROZEN}`)",
                                variants.get(ADAPTED_LDA_FROZEN, {})),
                               (f"the best control, `{best}`", variants[best]),
                               ("joint-lora", joint)):
                seeds = sorted(set(tied) & set(rows))  # joint-lora may run fewer
                if seeds:
                    gap, paired, verdict = paired_gap({x: tied[x] for x in seeds},
                                                      {x: rows[x] for x in seeds})
                    parts.append(f"{verdict} {name}: " + gap_text(gap, paired))
            if parts:  # no common seed with any of them: nothing to compare
                adapted.append(f"- **{preset}**: `{ADAPTED_LDA}` " + " It ".join(parts))
        two_step = variants.get("proteus, retrieve then classify")
        if two_step:
            gap, paired, verdict = paired_gap(ours, two_step)
            decision.append(f"- **{preset}**: the class decision {verdict} retrieve then "
                            "classify: " + gap_text(gap, paired))
    if units:
        lines += ["", "What the low-rank units are worth: `proteus` against the same run with a "
                  f"frozen backbone (`{NO_UNITS}`), on every seed of `proteus`:", "", *units]
    if upper:
        lines += ["", "`proteus` against the upper bound, joint-lora (every task's data at once, "
                  "its recipe as its preset states it), on the seeds both ran:", "", *upper]
    if adapted:
        lines += ["", "The class decision plus the earliest candidate task's adapted-space LDA "
                  "(`learner.adapted_lda_weight`, its weight chosen on the text preset's "
                  "validation split; [pair_space.md](pair_space.md)), on the seeds each pair "
                  "ran:", "", *adapted]
    if decision:
        lines += ["", "The default's decision against its control, the same seeds and training "
                  "deciding in the paper's two steps (`proteus, retrieve then classify`):", "",
                  *decision]
    return [*lines, ""] if len(lines) > 2 else []


def ceiling_summary(store: dict, ceiling: list[dict]) -> list[str]:
    """Per preset that ``benchmarks/ceiling.py`` measured: the heads it fitted on the frozen
    features ``proteus`` decides across tasks with (the ``lda`` control streamed, and heads
    fitted on every task's data at once), beside ``proteus`` and joint-lora on the same seeds.
    The head shown first is the one with the best validation class-IL."""
    lines = []
    for preset, variants in store.items():
        runs = [r for r in ceiling if r["preset"] == preset]
        if not runs:
            continue
        names = [n for n in runs[0]["rows"] if all(n in r["rows"] for r in runs)]

        def mean(name: str, split: str, metric: str, runs: list[dict] = runs) -> float:
            return float(np.mean([r["rows"][name][split][metric] for r in runs]))

        best = max(names, key=lambda n: mean(n, "val", "class_il"))  # chosen on validation
        seeds = sorted(str(r["seed"]) for r in runs)
        line = (f"- **{preset}** (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}): "
                f"of the heads on the frozen features, `{best}` has the best validation "
                f"accuracy; on test its final accuracy is {mean(best, 'test', 'class_il'):.2f}, "
                f"task retrieval {mean(best, 'test', 'retrieval'):.2f}, and the right task is "
                f"among its two most likely in {mean(best, 'test', 'top2'):.2f}% of samples; "
                + ", ".join(f"`{n}` {mean(n, 'test', 'class_il'):.2f}"
                            for n in names if n != best) + ".")
        joint = "Joint-lora, which adapts the backbone on every task's data at once,"
        for variant, who in (("proteus", "`proteus`"), ("joint-lora", joint)):
            rows = {s: r for s, r in variants.get(variant, {}).items() if s in seeds}
            final = _mean(rows, "final_accuracy") if rows else None
            if final is None:
                continue
            line += f" {who} reaches {100 * final:.2f}"
            line += (f" on seed{'s' if len(rows) > 1 else ''} {', '.join(sorted(rows))}"
                     if len(rows) < len(seeds) else "")
            line += f" ({100 * final - mean(best, 'test', 'class_il'):+.2f} from it)"
            retrieval = _mean(rows, "task_retrieval_accuracy")
            line += f", task retrieval {100 * retrieval:.2f}." if retrieval else "."
        lines.append(line)
    if not lines:
        return []
    return ["## How far heads on the frozen features go", "",
            ("`proteus` decides across tasks on frozen features: its class Gaussians pick the "
             "two most likely tasks and its adapted heads add evidence only between those two. "
             "`benchmarks/ceiling.py` ([ceiling.md](ceiling.md)) fits heads on the same frozen "
             "features, some on every task's data at once (which no continual learner may: "
             "references, not methods), each one's setting chosen on a validation split and "
             "then fitted on all of each class's training samples, as the rows below are. "
             "Where none of them reaches a target, a decision on those features alone is not "
             "known to reach it; the top-2 recall is what re-ranking the two most likely tasks "
             "could recover at most:"), "", *lines, ""]


def pair_space_summary(report: dict) -> list[str]:
    """Per preset that ``benchmarks/pair_space.py`` measured: test accuracy of ``proteus``'s
    decision today and with the evidence from the earlier candidate task's adapted space, at
    the point validation chose, beside the frozen control of the chosen features."""
    lines = []
    for preset, c in report.get("chosen", {}).items():
        today, best = c["default"], c["chosen"]
        n = len(c["runs"])
        line = (f"- **{preset}** ({n} run{'s' if n > 1 else ''}): {100 * today['test']:.2f} "
                f"today; validation chose ")
        if best["gamma"] == 0.0:
            line += "no space-i evidence."
        else:
            line += (f"`{best['features']}` features (test {100 * best['test']:.2f}, "
                     f"{100 * (best['test'] - today['test']):+.2f})")
            control = report.get("controls", {}).get(best["features"])
            if control in c["per_features"]:
                ctl = c["per_features"][control]
                line += (f"; their frozen control, `{control}`, "
                         f"{100 * (ctl['test'] - today['test']):+.2f}")
            line += "."
        lines.append(line)
    if not lines:
        return []
    return [("Breaking that tie with the earlier candidate task's adapted backbone (a shrinkage "
             "LDA per task's adapted space over its own and later tasks' classes, exemplar-free; "
             "`benchmarks/pair_space.py`, [pair_space.md](pair_space.md), on finished runs that "
             f"held out a validation split; the `adapted` form is `proteus`'s option "
             f"`learner.adapted_lda_weight`, row `{ADAPTED_LDA}`), final accuracy on test:"), "",
            *lines, ""]


def head_swap_cell(head_swap: dict, preset: str, variant: str, seeds: list[str]) -> str:
    """Ridge / NCM class-IL on the variant's final features (``benchmarks/head_swap.py``), mean
    over the row's seeds that were measured there (all measured seeds where none is the row's);
    the seeds are named when they differ from the row's."""
    if variant in PER_TASK_EMBEDDING:
        return "n/a: one embedding per task"
    return swap_cell(head_swap.get(preset, {}).get(variant, {}), seeds) or "—"


def swap_cell(measured: dict, seeds: list[str]) -> str | None:
    """:func:`head_swap_cell` of one variant's measured seeds; None where none was measured."""
    # the two stores fill independently: a seed head-swapped but not in the row would put
    # another run's features beside the row's accuracies
    used = sorted(s for s in measured if s in seeds) or sorted(measured)
    if not used:
        return None
    cell = (f"{100 * np.mean([measured[s]['ridge'] for s in used]):.2f} / "
            f"{100 * np.mean([measured[s]['ncm'] for s in used]):.2f}")
    if used != seeds:
        cell += f" (seeds {', '.join(used)})"
    return cell


BEGIN = "<!-- begin: tables written by benchmarks/results.py from docs/results.json -->"
END = "<!-- end: tables written by benchmarks/results.py -->"
#: the rows of the baselines' tables in docs/baselines.md (the learners they compare)
BASELINE_ROWS = ["proteus", "lda", "joint-lora", *[b for b in BASELINES if b not in
                                                    ("lda", "joint-lora")]]


def baseline_tables(store: dict, head_swap: dict) -> list[str]:
    """One table per preset of every baseline measured, best final accuracy first."""
    lines = [BEGIN, ""]
    for preset, variants in store.items():
        rows = []
        for name in BASELINE_ROWS:
            runs = variants.get(name)
            if not runs:
                continue
            seeds, stats = sorted(runs), variant_stats(runs)
            cells = [cell("final_accuracy", stats, len(seeds)),
                     cell("task_il_accuracy", stats, len(seeds), spread=False),
                     cell("average_forgetting", stats, len(seeds), spread=False),
                     head_swap_cell(head_swap, preset, name, seeds)]
            rows.append((stats["final_accuracy"]["mean"],
                         f"| {name} | {', '.join(seeds)} | " + " | ".join(cells) + " |"))
        if not rows:  # a preset of PROTEUS variants only: no header over an empty table
            continue
        lines += [f"### {preset}: `{PRESETS[preset].relative_to(ROOT)}`", "",
                  "| learner | seeds | class-IL final | task-IL | avg. forgetting | "
                  "head-swap: ridge / NCM |", "|---|---|---:|---:|---:|---:|",
                  *[row for _, row in sorted(rows, key=lambda r: -r[0])], ""]
        lines += alignment_check(variants, head_swap.get(preset, {}))
        lines += budget_table(preset)
    return [*lines, END]


# the learners with no training budget: analytic heads on frozen features
ANALYTIC = {"simplecil", "ranpac", "lda", "fecam"}


def tuning_records(docs: Path = ROOT / "docs") -> dict[str, list[tuple[str, dict]]]:
    """Every ``benchmarks/tune.py`` record under ``docs/tuning``, by the preset it tuned
    (its path relative to the repository root); other records there (``rerank.py``'s) have
    no preset and are skipped."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted((docs / "tuning").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}: not a valid tuning record (JSON): {exc}") from None
        if "preset" not in record:
            continue
        out.setdefault(str(record["preset"]), []).append((f"tuning/{path.with_suffix('.md').name}",
                                                          record))
    return out


def budget_of(learner: dict) -> str:
    """A learner's training budget as its resolved config states it."""
    if learner.get("steps_per_task") is not None:
        return f"{learner['steps_per_task']} steps of batch {learner['batch_size']} a task"
    epochs = learner["epochs"]
    return f"{epochs} epoch{'' if epochs == 1 else 's'} of batch {learner['batch_size']}"


def yaml_value(text: str):
    """A ``--set`` value as the config reads it; YAML 1.1 leaves ``1e-6`` (no dot) a string,
    which the config's float options accept, so it is read as the number here too."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def tried_values(record: dict, key: str) -> list:
    """The values a tuning record ran ``key`` at, over its points (where a point left the key
    to the preset, the value its resolved config held)."""
    out = []
    for point in record.get("points", []):
        if key in point.get("point", {}):
            out.append(yaml_value(point["point"][key]))
        elif key in point.get("resolved", {}):
            out.append(point["resolved"][key])
    return out


def disagreement(record: dict, resolved: dict, others: list[tuple[str, dict]] = ()
                 ) -> tuple[list[str], list[str]]:
    """The keys of the point ``record`` chose whose value the resolved config does not hold,
    split into those no other record explains and, for the rest, how another record of
    ``others`` explains them: it tried this record's value and chose another, either the one
    the preset holds or one this record never tried (``proteus-text-epochs`` chose 6 epochs,
    later 8, over the 4 that ``proteus-text-units`` had chosen; a record whose own choice the
    preset does not run is flagged in its own line)."""
    held = resolved_values(resolved, list(record["chosen"]))
    unexplained, superseded = [], []
    for key, text in record["chosen"].items():
        mine = yaml_value(text)
        if held[key] == mine:
            continue
        mine_tried = tried_values(record, key)
        by = None
        for md, other in others:
            if other is record or key not in other["chosen"]:
                continue
            theirs = yaml_value(other["chosen"][key])
            if (theirs != mine and mine in tried_values(other, key)
                    and (theirs == held[key] or theirs not in mine_tried)):
                by = md, theirs
                break
        if by:
            superseded.append(f"{key}={shown(by[1])} chosen over {shown(mine)} in "
                              f"[{Path(by[0]).stem}]({by[0]})")
        else:
            unexplained.append(key)
    return unexplained, superseded


def disagreement_text(record: dict, resolved: dict, others: list[tuple[str, dict]] = ()) -> str:
    """Empty where the resolved config runs the point ``record`` chose; else the keys of that
    point whose value it does not hold, flagged, or where other records explain every one of
    them (:func:`disagreement`), how."""
    return _disagreement_suffix(record, resolved, *disagreement(record, resolved, others))


def _disagreement_suffix(record: dict, resolved: dict, unexplained: list[str],
                         superseded: list[str]) -> str:
    if unexplained:
        held = resolved_values(resolved, list(record["chosen"]))
        off = [key for key, text in record["chosen"].items() if held[key] != yaml_value(text)]
        flagged = ", ".join(f"{k}={record['chosen'][k]}" for k in off)
        return f" — **the preset does not run the chosen point** ({flagged})"
    return f" — since superseded: {'; '.join(superseded)}" if superseded else ""


def unapplied_choices(preset: str, docs: Path = ROOT / "docs") -> list[str]:
    """The validation records of ``preset``'s own file (the default ``proteus``) whose chosen
    point the preset does not run, one line each, under a heading; empty when there are none."""
    resolved = proteus.load_config(PRESETS[preset]).resolved()
    relative = str(PRESETS[preset].relative_to(ROOT))
    records = tuning_records(docs).get(relative, [])
    flagged = []
    for md, record in records:
        unexplained, superseded = disagreement(record, resolved, records)
        if unexplained:
            flagged.append(f"- [{Path(md).stem}]({md}): {points_text(record)}"
                           f"{_disagreement_suffix(record, resolved, unexplained, superseded)}")
    if not flagged:
        return []
    return [f"Validation records of `{relative}` whose chosen point the preset does not run "
            "(its rows above are at the preset's own settings):", "", *flagged, ""]


UNIT_KEYS = ("targets", "rank", "scale", "lr", "epochs", "batch_size", "steps_per_task")


def same_units(resolved: dict, preset: str) -> bool:
    """Whether a resolved config trains the units exactly as ``preset``'s ``proteus`` does."""
    own = proteus.load_config(PRESETS[preset]).resolved()["learner"]
    return all(resolved["learner"].get(k) == own.get(k) for k in UNIT_KEYS)


def scenario_only_base(path: Path) -> str | None:
    """The repository path of ``path``'s ``base:`` preset where ``path`` changes nothing of it
    but the scenario section, else None."""
    own = yaml.safe_load(path.read_text()) or {}
    if "base" not in own or set(own) - {"base", "scenario"}:
        return None
    return str((path.parent / own["base"]).resolve().relative_to(ROOT))


def budget_table(preset: str, docs: Path = ROOT / "docs") -> list[str]:
    """Each gradient-trained learner's budget on ``preset`` (``proteus``'s units, then every
    baseline's) and what a validation split said about it (the tuning records of its preset
    file); a preset that does not run the point its record chose is named."""
    records, rows = tuning_records(docs), []
    for name in ["proteus", *BASELINES]:
        found = ((PRESETS[preset], []) if name == "proteus"
                 else None if name in ANALYTIC else baseline_preset(name, preset))
        if found is None:
            continue
        path, overrides = found
        resolved = proteus.load_config(path, overrides).resolved()
        relative = str(path.relative_to(ROOT))
        source, via = relative, ""
        base = scenario_only_base(path)
        if relative not in records and base in records:
            # the file is another preset's recipe placed on another scenario (class order) of
            # the same data: the validation records of that preset chose its recipe
            source, via = base, f"its base `{base}` (same data, another scenario): "
        tuned = [f"{via}[{Path(md).stem}]({md}) {points_text(record)}"
                 + disagreement_text(record, resolved, records[source])
                 for md, record in records.get(source, [])]
        aligned = baseline_preset(f"{name}-ca", preset) if f"{name}-ca" in BASELINES else None
        if not tuned and aligned and not overrides:
            # the learner trains exactly as its classifier-aligned variant, which changes only
            # the head after training, so that variant's budget records hold for it too (a
            # record a later one superseded there is superseded here alike)
            theirs = records.get(str(aligned[0].relative_to(ROOT)), [])
            flags = []
            for _, record in theirs:
                unexplained, _ = disagreement(record, resolved, theirs)
                if unexplained:
                    flags.append(_disagreement_suffix(record, resolved, unexplained, []))
            if theirs:
                tuned.append(f"trains as `{name}-ca` (alignment changes only the head after "
                             "training): that row's records hold" + "".join(flags))
        if name == "aper" and not tuned and not overrides and same_units(resolved, preset):
            # the adaptive control adapts PROTEUS's own units, so their records are its records
            own_records = records.get(str(PRESETS[preset].relative_to(ROOT)))
            tuned.append("adapts `proteus`'s units (targets, rank, scale, budget) on its first "
                         "task: " + ("that row's records hold" if own_records else
                                     "not tuned on validation, as that row's are not"))
        if overrides:  # a derived preset: the records of that file were tuned on its parent
            tuned = [f"as on `{DERIVED[preset]}`, not tuned on this preset's data"]
        rows.append(f"| {name} | `{relative}` | {budget_of(resolved['learner'])} | "
                    + ("<br>".join(tuned).replace("|", "\\|")  # a regex's | in a cell
                       if tuned else "not tuned on validation") + " |")
    if not rows:
        return []
    derived = (f" (a learner without a `{preset}` preset of its own runs its `{DERIVED[preset]}` "
               "preset on this one's data, so a budget in epochs covers more steps here)"
               if preset in DERIVED else "")
    return [f"Training budgets on `{preset}`{derived}, with the validation final accuracy (%) "
            "of each point a `benchmarks/tune.py` record tried:", "",
            "| learner | preset | budget | validation records |", "|---|---|---|---|",
            *rows, ""]


ALIGNED = ["inflora-ca", "o-lora-ca", "sd-lora-ca", "slca"]
# the baselines issue's bar: each aligned learner's class-IL within this many points of
# joint-lora's
ALIGN_BAR = 10


def alignment_check(variants: dict, head_swap: dict | None = None) -> list[str]:
    """The baselines issue's bar: with classifier alignment, each LoRA baseline's class-IL
    within 10 points of joint-lora's, on the seeds both ran (each one's mean where they share
    none). Under a variant that misses it, the stale-Gaussian diagnostic of
    ``benchmarks/head_swap.py`` where measured (``head_swap``: that preset's store)."""
    joint = variants.get("joint-lora", {})
    ran = [n for n in ALIGNED if variants.get(n)]
    if not joint or not ran:
        return []
    lines = ["Classifier alignment against joint-lora, class-IL final on the seeds both ran; "
             f"the bar is within {ALIGN_BAR} points:", ""]
    for name in ran:
        line, gap = _against_joint(name, variants[name], joint)
        lines.append(f"- {name}: {line}.")
        if gap < -ALIGN_BAR:
            lines += stale_gaussian_line((head_swap or {}).get(name, {}), joint)
        # the control for a preset's deviation from the authors' recipe, either way round
        # (BASELINE_VARIANTS)
        for suffix, what in CONTROL_FORMS:
            control = f"{name}, {suffix}"
            if not variants.get(control):
                continue
            line, gap = _against_joint(control, variants[control], joint)
            swap = swap_cell((head_swap or {}).get(control, {}), sorted(variants[control]))
            lines.append(f"  - Its {suffix} (`{control}`: {what}): {line}"
                         + (f"; head-swap ridge / NCM on its final features {swap}." if swap
                            else "."))
            if gap < -ALIGN_BAR:
                lines += ["  " + diag for diag in
                          stale_gaussian_line((head_swap or {}).get(control, {}), joint)]
    return [*lines, ""]


# a learner's variant that is the control of its preset's recipe: the authors' form where the
# preset deviates from it, or the CPU-budget recipe a preset ran before it took the authors'
CONTROL_FORMS = [("official form", "the authors' recipe where this preset deviates from it"),
                 ("text recipe", ("the CPU-budget recipe this preset ran before it took "
                                  "the authors'"))]


def _against_joint(name: str, runs: dict, joint: dict) -> tuple[str, float]:
    """"<ours> against <joint-lora's>, <gap> points (<seeds>), within" on the seeds both ran
    (each one's mean where they share none), and the gap in points."""
    # joint-lora often has more seeds than a variant run once: a gap between means over
    # different seeds would mix the seed-to-seed spread into it
    shared = sorted(set(runs) & set(joint))
    ours = _mean({s: runs[s] for s in shared} if shared else runs, "final_accuracy")
    theirs = _mean({s: joint[s] for s in shared} if shared else joint, "final_accuracy")
    gap = 100 * (ours - theirs)
    where = (f"seed{'s' if len(shared) > 1 else ''} {', '.join(shared)}" if shared else
             f"no common seed: {name} {', '.join(sorted(runs))}, joint-lora "
             f"{', '.join(sorted(joint))}")
    return (f"{100 * ours:.2f} against {100 * theirs:.2f}, {gap:+.2f} points ({where}), "
            + ("within" if gap >= -ALIGN_BAR else "**not within**"), gap)


# the share of a miss that fresh Gaussians must recover for the diagnostic to name stale
# Gaussians as part of it, where they do not close the gap
STALE_SHARE = 0.25


def stale_gaussian_line(measured: dict, joint: dict) -> list[str]:
    """The variant's alignment re-run on Gaussians of its final features, against joint-lora
    on the seeds both have, and how far its stored class means drifted."""
    shared = sorted(s for s in measured if "ca_fresh" in measured[s] and s in joint)
    if not shared:
        return []
    fresh = 100 * np.mean([measured[s]["ca_fresh"] for s in shared])
    own = 100 * np.mean([measured[s]["own"] for s in shared])
    theirs = 100 * _mean({s: joint[s] for s in shared}, "final_accuracy")
    drift = np.mean([measured[s]["ca_drift"] for s in shared])
    return [f"  - Diagnostic (`benchmarks/head_swap.py`, seed{'s' if len(shared) > 1 else ''} "
            f"{', '.join(shared)}): its stored class means drifted by {drift:.2f} within-class "
            f"standard deviations by the last task. The same alignment on Gaussians re-estimated "
            f"from the final features gives {fresh:.2f} (own head {own:.2f}), "
            f"{fresh - theirs:+.2f} points from joint-lora: "
            + ("stale Gaussians account for the miss." if fresh - theirs >= -ALIGN_BAR else
               f"fresh Gaussians recover {fresh - own:.2f} of the {theirs - own:.2f} points by "
               "which its own head misses joint-lora's, but "
               "do not close the gap, so the rest of the miss is in the features."
               if fresh - own >= STALE_SHARE * (theirs - own) else
               "fresh Gaussians do not close the gap, so the miss is in the features.")]


def write_baseline_tables(store: dict, head_swap: dict, path: Path) -> None:
    """Replace the generated block of ``path`` (between BEGIN and END) with fresh tables."""
    if not path.is_file():
        return
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no generated block ({BEGIN} ... {END}) to replace")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    write_text_atomic(path, head + "\n".join(baseline_tables(store, head_swap)) + tail)


def current_head_swap(store: dict, head_swap: dict) -> dict:
    """``head_swap`` without the seeds that cannot be tied to the stored row's run: where both
    carry a config fingerprint and the two differ (the row was rerun at a new config after its
    features were head-swapped), or where the row has one and the head-swap, measured before
    fingerprints, has none. A row without a fingerprint predates them; its head-swap stays."""
    out: dict = {}
    for preset, learners in head_swap.items():
        for learner, seeds in learners.items():
            rows = store.get(preset, {}).get(learner, {})
            for seed, swapped in seeds.items():
                row = rows.get(seed, {})
                if "config_sha" in row and swapped.get("config_sha") != row["config_sha"]:
                    continue
                out.setdefault(preset, {}).setdefault(learner, {})[seed] = swapped
    return out


def render(store: dict, out_md: Path, head_swap: dict | None = None,
           baselines_md: Path | None = None, ceiling: list[dict] | None = None,
           pair_space: dict | None = None) -> None:
    head_swap = current_head_swap(store, head_swap or {})
    lines = ["# Results on the offline presets", "",
             "Targets (issue: PROTEUS): on the vision preset the default `proteus` should reach "
             "per-sample task retrieval >= 0.88 and final accuracy >= 0.87 (mean of 3 seeds) and "
             "beat simplecil on final accuracy on both presets.", "",
             "How the default `proteus` was chosen: its signatures are one Gaussian per class "
             "with a Ledoit-Wolf-shrunk covariance shared by all classes and accumulated over "
             "tasks, on frozen features (the embedding plus the pooled, L2-normalised output of "
             "every EfficientNet block), and its ridge logits are restricted to the retrieved "
             "task's classes. Its decision (`learner.decision`, chosen on a validation split, "
             "[rerank.md](rerank.md)) scores every class of the two most likely tasks by its "
             "signature log-likelihood plus 10 times its ridge logit on its task's adapted "
             "embedding; the paper's retrieve-then-classify is the row `proteus, retrieve then "
             "classify`; the other `proteus, ...` rows were measured before that change (commit "
             "508b663) and decide in two steps as well, except `proteus, no low-rank units (frozen "
             "backbone)`, rerun under it, and the text preset's rows, rerun when it took its "
             "validation-chosen units. "
             "On the vision preset, seeds 1993-1995, per-sample retrieval rose "
             "from 0.863 (embedding only) to 0.876 (two last blocks) and 0.919 (every block, "
             "reg 1e-6), measured by replaying the signatures on cached frozen features; those "
             "settings were first picked on the test sets. " + signature_tuning_sentence(TUNING)
             + " On text-large (the "
             "evidence issue's hard text preset: 2 tasks of 12 WordNet supersenses, 800 "
             "training glosses per class) PROTEUS's units are joint-lora's recipe there (every "
             "block's q, v, rank 8, scale 1.0, 4 epochs), chosen on its own "
             "validation split against the text preset's former units and no units "
             "([tuning/proteus-text-large-units.md](tuning/proteus-text-large-units.md)); its "
             "baselines run their text presets on its data, or a text-large preset of their "
             "own that keeps a budget the text preset has since changed "
             "([baselines.md](baselines.md)). On text-relations-paired (2 tasks of 6 WordNet "
             "relations between two words, each relation in its inverse's task; the hard text "
             "preset where joint-lora's task-IL is more than 5 points above every frozen "
             "control's, [adaptation_gap.md](adaptation_gap.md)) PROTEUS's units (every block's "
             "q, v, feed-forward and output layers, rank 8, scale 1.0, 8 epochs) were chosen "
             "on its validation split over text-large's q, v at 4 epochs "
             "([tuning/proteus-text-relations-paired-units.md]"
             "(tuning/proteus-text-relations-paired-units.md)); joint-lora's units were "
             "chosen on "
             "the validation split of text-relations (the same data and splits in a random "
             "class order), aper adapts PROTEUS's units, and the other baselines run their text "
             "presets on its data. On vision-clutter (MNIST-5k's digits drawn over "
             "Fashion-MNIST images, 5 tasks of 2 digits; the hard vision preset where "
             "joint-lora's task-IL is more than 5 points above every frozen control's, "
             "[adaptation_gap.md](adaptation_gap.md)) PROTEUS's units (the 1x1 convolutions of "
             "every EfficientNet block, rank 8, scale 1.0, 8 epochs) were chosen on its "
             "validation split over the vision preset's units "
             "([tuning/proteus-vision-clutter-units.md](tuning/proteus-vision-clutter-units.md)), "
             "joint-lora's recipe on the same split over the vision preset's "
             "([tuning/joint-lora-vision-clutter.md](tuning/joint-lora-vision-clutter.md)), and "
             "the other baselines run their vision presets on its data.", "",
             "Written by `benchmarks/results.py` from `docs/results.json`; rerun with the command "
             "at the end of each section. Mean ± std over the seeds listed (population std); "
             "accuracies in percent; wall time of the whole run on a 2-core CPU machine (the "
             "published runs shared those cores with other jobs, so their wall times are upper "
             "bounds, not comparisons). Head-swap: class-IL of a ridge and a cosine nearest-class-"
             "mean head fitted over all classes on the variant's final features "
             "(`benchmarks/head_swap.py`, [head_swap.md](head_swap.md)); they measure the "
             "features, not the learner's own head.", ""]
    lines += stale_text(store)
    lines += control_summary(store)
    lines += ceiling_summary(store, ceiling or [])
    lines += pair_space_summary(pair_space or {})
    for preset, variants in store.items():
        lines += [f"## {preset}: `{PRESETS[preset].relative_to(ROOT)}`", "",
                  "| variant | seeds | " + " | ".join(label for _, label in COLUMNS)
                  + " | head-swap: ridge / NCM |",
                  "|---|---|" + "---:|" * (len(COLUMNS) + 1)]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, runs in variants.items():
            seeds, stats = sorted(runs), variant_stats(runs)
            cells = [*(cell(key, stats, len(seeds)) for key, _ in COLUMNS),
                     head_swap_cell(head_swap, preset, variant, seeds)]
            lines.append(f"| {variant} | {', '.join(seeds)} | " + " | ".join(cells) + " |")
            curve = np.mean([runs[s]["accuracy_seen"] for s in seeds], axis=0)
            ax.plot(range(1, len(curve) + 1), 100 * curve, marker="o", label=variant)
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("accuracy on all seen classes (%)")
        ax.set_title(f"{preset} preset (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        plot = out_md.parent / f"results-{preset}.png"
        fig.savefig(plot, dpi=110)
        plt.close(fig)
        lines += ["", *sanity_check(variants)]
        if preset in PRESETS:
            lines += ["", *unapplied_choices(preset)]
        missing = [v for v in [*VARIANTS, *BASELINES] if v not in variants]
        unsupported = [v for v in missing if v in BASELINES and not baseline_preset(v, preset)]
        missing = [v for v in missing if v not in unsupported]
        if missing:
            lines += ["", "Not yet measured on this preset: " + "; ".join(missing) + "."]
        if unsupported:
            lines += ["", "No preset on this benchmark (the learner refuses its backbone; the "
                      "prompt family needs a transformer's tokens): " + "; ".join(unsupported)
                      + "."]
        cmd_variants = " ".join(f"'{v}'" for v in variants)
        lines += ["", f"![accuracy after each task]({plot.name})", "",
                  f"Regenerate: `python benchmarks/results.py --presets {preset} --variants "
                  f"{cmd_variants} --seeds <seeds>`", ""]
    write_text_atomic(out_md, "\n".join(lines) + "\n")
    if baselines_md is not None:
        write_baseline_tables(store, head_swap, baselines_md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["vision"])
    known = [*VARIANTS, *BASELINES, *BASELINE_VARIANTS]
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, *BASELINES],
                        help=f"any of: {'; '.join(known)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1993, 1994, 1995])
    parser.add_argument("--store", type=Path, default=ROOT / "docs/results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results.md")
    parser.add_argument("--runs-dir", default="runs/bench")
    parser.add_argument("--head-swap", type=Path, default=ROOT / "docs/head_swap.json",
                        help="benchmarks/head_swap.py's store, for the head-swap column")
    parser.add_argument("--ceiling", type=Path, default=ROOT / "docs/ceiling.json",
                        help="benchmarks/ceiling.py's measurements, summarised at the top")
    parser.add_argument("--pair-space", type=Path, default=ROOT / "docs/pair_space.json",
                        help="benchmarks/pair_space.py's measurements, summarised beside them")
    parser.add_argument("--baselines-md", type=Path, default=ROOT / "docs/baselines.md",
                        help="the page whose generated tables block is rewritten")
    parser.add_argument("--adopt", nargs=3, action="append",
                        metavar=("PRESET", "VARIANT", "RUN_DIR"),
                        help="store a finished run as VARIANT on PRESET (its config must be the "
                             "one this script would run), run nothing else; repeatable")
    parser.add_argument("--relabel", nargs=3, action="append",
                        metavar=("PRESET", "FROM", "TO"),
                        help="move FROM's stored rows on PRESET (and their head-swap rows) to "
                             "TO, each only if it ran at TO's config now; run nothing else; "
                             "repeatable, in order")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the markdown table and plots from --store, run nothing")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {known}")
    console = Console(stderr=True)
    store = load_json(args.store)
    for preset, variant, run_dir in args.adopt or []:
        if preset not in PRESETS or variant not in known:
            parser.error(f"--adopt {preset} {variant}: unknown preset or variant")
        seed = adopt(store, preset, variant, Path(run_dir))
        write_json_atomic(args.store, store)
        console.print(f"adopted {run_dir} as {variant} on {preset}, seed {seed}")
    head_swap = load_json(args.head_swap)
    for preset, source, target in args.relabel or []:
        # FROM may be a variant this script no longer runs (its recipe became the default)
        if preset not in PRESETS or target not in known:
            parser.error(f"--relabel {preset} {source} {target}: unknown preset or variant")
        seeds = relabel(store, head_swap, preset, source, target)
        write_json_atomic(args.store, store)
        write_json_atomic(args.head_swap, head_swap)
        console.print(f"moved {source} on {preset} to {target}, seeds {', '.join(seeds)}")

    def rerender() -> None:  # the side stores are read afresh: another script may have written
        render(store, args.out, load_json(args.head_swap), args.baselines_md,
               load_json(args.ceiling).get("runs", []), load_json(args.pair_space))

    for preset in [] if args.render_only or args.adopt or args.relabel else args.presets:
        for variant in args.variants:
            for seed in args.seeds:
                config = run_config(preset, variant, seed, args.runs_dir)
                if config is None:
                    console.print(f"[yellow]{variant}: no {preset} preset, skipped[/yellow]")
                    continue
                console.rule(f"{preset} · {variant} · seed {seed}")
                t0 = time.perf_counter()
                results = proteus.run(config, console=console)
                summary = summarise(results, time.perf_counter() - t0)
                summary["config_sha"] = config_fingerprint(results["config"])
                store.setdefault(preset, {}).setdefault(variant, {})[str(seed)] = summary
                write_json_atomic(args.store, store)
                rerender()
    rerender()
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
