"""The comparison script's generated sanity check and the head diagnostic, on tiny inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import proteus
from conftest import tiny_config_dict

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(**metrics_by_seed):
    return {seed: dict(m) for seed, m in metrics_by_seed.items()}


def test_sanity_check_reads_the_measured_runs():
    results = _load("results")
    variants = {
        "seq-lora": _runs(a={"average_forgetting": 0.9, "final_accuracy": 0.1},
                          b={"average_forgetting": 0.8, "final_accuracy": 0.1}),
        "joint-lora": _runs(a={"final_accuracy": 0.8}, b={"final_accuracy": 0.9}),
        "o-lora": _runs(a={"final_accuracy": 0.3}, b={"final_accuracy": 0.5}),
        "s-prompts": _runs(a={"final_accuracy": 0.7}, b={"final_accuracy": 0.7}),
        "proteus": _runs(a={"final_accuracy": 0.95}, b={"final_accuracy": 0.95}),
        "ranpac": _runs(a={"final_accuracy": 0.6}, b={"final_accuracy": 0.6}),
    }
    text = "\n".join(results.sanity_check(variants))
    assert "seq-lora average forgetting 85.00: it forgets." in text
    assert "joint-lora final accuracy 85.00 vs the best of the continual LoRA" in text
    assert "s-prompts 70.00: joint-lora is above all of them." in text
    assert "proteus 95.00: above joint-lora: proteus." in text
    variants["seq-lora"] = _runs(a={"average_forgetting": 0.1, "final_accuracy": 0.1})
    variants["o-lora"] = _runs(a={"final_accuracy": 0.9})
    text = "\n".join(results.sanity_check(variants))
    assert "less than expected" in text and "above joint-lora: o-lora." in text
    assert results.sanity_check({"simplecil": _runs(a={"final_accuracy": 0.5})}) == []


def test_baseline_tables_replace_only_their_block_and_check_alignment(tmp_path):
    results = _load("results")

    def runs(*finals):
        return {str(1993 + i): {"final_accuracy": f, "task_il_accuracy": 0.9,
                                "average_forgetting": 0.1} for i, f in enumerate(finals)}

    def rebuilt() -> list[str]:  # the page's lines after the block is written again
        results.write_baseline_tables(store, head_swap, page)
        return page.read_text().splitlines()

    store = {"text": {"joint-lora": runs(0.60, 0.62), "inflora-ca": runs(0.55, 0.57),
                      "sd-lora-ca": runs(0.40), "simplecil": runs(0.5)}}
    # inflora-ca: one of its two seeds head-swapped; simplecil: a head-swap seed (1994) the row
    # lacks, which must not be averaged in beside the row's seed
    head_swap = {"text": {"inflora-ca": {"1993": {"ridge": 0.7, "ncm": 0.6}},
                          "simplecil": {"1993": {"ridge": 0.8, "ncm": 0.7},
                                        "1994": {"ridge": 0.2, "ncm": 0.1}},
                          # the stale-Gaussian diagnostic under the miss
                          "sd-lora-ca": {"1993": {"ridge": 0.6, "ncm": 0.5, "own": 0.40,
                                                  "ca_fresh": 0.55, "ca_drift": 3.5}}}}
    page = tmp_path / "baselines.md"
    page.write_text(f"# intro\n\n{results.BEGIN}\nold block 12.34\n{results.END}\n\nafter\n")
    results.write_baseline_tables(store, head_swap, page)
    text = page.read_text()
    assert text.startswith("# intro\n\n") and text.endswith("\n\nafter\n")
    assert "old block" not in text
    lines = text.splitlines()
    # the accuracy table's rows (the budget table below it names each learner's preset file)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| learner")
            and "`configs/" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| joint-lora", "| inflora-ca", "| simplecil",
                                                 "| sd-lora-ca"]  # best final first
    assert "| inflora-ca | 1993, 1994 | 56.00 ± 1.00 | 90.00 | 10.00 | 70.00 / 60.00 " \
        "(seeds 1993) |" in lines
    assert "| simplecil | 1993 | 50.00 | 90.00 | 10.00 | 80.00 / 70.00 |" in lines
    assert "- inflora-ca: 56.00 against 61.00, -5.00 points (seeds 1993, 1994), within." in lines
    # one seed run: against joint-lora's same seed (60.00), not its two-seed mean (61.00)
    assert "- sd-lora-ca: 40.00 against 60.00, -20.00 points (seed 1993), **not within**." \
        in lines
    diagnostic = lines[lines.index("- sd-lora-ca: 40.00 against 60.00, -20.00 points (seed "
                                   "1993), **not within**.") + 1]
    assert "drifted by 3.50 within-class standard deviations" in diagnostic
    assert "gives 55.00 (own head 40.00), -5.00 points from joint-lora: stale Gaussians " \
        "account for the miss." in diagnostic
    # a learner's official-form control (a BASELINE_VARIANTS row) is checked under it, with its
    # own head-swap and diagnostic, and is not a row of the accuracy table
    store["text"]["sd-lora-ca, official form"] = runs(0.52)
    head_swap["text"]["sd-lora-ca, official form"] = {"1993": {
        "ridge": 0.66, "ncm": 0.44, "own": 0.52, "ca_fresh": 0.53, "ca_drift": 0.2}}
    lines = rebuilt()
    at = lines.index("- sd-lora-ca: 40.00 against 60.00, -20.00 points (seed 1993), "
                     "**not within**.")
    assert lines[at + 2] == ("  - Its official form (`sd-lora-ca, official form`: the authors' "
                             "recipe where this preset deviates from it): 52.00 "
                             "against 60.00, -8.00 points (seed 1993), within; head-swap ridge "
                             "/ NCM on its final features 66.00 / 44.00.")
    assert not any(line.startswith("| sd-lora-ca, official form") for line in lines)
    store["text"]["sd-lora-ca, official form"] = runs(0.45)
    lines = rebuilt()
    assert "-15.00 points (seed 1993), **not within**; head-swap" in lines[at + 2]
    assert lines[at + 3].startswith("    - Diagnostic") and "gives 53.00 (own head 52.00), " \
        "-7.00 points from joint-lora" in lines[at + 3]
    # fresh Gaussians that recover much of a miss they do not close: both parts are named
    head_swap["text"]["sd-lora-ca, official form"]["1993"].update(own=0.40, ca_fresh=0.48)
    assert rebuilt()[at + 3].endswith(
        "gives 48.00 (own head 40.00), -12.00 points from joint-lora: fresh Gaussians recover "
        "8.00 of the 20.00 points by which its own head misses joint-lora's, but do not close "
        "the gap, so the rest of the miss is in the features.")
    # the other way round: a preset that took the authors' form keeps its former recipe as
    # the control, checked under the learner alike
    store["text"]["inflora-ca, text recipe"] = runs(0.47)
    lines = rebuilt()
    at = lines.index("- inflora-ca: 56.00 against 61.00, -5.00 points (seeds 1993, 1994), "
                     "within.")
    assert lines[at + 1] == ("  - Its text recipe (`inflora-ca, text recipe`: the CPU-budget "
                             "recipe this preset ran before it took the authors'): 47.00 "
                             "against 60.00, -13.00 points (seed 1993), **not within**.")
    assert not any(line.startswith("| inflora-ca, text recipe") for line in lines)
    page.write_text("no block here\n")
    with pytest.raises(SystemExit, match="no generated block"):
        results.write_baseline_tables(store, head_swap, page)


def test_head_diagnostic_splits_class_il_from_task_il(tmp_path, monkeypatch, capsys):
    diagnose = _load("diagnose_heads")
    monkeypatch.chdir(tmp_path)
    raw = tiny_config_dict(tmp_path / "runs", learner={"name": "o-lora", "rank": 2, "epochs": 2,
                                                       "lr": 0.05, "batch_size": 16})
    path = tmp_path / "o-lora.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert diagnose.main([str(path), "--seed", "1990"]) == 0
    out = capsys.readouterr().out
    assert "class-IL" in out and "task-IL" in out
    all_row = [line for line in out.splitlines() if "│ " in line and "all" in line][-1]
    cells = [c.strip() for c in all_row.strip("│ ").split("│")]
    class_il, task_il, hist = float(cells[1]), float(cells[2]), cells[3].split()
    assert 0 <= class_il <= task_il <= 100
    assert sum(int(c) for c in hist) == 48 and len(hist) == 3  # every test sample, 3 tasks

    raw["learner"] = {"name": "s-prompts", "rank": 2, "epochs": 1}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit):
        diagnose.main([str(path)])
    assert "no scores over all classes" in capsys.readouterr().err


def test_perf_targets_and_rendering_come_from_the_rows():
    perf = _load("perf")
    row = {"predict_over_plain": 1.4, "per_sample_predict_ms": 2.0, "train_step_ms": 3.0,
           "single_lora_step_ms": 2.0, "train_step_over_single_lora": 1.5, "learn_task_s": 1.0,
           "signature_bytes_per_task": 10, "serve_bytes": 20e6, "grow_bytes": 30e6,
           "peak_rss_mb": 900.0, "predict_s": 1.0, "plain_pass_s": 0.7}
    result = {"command": "python benchmarks/perf.py", "device": "cpu", "threads": 2,
              "n_images": 10, "repeats": 3, "rows": [{**row, "tasks": 1},
                                                    {**row, "tasks": 10,
                                                     "per_sample_predict_ms": 3.0}],
              "learn_s_per_task": [1.0] * 10}
    judged = {name.split(" <=")[0]: ok for name, _, ok in perf.targets(result)}
    assert judged == {"predict / plain pass": True,
                      "flat in T: per-image predict time, T = 10 / T = 1": False,
                      "serving part": False, "growth part": True,
                      "peak RSS": True}
    text = perf.render(result)
    assert "| 10 | 1.40x | 3.00 |" in text and "| growth part <= 40 MB | 30.0 MB | yes |" in text


def test_control_summary_says_when_proteus_does_not_beat_the_best_control():
    results = _load("results")
    store = {"vision": {
        "proteus": _runs(**{"1": {"final_accuracy": 0.92}, "2": {"final_accuracy": 0.91}}),
        "lda": _runs(**{"1": {"final_accuracy": 0.915}, "2": {"final_accuracy": 0.912}}),
        "simplecil": _runs(**{"1": {"final_accuracy": 0.70}, "2": {"final_accuracy": 0.71}}),
    }, "text": {
        "proteus": _runs(**{"1": {"final_accuracy": 0.70}}),
        "ranpac": _runs(**{"1": {"final_accuracy": 0.55}}),
    }}
    text = "\n".join(results.control_summary(store))
    assert "**vision**: `proteus` does not beat the best control, `lda`" in text
    assert "+0.50, -0.20" in text  # per-seed paired differences, in points
    assert "**text**: `proteus` beats the best control, `ranpac`: mean final accuracy +15.00" \
        in text
    assert "decision" not in text  # no retrieve-then-classify rows: no decision line
    assert "fewer seeds" not in text

    # a control run on fewer seeds than proteus is not the verdict's; its paired seeds follow
    store["text"]["proteus"]["2"] = {"final_accuracy": 0.72}
    store["text"]["ranpac"]["2"] = {"final_accuracy": 0.56}
    store["text"]["aper"] = _runs(**{"1": {"final_accuracy": 0.69}})
    text = "\n".join(results.control_summary(store))
    assert "**text**: `proteus` beats the best control, `ranpac`" in text
    assert "Controls run on fewer seeds, per common seed: `aper` +1.00 (seed 1)." in text
    del store["text"]["proteus"]["2"], store["text"]["ranpac"]["2"], store["text"]["aper"]

    # the decision's own control: the same seeds deciding in two steps, by the same paired rule
    store["vision"]["proteus, retrieve then classify"] = _runs(
        **{"1": {"final_accuracy": 0.925}, "2": {"final_accuracy": 0.90}})
    store["text"]["proteus, retrieve then classify"] = _runs(**{"1": {"final_accuracy": 0.68}})
    text = "\n".join(results.control_summary(store))
    assert ("**vision**: the class decision does not beat retrieve then classify: mean final "
            "accuracy +0.25 points; per seed -0.50, +1.00") in text
    assert "**text**: the class decision beats retrieve then classify: mean final accuracy " \
        "+2.00" in text

    # the units against a frozen backbone: only where that row ran every seed of proteus
    assert "units" not in text
    store["vision"][results.NO_UNITS] = _runs(**{"1": {"final_accuracy": 0.90}})
    store["text"][results.NO_UNITS] = _runs(**{"1": {"final_accuracy": 0.685}})
    text = "\n".join(results.control_summary(store))
    # seed 2 missing: an older single-seed row
    assert "**vision**: `proteus` with its units" not in text
    assert ("**text**: `proteus` with its units beats a frozen backbone: mean final accuracy "
            "+1.50") in text

    # the upper bound, run on fewer seeds: judged on the seeds both ran (+1.25), not on means
    # over different seeds (proteus's 91.50 over seeds 1-2 against 90.75: +0.75, no verdict)
    assert "upper bound" not in text
    store["vision"]["joint-lora"] = _runs(**{"1": {"final_accuracy": 0.9075}})
    text = "\n".join(results.control_summary(store))
    assert ("**vision** (seed 1): `proteus` beats joint-lora: mean final accuracy +1.25 points; "
            "per seed +1.25") in text
    store["vision"]["joint-lora"]["2"] = {"final_accuracy": 0.95}
    text = "\n".join(results.control_summary(store))
    assert "**vision** (seeds 1, 2): `proteus` does not beat joint-lora" in text
    assert "**text** (seed" not in text

    # the adapted-space LDA row against the default, the best control and joint-lora, each on
    # the seeds both ran
    assert results.ADAPTED_LDA not in text
    store["vision"][results.ADAPTED_LDA] = _runs(**{"1": {"final_accuracy": 0.93}})
    text = "\n".join(results.control_summary(store))
    assert (f"- **vision**: `{results.ADAPTED_LDA}` beats the default `proteus`: mean final "
            "accuracy +1.00 points; per seed +1.00") in text
    assert "It beats the best control, `lda`: mean final accuracy +1.50 points" in text
    assert "It beats joint-lora: mean final accuracy +2.25 points; per seed +2.25 " in text
    assert "without units" not in text  # its control not run: no line for it
    store["vision"][results.ADAPTED_LDA_FROZEN] = _runs(**{"1": {"final_accuracy": 0.926}})
    text = "\n".join(results.control_summary(store))
    assert (f"It does not beat the same without units (its control, "
            f"`{results.ADAPTED_LDA_FROZEN}`): mean final accuracy +0.40") in text


def test_head_swap_cell_names_its_seeds_and_skips_learners_without_one_embedding():
    results = _load("results")
    store = {"text": {"l2p": {"1993": {"ridge": 0.6, "ncm": 0.5}},
                      "s-prompts": {"1993": {"ridge": 0.9, "ncm": 0.9}}}}
    assert results.head_swap_cell(store, "text", "l2p", ["1993"]) == "60.00 / 50.00"
    # a row over more seeds than were head-swapped says which seeds the cell is from
    assert results.head_swap_cell(store, "text", "l2p", ["1993", "1994"]) == \
        "60.00 / 50.00 (seeds 1993)"
    assert results.head_swap_cell(store, "text", "dualprompt", ["1993"]) == "—"
    # S-Prompts reads the retrieved task's units: no one embedding, whatever a store holds
    assert results.head_swap_cell(store, "text", "s-prompts", ["1993"]).startswith("n/a")


def test_head_swap_of_an_earlier_run_is_not_shown_beside_a_rerun_row():
    results = _load("results")
    rows = {"text": {"l2p": {"1993": {"config_sha": "new"}, "1994": {"config_sha": "same"},
                             "1995": {}},
                     "o-lora": {"1993": {"config_sha": "readopted"}}}}
    swapped = {"text": {"l2p": {"1993": {"ridge": 0.6, "ncm": 0.5, "config_sha": "old"},
                                "1994": {"ridge": 0.7, "ncm": 0.6, "config_sha": "same"},
                                "1995": {"ridge": 0.8, "ncm": 0.7, "config_sha": "x"}},
                        "dualprompt": {"1993": {"ridge": 0.5, "ncm": 0.4}},
                        "o-lora": {"1993": {"ridge": 0.5, "ncm": 0.4}}}}
    current = results.current_head_swap(rows, swapped)
    # 1993 was rerun at a new config; 1995's row predates fingerprints, so it cannot be judged;
    # o-lora's row has a fingerprint that its head-swap, measured before them, cannot match
    assert sorted(current["text"]["l2p"]) == ["1994", "1995"]
    assert current["text"]["dualprompt"] == swapped["text"]["dualprompt"]
    assert "o-lora" not in current["text"]
    assert results.head_swap_cell(current, "text", "l2p", ["1993", "1994", "1995"]) == \
        "75.00 / 65.00 (seeds 1994, 1995)"


def _tiny_lora_preset(tmp_path, learner: str) -> Path:
    """A tiny preset file for ``learner`` (rank 2, one epoch), for the head-swap script."""
    raw = tiny_config_dict(tmp_path / "runs", learner={"name": learner, "rank": 2,
                                                       "epochs": 1, "batch_size": 16})
    path = tmp_path / f"{learner}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_head_swap_fits_analytic_heads_on_the_final_features(tmp_path, monkeypatch):
    from rich.console import Console

    swap = _load("head_swap")
    monkeypatch.chdir(tmp_path)
    path = _tiny_lora_preset(tmp_path, "inflora")

    result = swap.measure(path, 1990, Console(quiet=True))
    for key in ("own", "ncm", "ridge", "own_task_il"):
        assert 0.0 <= result[key] <= 1.0
    assert result["ncm"] > 1 / 6 and result["ridge"] > 1 / 6  # above chance (6 classes)
    md = swap.render({"vision": {"inflora": {"1990": result}}})
    assert "| inflora | 1990 |" in md and f"{100 * result['ridge']:.2f}" in md


def test_head_swap_on_a_finished_run_equals_training_it_again(tmp_path, monkeypatch):
    import proteus

    from rich.console import Console

    swap = _load("head_swap")
    monkeypatch.chdir(tmp_path)
    path = _tiny_lora_preset(tmp_path, "o-lora")

    retrained = swap.measure(path, 1990, Console(quiet=True))
    config = proteus.load_config(path, ["seed=1990", "progress=false",
                                        f"output_dir={tmp_path / 'bench'}", "name=o-lora-s1990"])
    proteus.run(config, console=Console(quiet=True))
    saved = swap.measure_saved(tmp_path / "bench" / "o-lora-s1990")
    for key in ("own", "ncm", "ridge", "own_task_il"):
        assert saved[key] == pytest.approx(retrained[key], abs=1e-9), key
    # both name the config they measured: the one results.py stores with the run's row
    assert saved["config_sha"] == retrained["config_sha"] == config.fingerprint()
    # a run that reused a split manifest by a relative path is measured from anywhere: the
    # scenario comes from the run directory's own manifest
    (tmp_path / "split.json").write_text(
        (tmp_path / "bench" / "o-lora-s1990" / "split_manifest.json").read_text())
    config = proteus.load_config(path, ["seed=1990", "progress=false",
                                        "scenario.manifest=split.json",
                                        f"output_dir={tmp_path / 'bench'}", "name=reuse-s1990"])
    proteus.run(config, console=Console(quiet=True))
    monkeypatch.chdir(tmp_path / "bench")
    reused = swap.measure_saved(tmp_path / "bench" / "reuse-s1990")
    assert reused["ridge"] == pytest.approx(saved["ridge"], abs=1e-9)
    # a split that no longer fits the data is refused by name, not measured on other samples
    manifest = tmp_path / "bench" / "reuse-s1990" / "split_manifest.json"
    manifest.write_text(manifest.read_text().replace('"num_samples": ', '"num_samples": 1'))
    with pytest.raises(SystemExit, match="reuse-s1990: its scenario does not rebuild"):
        swap.measure_saved(tmp_path / "bench" / "reuse-s1990")
    # a run whose results.json is gone is refused by name, not a bare traceback
    results_json = tmp_path / "bench" / "o-lora-s1990" / "results.json"
    kept = results_json.read_text()
    results_json.unlink()
    with pytest.raises(SystemExit, match="o-lora-s1990: no readable results.json"):
        swap.measure_saved(tmp_path / "bench" / "o-lora-s1990")
    results_json.write_text(kept)
    # a run whose model is missing is skipped by name, not measured
    assert swap.main(["--runs", str(tmp_path / "bench"), "--presets", "vision", "--learners",
                      "o-lora", "--seeds", "1990", "--store", str(tmp_path / "s.json"),
                      "--out", str(tmp_path / "s.md")]) == 0
    assert not (tmp_path / "s.json").exists()
    # a baseline variant of results.py is found under the directory name results.py gives its
    # run (not "<learner>-s<seed>"), and is stored under the variant's name, the key its row has
    variant = "o-lora, CE over every seen class"
    results = _load("results")
    (tmp_path / "runs" / "vision").mkdir(parents=True)  # results.py's <runs>/<preset>/<run>
    (tmp_path / "bench" / "o-lora-s1990").rename(tmp_path / "runs" / "vision" /
                                                 results.run_name(variant, 1990))
    args = ["--presets", "vision", "--learners", variant, "--seeds", "1990",
            "--store", str(tmp_path / "s.json"), "--out", str(tmp_path / "s.md")]
    assert swap.main(args) == 0  # without --runs a variant has no preset file: skipped
    assert not (tmp_path / "s.json").exists()
    assert swap.main(["--runs", str(tmp_path / "runs"), *args]) == 0
    stored = json.loads((tmp_path / "s.json").read_text())["vision"][variant]["1990"]
    assert stored["ridge"] == pytest.approx(saved["ridge"], abs=1e-9)


def test_stale_gaussian_drift_is_zero_on_the_backbone_that_stored_them(tmp_path):
    """The drift compares a class's stored mean with its mean on the final features, in its
    final within-class standard deviations: zero while the backbone has not moved since the
    class was stored, above zero once a later task has moved it."""
    from conftest import assembled
    from proteus.data import stack

    swap = _load("head_swap")
    run = assembled(tiny_config_dict(tmp_path, learner={"name": "sd-lora-ca", "rank": 2,
                                                        "epochs": 1, "batch_size": 16}))
    learner, ctx, tasks = run.learner, run.ctx, run.scenario.tasks

    def measured(data, last=()):
        x = learner.embedding(data, ctx)
        return swap.stale_gaussians(learner, learner.aligner, x, data.labels, x, 1990,
                                    lambda s: float((s.argmax(1) == data.labels).mean()),
                                    last=set(last))

    learner.learn_task(tasks[0], ctx)
    same = measured(tasks[0].train)
    assert same["ca_drift"] == pytest.approx(0.0, abs=1e-5)
    assert 1 / 2 < same["ca_fresh"] <= 1.0  # the two-way task's training data, refit on itself
    learner.learn_task(tasks[1], ctx)
    both = stack([tasks[0].train, tasks[1].train])
    assert measured(both, last=tasks[1].classes)["ca_drift"] > 1e-3


def test_a_baselines_embedding_is_what_its_head_reads(tmp_path):
    from conftest import assembled
    import numpy as np

    run = assembled(tiny_config_dict(tmp_path, learner={"name": "sd-lora", "epochs": 1}))
    learner, ctx = run.learner, run.ctx
    for task in run.scenario.tasks[:2]:
        learner.learn_task(task, ctx)
    test = run.scenario.tasks[0].test
    h = learner.embedding(test, ctx)
    want = h @ learner.head_w.numpy().T + learner.head_b.numpy()
    np.testing.assert_allclose(learner.scores(test, ctx), want, rtol=1e-5, atol=1e-5)


def test_tuning_chooses_on_validation_and_writes_down_the_grid(tmp_path, monkeypatch):
    tune = _load("tune")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs",
                                                    learner={"name": "ranpac"})))
    out = tmp_path / "tuning" / "ranpac.json"
    assert tune.main([str(path), "--grid", "learner.proj_dim=0,64", "--seeds", "1990", "1991",
                      "--val-fraction", "0.25", "--runs-dir", str(tmp_path / "runs"),
                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["grid"] == {"learner.proj_dim": ["0", "64"]} and result["val_fraction"] == 0.25
    assert [p["point"] for p in result["points"]] == [{"learner.proj_dim": "0"},
                                                      {"learner.proj_dim": "64"}]
    vals = [p["val_mean"] for p in result["points"]]
    assert result["chosen"] == result["points"][vals.index(max(vals))]["point"]
    for p in result["points"]:  # every point measured on both seeds, validation and test
        assert sorted(p["seeds"]) == ["1990", "1991"]
        assert all(0 <= s["val_final_accuracy"] <= 1 for s in p["seeds"].values())
    assert "validation final %" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        tune.parse_grid(["learner.proj_dim"])


def test_tuning_explicit_points_keep_the_preset_where_they_are_silent(tmp_path, monkeypatch):
    tune = _load("tune")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs",
                                                    learner={"name": "ranpac", "proj_dim": 64})))
    out = tmp_path / "points.json"
    assert tune.main([str(path), "--point", "",
                      "--point", "learner.proj_dim=0;learner.lambdas=[1.0]", "--seeds", "1990",
                      "--runs-dir", str(tmp_path / "runs"),
                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["grid"] is None
    assert [p["point"] for p in result["points"]] == [
        {}, {"learner.proj_dim": "0", "learner.lambdas": "[1.0]"}]
    runs = sorted((tmp_path / "runs").glob("point*-s1990/config.yaml"))
    dims = [yaml.safe_load(r.read_text())["learner"]["proj_dim"] for r in runs]
    assert dims == [64, 0]  # the empty point ran the preset as it is
    # every point keeps the values it ran with, so a later change of the preset cannot make
    # the record's "preset's point" mean another one
    assert [p["resolved"]["learner.proj_dim"] for p in result["points"]] == [64, 0]
    assert result["points"][1]["resolved"]["learner.lambdas"] == [1.0]
    assert result["points"][0]["resolved"]["learner.lambdas"] is None  # ranpac's default
    table = out.with_suffix(".md").read_text()
    assert "2 points over learner.proj_dim, learner.lambdas" in table
    assert "| <i>64</i> | <i>null</i> |" in table  # the preset's point: its values then, marked
    results = _load("results")
    assert (results.point_label(result["points"][0])
            == "the preset's then (proj_dim 64, lambdas null)")
    assert results.point_label({"point": {}}) == "the preset's"  # an older record
    with pytest.raises(SystemExit):
        tune.parse_point("learner.proj_dim")

    # --reuse: the finished runs of the same configs are read, not rerun; a point whose config
    # differs from the run in its directory runs again
    ran = []
    real_run = tune.proteus.run
    monkeypatch.setattr(tune.proteus, "run", lambda config: ran.append(config.name)
                        or real_run(config))
    again = tmp_path / "again.json"
    assert tune.main([str(path), "--point", "", "--point", "learner.proj_dim=32",
                      "--seeds", "1990", "--runs-dir", str(tmp_path / "runs"), "--reuse",
                      "--out", str(again)]) == 0
    assert ran == ["point1-s1990"]
    reused = json.loads(again.read_text())["points"][0]
    assert reused["seeds"] == result["points"][0]["seeds"]


def test_results_header_reads_the_signature_tunings_and_names_the_missing(tmp_path):
    results = _load("results")
    (tmp_path / "tuning").mkdir()
    record = {"seeds": [1993], "val_fraction": 0.1,
              "chosen": {"learner.signature.reg_covar": "1e-6"},
              "points": [{"point": {"learner.signature.reg_covar": "1e-6"}, "val_mean": 0.93},
                         {"point": {"learner.signature.reg_covar": "1e-4"}, "val_mean": 0.9025}]}
    (tmp_path / "tuning/a.json").write_text(json.dumps(record))
    text = results.signature_tuning_sentence(
        {"vision": ["tuning/a.json"], "text": ["tuning/b.json"]}, docs=tmp_path)
    assert "vision ([tuning/a.md](tuning/a.md), seed 1993, validation 0.1)" in text
    assert "reg_covar 1e-6: 93.00 (chosen); reg_covar 1e-4: 90.25." in text
    assert text.endswith("Not yet checked on validation: text (tuning/b.json).")


def test_adaptation_gap_verdicts():
    gap = _load("adaptation_gap")

    def run(task_il):
        return {"task_il_accuracy": task_il, "final_accuracy": task_il / 2}

    store = {"a.yaml@1": {"simplecil": run(0.80), "lda": run(0.88), "joint-lora": run(0.95)},
             "b.yaml@1": {"lda": run(0.93), "joint-lora": run(0.95)},
             "c.yaml@1": {"ranpac": run(0.90), "lda": run(0.97)},
             # room left, joint-lora not run yet: no verdict, so not counted as a miss
             "d.yaml@1": {"lda": run(0.80)}}
    text = "\n".join(gap.render(store, 5.0))
    assert "Gap (joint-lora): +7.00 points (meets the 5-point criterion)." in text
    assert "Gap (joint-lora): +2.00 points (misses the 5-point criterion)." in text
    assert "the best frozen task-IL, 97.00, leaves at most 3.00 points" in text
    assert "0 of 3 candidate presets meet" not in text
    assert "1 of 3 candidate presets meet the criterion (on every seed run with joint-lora) (1 " \
        "more awaits joint-lora). On 1 of the 2 where joint-lora and lda both ran" in text
    # several joint-lora settings: the gap is taken against the best, each one's options shown
    store["b.yaml@1"]["joint-lora, rank 16"] = {**run(0.99), "options": {
        "rank": 16, "scale": 1.0, "lr": 0.003, "epochs": 6, "targets": ["x"]}}
    text = "\n".join(gap.render(store, 5.0))
    assert "Gap (joint-lora, rank 16): +6.00 points (meets" in text
    assert "joint-lora, rank 16: rank 16, scale 1.0, lr 0.003, 6 epochs, targets `x`." in text
    # with --proteus rows: what the units add over a frozen backbone, and proteus against lda
    assert "Units (" not in text
    store["a.yaml@1"]["proteus"] = {"task_il_accuracy": 0.90, "final_accuracy": 0.47}
    store["a.yaml@1"]["proteus, no units"] = {"task_il_accuracy": 0.86, "final_accuracy": 0.465}
    text = "\n".join(gap.render(store, 5.0))
    assert ("Units (proteus minus proteus with `train_adapters: false`): +0.50 class-IL, "
            "+4.00 task-IL; proteus minus lda: +3.00 class-IL.") in text
    assert "proteus: rank" not in text  # a row that recorded no units names none
    store["a.yaml@1"]["proteus"]["options"] = {"rank": 8, "scale": 1.0, "lr": 0.001,
                                               "epochs": 4, "targets": ["q"]}
    assert "proteus: rank 8, scale 1.0, lr 0.001, 4 epochs, targets `q`." in \
        "\n".join(gap.render(store, 5.0))
    # the proteus rows are not frozen controls: the gap is still joint-lora against lda
    assert "Gap (joint-lora): +7.00 points" in text
    # another seed of the same preset without joint-lora: not a second candidate, and the
    # units and the best control are judged over both seeds by the paired rule
    store["a.yaml@2"] = {"lda": {"task_il_accuracy": 0.88, "final_accuracy": 0.45},
                         "proteus": {"task_il_accuracy": 0.90, "final_accuracy": 0.455},
                         "proteus, no units": {"task_il_accuracy": 0.86,
                                               "final_accuracy": 0.46}}
    text = "\n".join(gap.render(store, 5.0))
    assert "2 of 3 candidate presets meet the criterion (on every seed run with joint-lora) " \
        "(1 more awaits joint-lora)" in text
    # a second seed with joint-lora: the preset still counts once, and meets only if both seeds do
    store["b.yaml@2"] = {"lda": run(0.93), "joint-lora": run(0.95)}
    text = "\n".join(gap.render(store, 5.0))
    assert "1 of 3 candidate presets meet" in text and "On 0 of the 2 where" in text
    store["b.yaml@2"]["joint-lora"] = run(0.99)
    text = "\n".join(gap.render(store, 5.0))
    assert "2 of 3 candidate presets meet" in text
    del store["b.yaml@2"]
    assert "- `a.yaml` (proteus at seeds 1, 2):" in text
    assert "units (does not beat `train_adapters: false`)" in text
    assert "per seed +0.50, -0.50 (beating means" in text
    # lda (0.44 at seed 1, 0.45 at seed 2) is the best frozen control present at both seeds
    assert ("against the best frozen control at those seeds, lda (beats): mean final accuracy "
            "+1.75 points; per seed +3.00, +0.50") in text
    assert ("proteus with a frozen backbone against lda (beats): mean final accuracy +1.75 "
            "points; per seed +2.50, +1.00") in text
    # a label the rows are not found by is refused before anything runs
    with pytest.raises(SystemExit):
        gap.main(["a.yaml", "--joint-label", "lda", "--render-only"])


def test_sd_lora_diagnostic_reports_the_restart_factor(tmp_path, monkeypatch, capsys):
    """The factor is magnitude_init / (||B_j|| ||A_j||) of every finished task's units."""
    import proteus
    from proteus.config import validate

    diagnose = _load("diagnose_sd_lora")
    monkeypatch.chdir(tmp_path)
    raw = tiny_config_dict(tmp_path / "runs", name="sd", save_model=True,
                           learner={"name": "sd-lora", "rank": 2, "epochs": 2,
                                    "batch_size": 16})
    proteus.run(validate(raw))
    run = tmp_path / "runs" / "sd"
    assert diagnose.main([str(run)]) == 0
    out = capsys.readouterr().out
    model = proteus.load_model(run / "model", device="cpu")
    layers = list(model.learner.pool.layers.values())
    factors = [0.8 / float(layer.task_norms()[0]) for layer in layers]
    row = [line for line in out.splitlines() if line.strip("│ ").startswith("0 ")][0]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert float(cells[1]) == pytest.approx(float(np.median(factors)), abs=0.01)
    assert "task-IL" in out


def test_rerank_grid_spans_the_class_gaussian_and_the_two_step_decision():
    """beta 0 is the argmax over every class's Gaussian score; top 1 with a large beta is
    proteus's retrieve-then-classify; a larger top lets the head's evidence change the task."""
    rerank = _load("rerank")
    rng = np.random.default_rng(0)
    task_classes = [[0, 1], [2, 3, 4], [5]]
    ev = {"D": rng.normal(size=(200, 6)), "R": rng.normal(size=(200, 6))}
    assert (rerank.decide(ev, task_classes, 1, 0.0, "raw", 1.0) == ev["D"].argmax(1)).all()
    two_step = rerank.two_step(ev, task_classes)
    assert (rerank.decide(ev, task_classes, 1, 1e6, "raw", 1.0) == two_step).all()
    assert (rerank.decide(ev, task_classes, 1, 1e6, "within", 1.0) == two_step).all()
    # all tasks kept, head evidence dominant: the best ridge logit over every class
    assert (rerank.decide(ev, task_classes, 3, 1e6, "raw", 1.0) == ev["R"].argmax(1)).all()


def test_pair_space_reproduces_the_runs_decision_and_keeps_each_space_exemplar_free(tmp_path):
    """gamma 0 at the learner's own decision weight is the finished run's final accuracy; space
    i's LDA knows only the classes of tasks i, i+1, ... (their data exist once task i's units
    do); the E-alone decision picks among the two candidate tasks' classes by E."""
    from rich.console import Console

    pair = _load("pair_space")
    raw = tiny_config_dict(tmp_path / "runs", name="pair-s1990", seed=1990,
                           scenario={"num_tasks": 3, "val_fraction": 0.25},
                           learner={"name": "proteus", "rank": 2, "epochs": 1,
                                    "batch_size": 16, "proj_dim": 64})
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(raw))
    proteus.run(proteus.load_config(path), console=Console(quiet=True))
    run_dir = tmp_path / "runs" / "pair-s1990"
    final = json.loads((run_dir / "results.json").read_text())["metrics"]["final_accuracy"]

    out = tmp_path / "pair_space.json"
    assert pair.main([str(run_dir), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    chosen = report["chosen"]["pair"]
    assert chosen["default"]["test"] == pytest.approx(final, abs=1e-9)
    points = report["runs"][str(run_dir)]["points"]
    assert len(points) == len(pair.FEATURES) * 2 * len(pair.GAMMAS)
    assert chosen["chosen"]["val"] == max(p["val"] for p in points)  # one run: its argmax
    # the page shows every feature set and says which point validation chose
    md = out.with_suffix(".md").read_text()
    assert "frozen multi-block (control)" in md and "Chosen on validation:" in md
    # a path that is not a finished run is refused by name, and the store is left as it was
    kept = out.read_text()
    with pytest.raises(SystemExit, match="pair.yaml: not a finished run's directory"):
        pair.main([str(path), "--out", str(out)])
    assert out.read_text() == kept

    rng = np.random.default_rng(0)
    task_of = np.array([0, 0, 1, 1, 2, 2])
    labels = np.repeat(np.arange(6), 10)
    f = {"F": rng.normal(size=(60, 5)) + labels[:, None], "frozen": rng.normal(size=(60, 3))}
    f["H"] = [f["frozen"] + i for i in range(3)]
    models = pair.fit_spaces("frozen + adapted", f, labels, task_of, 3)
    assert [list(m.classes_) for m in models] == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5], [4, 5]]
    top2 = np.array([[1, 2]] * 60)  # every sample scored in space 1
    E = pair.pair_evidence(models, "frozen + adapted", f, top2, 6)
    assert np.isneginf(E[:, :2]).all() and np.isfinite(E[:, 2:]).all()
    D, R = rng.normal(size=(60, 6)), rng.normal(size=(60, 6))
    task_classes = [[0, 1], [2, 3], [4, 5]]
    assert (pair.decide(D, R, E, task_classes, top2, 0.0, None) == E.argmax(1)).all()
    restricted = np.where(np.arange(6) >= 2, D, -np.inf)
    assert (pair.decide(D, R, E, task_classes, top2, 0.0, 0.0)
            == restricted.argmax(1)).all()


def test_results_summarise_the_adapted_space_tie_breaker_against_today_and_its_control():
    results = _load("results")

    def point(features, gamma, test):
        return {"features": features, "beta": 10.0, "gamma": gamma, "val": 0.5, "test": test}

    per = {"adapted": point("adapted", 0.3, 0.671), "frozen embedding":
           point("frozen embedding", 0.3, 0.662)}
    report = {"controls": {"adapted": "frozen embedding"},
              "chosen": {"text": {"runs": ["a", "b"], "default": point("adapted", 0.0, 0.665),
                                  "chosen": per["adapted"], "per_features": per},
                         "vision": {"runs": ["c"], "default": point("adapted", 0.0, 0.9),
                                    "chosen": point("adapted", 0.0, 0.9),
                                    "per_features": per}}}
    text, vision = results.pair_space_summary(report)[2:4]
    assert text.startswith("- **text** (2 runs): 66.50 today")
    assert "`adapted` features (test 67.10, +0.60)" in text
    assert "`frozen embedding`, -0.30" in text
    assert vision == "- **vision** (1 run): 90.00 today; validation chose no space-i evidence."
    assert results.pair_space_summary({}) == []


def test_results_derived_preset_and_adopting_a_run_only_if_its_config_matches(tmp_path,
                                                                               monkeypatch):
    """A derived preset's baseline runs the parent benchmark's baseline preset with the derived
    preset's data and scenario on top; a finished run joins the store only with that config."""
    results = _load("results")
    monkeypatch.chdir(tmp_path)
    base = tiny_config_dict(tmp_path / "runs")
    (tmp_path / "configs/offline/baselines").mkdir(parents=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "tiny-large.yaml").write_text(yaml.safe_dump(
        {"base": "tiny.yaml", "scenario": {"num_tasks": 2},
         "data": [{**base["data"][0], "samples_per_class": 30}]}))
    (tmp_path / "configs/offline/baselines/ranpac-tiny.yaml").write_text(yaml.safe_dump(
        {"base": "../../../tiny.yaml", "learner": {"name": "ranpac", "proj_dim": 32}}))
    monkeypatch.setattr(results, "ROOT", tmp_path)
    # a derived preset that states only what it changes of another (its base chain holds the
    # rest of its data and scenario)
    (tmp_path / "tiny-paired.yaml").write_text(yaml.safe_dump(
        {"base": "tiny-large.yaml", "scenario": {"shuffle_classes": False}}))
    monkeypatch.setattr(results, "PRESETS", {"tiny": tmp_path / "tiny.yaml",
                                             "tiny-large": tmp_path / "tiny-large.yaml",
                                             "tiny-paired": tmp_path / "tiny-paired.yaml"})
    monkeypatch.setattr(results, "DERIVED", {"tiny-large": "tiny", "tiny-paired": "tiny"})
    paired = results.run_config("tiny-paired", "ranpac", 1990, "runs").resolved()
    assert paired["learner"]["name"] == "ranpac" and paired["scenario"]["num_tasks"] == 2
    assert paired["data"][0]["samples_per_class"] == 30
    assert paired["scenario"]["shuffle_classes"] is False

    assert results.flat_overrides({"scenario": {"num_tasks": 2, "x": {"y": [1]}}}) == [
        "scenario.num_tasks=2", "scenario.x.y=[1]"]
    config = results.run_config("tiny-large", "ranpac", 1990, str(tmp_path / "runs"))
    resolved = config.resolved()
    assert resolved["learner"]["name"] == "ranpac" and resolved["learner"]["proj_dim"] == 32
    assert resolved["scenario"]["num_tasks"] == 2
    assert resolved["data"][0]["samples_per_class"] == 30
    assert results.run_config("tiny-large", "l2p", 1990, "runs") is None  # no preset anywhere

    import proteus

    proteus.run(config)
    run_dir = tmp_path / "runs" / "tiny-large" / "ranpac-s1990"
    store: dict = {}
    assert results.adopt(store, "tiny-large", "ranpac", run_dir) == "1990"
    row = store["tiny-large"]["ranpac"]["1990"]
    assert row["adopted_from"] == str(run_dir) and 0 <= row["final_accuracy"] <= 1
    assert results.variant_stats(store["tiny-large"]["ranpac"])["final_accuracy"]["n"] == 1
    # the same run offered as the parent benchmark's ranpac: its scenario and data differ
    with pytest.raises(SystemExit, match="data, scenario"):
        results.adopt(store, "tiny", "ranpac", run_dir)
    assert list(store) == ["tiny-large"]

    # the stored row remembers its config: fresh while the preset resolves to it, stale once
    # the preset changes, and a row stored without a fingerprint is counted as unchecked
    assert results.stale_rows(store) == ([], 0)
    store["tiny-large"]["ranpac"]["1991"] = {k: v for k, v in row.items() if k != "config_sha"}
    (tmp_path / "configs/offline/baselines/ranpac-tiny.yaml").write_text(yaml.safe_dump(
        {"base": "../../../tiny.yaml", "learner": {"name": "ranpac", "proj_dim": 64}}))
    assert results.stale_rows(store) == (["tiny-large · ranpac · seeds 1990"], 1)
    text = "\n".join(results.stale_text(store))
    assert "no longer their preset's" in text and "- tiny-large · ranpac · seeds 1990" in text
    assert "1 stored rows predate" in text


def test_budget_table_reads_the_tuning_records_and_flags_a_preset_that_ignores_its_choice(
        tmp_path):
    results = _load("results")
    (tmp_path / "tuning").mkdir()

    def record(preset, chosen, grid=("35", "70")):  # the chosen point has the higher accuracy
        return {"preset": preset, "seeds": [1993], "val_fraction": 0.1,
                "chosen": {"learner.steps_per_task": chosen},
                "points": [{"point": {"learner.steps_per_task": v},
                            "val_mean": 0.59 if v == chosen else 0.57} for v in grid]}

    # o-lora-ca's text preset runs its authors' one epoch (no step budget): a record that
    # chose an unset budget over 35 steps agrees with it
    (tmp_path / "tuning/a.json").write_text(json.dumps(
        record("configs/offline/baselines/o-lora-ca-text.yaml", "null", ("35", "null"))))
    # ... and sd-lora-ca's runs its authors' 20 epochs: one that chose 140 steps does not,
    # which the table must say
    (tmp_path / "tuning/b.json").write_text(json.dumps(
        record("configs/offline/baselines/sd-lora-ca-text.yaml", "140", ("70", "140"))))
    (tmp_path / "tuning/rerank.json").write_text(json.dumps({"purpose": "no preset"}))
    # PROTEUS's own preset (not 2 epochs of its units): a record that chose 2 is flagged,
    # in the budget table and under the preset's results
    (tmp_path / "tuning/d.json").write_text(json.dumps({
        "preset": "configs/offline/text-wordnet.yaml", "seeds": [1993], "val_fraction": 0.1,
        "chosen": {"learner.epochs": "2"},
        "points": [{"point": {}, "val_mean": 0.6}, {"point": {"learner.epochs": "2"},
                                                      "val_mean": 0.61}]}))
    # a point naming a regex: its | must not split the table cell
    regex = "['.*(query|value)']"
    (tmp_path / "tuning/c.json").write_text(json.dumps({
        "preset": "configs/offline/baselines/joint-lora-text.yaml", "seeds": [1993],
        "val_fraction": 0.1, "chosen": {"learner.targets": regex},
        "points": [{"point": {"learner.targets": regex}, "val_mean": 0.6}]}))
    rows = {line.split(" | ")[0].strip("| "): line
            for line in results.budget_table("text", docs=tmp_path) if line.startswith("| ")}
    assert "| 1 epoch of batch 128 |" in rows["o-lora-ca"]
    assert "steps_per_task 35: 57.00; steps_per_task null: 59.00 (chosen)" in rows["o-lora-ca"]
    assert "does not run" not in rows["o-lora-ca"]
    assert "| 20 epochs of batch 128 |" in rows["sd-lora-ca"]
    assert ("the preset does not run the chosen point** (learner.steps_per_task=140)"
            in rows["sd-lora-ca"])
    assert "not tuned on validation" in rows["inflora-ca"]
    # the unaligned learners train as their -ca variants, whose records hold for them
    assert "trains as `o-lora-ca`" in rows["o-lora"] and "does not run" not in rows["o-lora"]
    assert "(learner.steps_per_task=140)" in rows["sd-lora"]
    assert "not tuned on validation" in rows["inflora"]
    assert "4 epochs of batch 32" in rows["l2p"]
    # the adaptive control adapts PROTEUS's own units: their records are its records
    assert "adapts `proteus`'s units" in rows["aper"]
    assert "targets ['.*(query\\|value)']: 60.00 (chosen) — **the preset does not run" \
        in rows["joint-lora"] and rows["joint-lora"].count(" | ") == 3
    assert not any(name in rows for name in results.ANALYTIC)
    epochs = proteus.load_config(results.PRESETS["text"]).resolved()["learner"]["epochs"]
    assert epochs != 2
    assert f"`configs/offline/text-wordnet.yaml` | {epochs} epochs of batch" in rows["proteus"]
    assert ("the preset's: 60.00; epochs 2: 61.00 (chosen) — **the preset does not run the "
            "chosen point** (learner.epochs=2)") in rows["proteus"]
    flags = results.unapplied_choices("text", docs=tmp_path)
    assert len(flags) == 4 and flags[2].startswith("- [d](tuning/d.md)")
    assert "(learner.epochs=2)" in flags[2]
    assert results.unapplied_choices("vision", docs=tmp_path) == []
    # a later record that tried 2 epochs against the preset's and chose the preset's explains
    # the first: no longer flagged, and the line says which record superseded it
    (tmp_path / "tuning/e.json").write_text(json.dumps({
        "preset": "configs/offline/text-wordnet.yaml", "seeds": [1993], "val_fraction": 0.1,
        "chosen": {"learner.epochs": str(epochs)},
        "points": [{"point": {"learner.epochs": "2"}, "val_mean": 0.6},
                   {"point": {"learner.epochs": str(epochs)}, "val_mean": 0.62}]}))
    assert results.unapplied_choices("text", docs=tmp_path) == []
    line = next(line for line in results.budget_table("text", docs=tmp_path)
                if line.startswith("| proteus |"))
    assert "does not run" not in line
    assert f"since superseded: learner.epochs={epochs} chosen over 2 in [e](tuning/e.md)" in line
    # ... but not one that never tried the first record's value
    (tmp_path / "tuning/e.json").write_text(json.dumps({
        "preset": "configs/offline/text-wordnet.yaml", "seeds": [1993], "val_fraction": 0.1,
        "chosen": {"learner.epochs": str(epochs)},
        "points": [{"point": {"learner.epochs": str(epochs + 2)}, "val_mean": 0.6},
                   {"point": {"learner.epochs": str(epochs)}, "val_mean": 0.62}]}))
    assert "(learner.epochs=2)" in results.unapplied_choices("text", docs=tmp_path)[2]
    # one that tried 2 and chose a value the preset does not run either supersedes the first,
    # and is flagged in its own line
    (tmp_path / "tuning/e.json").write_text(json.dumps({
        "preset": "configs/offline/text-wordnet.yaml", "seeds": [1993], "val_fraction": 0.1,
        "chosen": {"learner.epochs": str(epochs + 2)},
        "points": [{"point": {"learner.epochs": "2"}, "val_mean": 0.6},
                   {"point": {"learner.epochs": str(epochs + 2)}, "val_mean": 0.62}]}))
    flags = results.unapplied_choices("text", docs=tmp_path)
    assert not any("[d]" in flag for flag in flags)
    assert any("[e]" in flag and f"(learner.epochs={epochs + 2})" in flag for flag in flags)
    line = next(line for line in results.budget_table("text", docs=tmp_path)
                if line.startswith("| proteus |"))
    assert f"since superseded: learner.epochs={epochs + 2} chosen over 2 in [e]" in line
    # a float written without a dot (YAML 1.1 reads 1e-6 as a string) is still the number
    assert results.disagreement_text({"chosen": {"learner.signature.reg_covar": "1e-6"}},
                                     {"learner": {"signature": {"reg_covar": 1e-6}}}) == ""
    # a derived preset runs its parent's files on other data: their records do not apply
    (tmp_path / "tuning/f.json").write_text(json.dumps(
        record("configs/offline/baselines/coda-prompt-text.yaml", "35")))
    large = {line.split(" | ")[0].strip("| "): line
             for line in results.budget_table("text-large", docs=tmp_path)
             if line.startswith("| ")}
    # (coda-prompt has no text-large preset of its own; l2p has, and is not the text row)
    assert "l2p-text-large.yaml" in large["l2p"] and "as on `text`" not in large["l2p"]
    assert "not tuned on this preset's data" in large["coda-prompt"]
    assert "59.00" not in large["coda-prompt"]
    # a preset file that only places another preset's recipe on another class order (the
    # paired joint-lora) inherits that preset's records, and says where they come from
    (tmp_path / "tuning/f.json").write_text(json.dumps({
        "preset": "configs/offline/baselines/joint-lora-text-relations.yaml", "seeds": [1993],
        "val_fraction": 0.1, "chosen": {"learner.epochs": "10"},
        "points": [{"point": {"learner.epochs": "10"}, "val_mean": 0.7},
                   {"point": {"learner.epochs": "15"}, "val_mean": 0.69}]}))
    paired = {line.split(" | ")[0].strip("| "): line
              for line in results.budget_table("text-relations-paired", docs=tmp_path)
              if line.startswith("| ")}
    assert ("its base `configs/offline/baselines/joint-lora-text-relations.yaml`"
            in paired["joint-lora"]) and "epochs 10: 70.00 (chosen)" in paired["joint-lora"]
    # ... but a file that changes the learner does not: aper's paired preset has no records,
    # and neither have the units it adapts there
    assert "its base" not in paired["aper"] and "not tuned on validation, as" in paired["aper"]
    # a learner that trains as its aligned variant takes that variant's records as a whole:
    # sd-lora-ca's record that chose 140, superseded by a later one that tried 140 and chose
    # the preset's unset budget (the authors' epochs), is flagged under neither, and the
    # records' note appears once
    (tmp_path / "tuning/g.json").write_text(json.dumps(
        record("configs/offline/baselines/sd-lora-ca-text.yaml", "null", ("140", "null"))))
    rows = {line.split(" | ")[0].strip("| "): line
            for line in results.budget_table("text", docs=tmp_path) if line.startswith("| ")}
    assert "since superseded: learner.steps_per_task=null chosen over 140 in [g]" \
        in rows["sd-lora-ca"] and "does not run" not in rows["sd-lora-ca"]
    assert rows["sd-lora"].count("trains as `sd-lora-ca`") == 1
    assert "does not run" not in rows["sd-lora"]
    assert results.shown(None) == "null"  # a key set back to the learner's default
    # a broken record is named, not a bare JSON traceback
    (tmp_path / "tuning/d.json").write_text("{broken")
    with pytest.raises(SystemExit, match=r"d\.json: not a valid tuning record"):
        results.budget_table("text", docs=tmp_path)


def test_relabel_moves_rows_only_where_they_ran_at_the_target_config(tmp_path, monkeypatch):
    """When a preset takes a variant's recipe as its default, the variant's rows become the
    default's and the former default's rows the variant that keeps the old recipe; a row that
    ran at another config stops the move before anything moves."""
    results = _load("results")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs/offline/baselines").mkdir(parents=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs")))
    preset = tmp_path / "configs/offline/baselines/ranpac-tiny.yaml"

    def set_preset(proj_dim):
        preset.write_text(yaml.safe_dump({"base": "../../../tiny.yaml",
                                          "learner": {"name": "ranpac", "proj_dim": proj_dim}}))

    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "PRESETS", {"tiny": tmp_path / "tiny.yaml"})
    monkeypatch.setattr(results, "BASELINES", ["ranpac"])
    monkeypatch.setattr(results, "BASELINE_VARIANTS", {
        "ranpac, wide": ("ranpac", ["learner.proj_dim=64"]),
        "ranpac, narrow": ("ranpac", ["learner.proj_dim=32"])})

    def row(variant, seed, final):
        sha = results.run_config("tiny", variant, seed, "runs/bench").fingerprint()
        return {"final_accuracy": final, "config_sha": sha}

    set_preset(32)
    store = {"tiny": {"ranpac": {"1990": row("ranpac", 1990, 0.5),
                                 "1991": row("ranpac", 1991, 0.6)},
                      "ranpac, wide": {"1990": row("ranpac, wide", 1990, 0.7)}}}
    head_swap = {"tiny": {"ranpac": {"1990": {"ridge": 0.4}},
                          "ranpac, wide": {"1990": {"ridge": 0.8}}}}
    set_preset(64)  # the wide recipe becomes the default
    before = json.loads(json.dumps(store))
    # the default's rows ran at 32, not at the wide recipe: refused, nothing moved
    with pytest.raises(SystemExit, match="seed 1990's row ran at a config"):
        results.relabel(store, head_swap, "tiny", "ranpac", "ranpac, wide")
    assert store == before

    assert results.relabel(store, head_swap, "tiny", "ranpac", "ranpac, narrow") == [
        "1990", "1991"]
    assert results.relabel(store, head_swap, "tiny", "ranpac, wide", "ranpac") == ["1990"]
    assert store["tiny"]["ranpac"] == {"1990": before["tiny"]["ranpac, wide"]["1990"]}
    assert store["tiny"]["ranpac, narrow"] == before["tiny"]["ranpac"]
    assert "ranpac, wide" not in store["tiny"]
    assert head_swap["tiny"] == {"ranpac": {"1990": {"ridge": 0.8}},
                                 "ranpac, narrow": {"1990": {"ridge": 0.4}}}
    assert results.stale_rows(store) == ([], 0)
    with pytest.raises(SystemExit, match="no stored rows of ranpac, wide"):
        results.relabel(store, head_swap, "tiny", "ranpac, wide", "ranpac")


def test_ceiling_scores_class_il_task_retrieval_and_top2_task_recall():
    ceiling = _load("ceiling")
    task_of = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([[5, 1, 0, 0, 0, 0],    # right class
                       [5, 1, 0, 0, 0, 0],    # wrong class, right task
                       [0, 0, 0, 1, 5, 0],    # wrong task, right one second
                       [0, 0, 1, 0, 5, 1]],   # wrong task, right one last
                      dtype=float)
    got = ceiling.accuracies(scores, np.array([0, 1, 2, 0]), task_of)
    assert got == {"class_il": 25.0, "retrieval": 50.0, "top2": 75.0}


def test_ceiling_streams_the_lda_control_and_chooses_joint_heads_on_validation(tmp_path,
                                                                             monkeypatch):
    ceiling = _load("ceiling")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "lda-tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs",
                                                    learner={"name": "lda"})))
    monkeypatch.setattr(ceiling, "PRESETS", {"tiny": str(path)})
    monkeypatch.setattr(ceiling, "GRIDS", {"logistic, joint": ("C", [1e-4, 1.0])})
    monkeypatch.setattr(ceiling, "ROWS", ["lda, streaming", "logistic, joint"])
    out = tmp_path / "ceiling.json"
    assert ceiling.main(["--presets", "tiny", "--seeds", "1990", "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    # its test row is the lda control as the results' runs train it: on every training sample
    config = proteus.load_config(path, ["seed=1990", "progress=false"])
    control = proteus.run(config)["metrics"]["final_accuracy"]
    assert run["rows"]["lda, streaming"]["test"]["class_il"] == pytest.approx(100 * control)
    joint = run["rows"]["logistic, joint"]
    assert joint["val"]["class_il"] == max(joint["grid"].values())
    assert joint["val"]["class_il"] == joint["grid"][str(joint["setting"]["C"])]
    # the choice reads no test label: scrambled test labels leave it and its validation as is
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    x[:, 0] += 3 * y
    task_of = np.array([0, 0, 1])
    split = (x[::3], y[::3]), (x[1::3], y[1::3])
    kept = ceiling.fit_joint("logistic, joint", 0, split[0], split[1], (x[2::3], y[2::3]),
                             task_of)
    scrambled = ceiling.fit_joint("logistic, joint", 0, split[0], split[1],
                                  (x[2::3], rng.permutation(y[2::3])), task_of)
    assert scrambled["setting"] == kept["setting"] and scrambled["val"] == kept["val"]
    assert scrambled["test"] != kept["test"]
    text = out.with_suffix(".md").read_text()
    assert "| logistic, joint |" in text and "--presets tiny --seeds 1990" in text
    assert "C in 0.0001, 1" in text and "(1990)" in text


def test_results_summarise_the_frozen_feature_heads_beside_proteus_and_joint_lora():
    results = _load("results")

    def row(val, test):
        return {"val": {"class_il": val, "retrieval": val, "top2": val},
                "test": {"class_il": test, "retrieval": test + 1, "top2": test + 2}}

    # validation prefers lda, test prefers logistic: the summary leads with validation's choice
    ceiling = [{"preset": "vision", "seed": s, "rows": {"lda, streaming": row(95.0, 90.0 + s),
                                                        "logistic, joint": row(80.0, 99.0)}}
               for s in (1, 3)]
    store = {"vision": {"proteus": _runs(**{"1": {"final_accuracy": 0.95,
                                                  "task_retrieval_accuracy": 0.96},
                                            "3": {"final_accuracy": 0.93,
                                                  "task_retrieval_accuracy": 0.94},
                                            "7": {"final_accuracy": 0.10,
                                                  "task_retrieval_accuracy": 0.10}}),
                        "joint-lora": _runs(**{"1": {"final_accuracy": 0.88}})},
             "text": {"proteus": _runs(**{"1": {"final_accuracy": 0.6}})}}
    text = "\n".join(results.ceiling_summary(store, ceiling))
    assert "## How far heads on the frozen features go" in text and "**text**" not in text
    (line,) = [x for x in text.splitlines() if x.startswith("- **vision**")]
    assert "(seeds 1, 3)" in line and "`lda, streaming` has the best validation" in line
    assert "final accuracy is 92.00, task retrieval 93.00" in line and "in 94.00% of" in line
    assert "`logistic, joint` 99.00." in line
    # proteus on the ceiling's seeds only (seed 7 left out), with the sign of the difference
    assert "`proteus` reaches 94.00 (+2.00 from it), task retrieval 95.00." in line
    assert "at once, reaches 88.00 on seed 1 (-4.00 from it)." in line
    assert results.ceiling_summary(store, []) == []


def test_control_summary_checks_the_evidence_issues_vision_targets():
    results = _load("results")
    store = {"vision": {"proteus": _runs(**{"1": {"final_accuracy": 0.94,
                                                  "task_retrieval_accuracy": 0.92},
                                            "2": {"final_accuracy": 0.92,
                                                  "task_retrieval_accuracy": 0.94}})}}
    text = "\n".join(results.control_summary(store))
    assert ("targets on **vision** (`proteus`, mean of seeds 1, 2): final accuracy >= 93.00: "
            "93.00, met; task retrieval >= 94.00: 93.00, **missed**.") in text


def test_ceiling_presets_are_the_lda_rows_of_the_results_table():
    """Each preset file ceiling.py fits its heads from is the config of results.py's ``lda``
    row on that preset (same fingerprint), and a derived preset's file is its parent's lda
    preset on its data and scenario, as results.py would derive it without the file."""
    from proteus.config import config_fingerprint, read_yaml

    ceiling, results = _load("ceiling"), _load("results")
    root = BENCH.parent
    for preset, path in ceiling.PRESETS.items():
        own = proteus.load_config(root / path, ["seed=1993", "progress=false"]).resolved()
        row = results.run_config(preset, "lda", 1993, "runs/bench").resolved()
        assert config_fingerprint(own) == config_fingerprint(row), path
        parent = results.DERIVED.get(preset)
        if parent is not None:
            base, overrides = results.baseline_preset("lda", parent)
            data = read_yaml(results.PRESETS[preset])
            derived = proteus.load_config(base, overrides + results.flat_overrides(
                {k: data[k] for k in ("data", "scenario")}) + ["seed=1993", "progress=false"])
            assert config_fingerprint(derived.resolved()) == config_fingerprint(own), path
