"""``proteus check``: a dry run of a preset against fixture data in the real on-disk layouts.

It reads the data, prints the task plan and parameter estimates, returns 0, and trains and writes
nothing; missing or malformed data returns 2 with a message naming the folder and the layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from proteus.check import CheckError, check, render
from proteus.cli import main
from proteus.config import load_config
from proteus.data import DataError

from fixture_data import cifar_folder

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
TWO_TASKS = ["scenario.num_tasks=2"]


# -- fixture writers (the same formats as tests/test_paper_configs.py) ---------------------------


def image_folder(root: Path, classes: int = 4, per_class: int = 5, split: bool = False) -> Path:
    """ImageNet-R/A as class folders: root/<wnid>/<image>, or root/{train,test}/<wnid>/."""
    rng = np.random.default_rng(0)
    parts = [("train", per_class), ("test", 2)] if split else [("", per_class)]
    for part, n in parts:
        for c in range(classes):
            folder = root / part / f"n0000{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.jpg")
    return root


def vtab_folder(root: Path, datasets: dict[str, int]) -> Path:
    """root/<dataset>/{train,test}/<class>/<image>, ``datasets`` = name -> number of classes."""
    for name, classes in datasets.items():
        for part, n in (("train", 3), ("test", 2)):
            for c in range(classes):
                folder = root / name / part / f"c{c}"
                folder.mkdir(parents=True)
                for i in range(n):
                    Image.new("RGB", (8, 8), (c * 40, i * 60, 0)).save(folder / f"{i}.png")
    return root


PRESET_FIXTURES = {
    "cifar100-10t": (cifar_folder, [f"class{c}" for c in range(4)], (24, 12)),
    "imagenet-r-10t": (image_folder, [f"n0000{c}" for c in range(4)], (16, 4)),
    "imagenet-a-10t": (image_folder, [f"n0000{c}" for c in range(4)], (16, 4)),
}


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


# the VTAB presets: datasets make the tasks; preset -> (fixture datasets, overrides)
VTAB_CHECK_FIXTURES = {
    "vtab-5t-small": ({"eurosat": 2, "resisc45": 2}, ["scenario.num_tasks=2"]),
    "vtab-5t-large": ({"eurosat": 2, "oxford_flowers102": 3, "oxford_iiit_pet": 2,
                       "patch_camelyon": 2, "resisc45": 2}, []),
    "vtab-19t": ({"dtd": 2, "eurosat": 3}, ["data.0.datasets=[dtd, eurosat]"]),
    "vtab-sim50": ({"dtd": 2, "svhn": 2, "kitti": 2},
                   ["data.0.datasets=[dtd, svhn, kitti]",
                    "scenario.dataset_groups={natural: [dtd, svhn], structured: [kitti]}"]),
}


def test_every_paper_preset_has_a_check_fixture():
    assert {p.stem for p in PAPER.glob("*.yaml")} == set(PRESET_FIXTURES) | set(
        VTAB_CHECK_FIXTURES)


@pytest.mark.parametrize("stem", sorted(VTAB_CHECK_FIXTURES))
def test_check_vtab_preset_prints_plan_and_writes_nothing(tmp_path, capsys, stem):
    datasets, overrides = VTAB_CHECK_FIXTURES[stem]
    root = vtab_folder(tmp_path / "vtab", datasets)
    runs = tmp_path / "runs"
    before = files_under(tmp_path)
    sets = [f"data.0.root={root}", f"output_dir={runs}", *overrides]
    code = main(["check", str(PAPER / f"{stem}.yaml"), *[a for o in sets for a in ("--set", o)]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "task plan" in out and "check passed" in out and "data order" in out
    assert not runs.exists() and files_under(tmp_path) == before
    summary = check(load_config(PAPER / f"{stem}.yaml", sets))
    assert summary["num_classes"] == sum(datasets.values())
    assert summary["num_test"] == 2 * summary["num_classes"]  # 2 test images per class
    assert summary["class_order"]["seed"] is None
    names = [set(t["class_names"]) for t in summary["tasks"]]
    if stem == "vtab-sim50":  # a task's label space holds the classes mixed in from its group
        assert names[0] == names[1] == {"dtd/c0", "dtd/c1", "svhn/c0", "svhn/c1"}
        assert names[2] == {"kitti/c0", "kitti/c1"}  # alone in its group: pure
    else:  # one dataset a task, in the preset's (here the fixture's) order
        assert [{n.split("/")[0] for n in task} for task in names] == [{d} for d in datasets]


# -- the command on each paper preset ------------------------------------------------------------


@pytest.mark.parametrize("stem", sorted(PRESET_FIXTURES))
def test_check_paper_preset_prints_plan_and_writes_nothing(tmp_path, capsys, stem):
    make, names, (n_train, n_test) = PRESET_FIXTURES[stem]
    root = make(tmp_path / "data")
    runs = tmp_path / "runs"
    before = files_under(tmp_path)
    code = main(["check", str(PAPER / f"{stem}.yaml"), "--set", f"data.0.root={root}",
                 "--set", f"output_dir={runs}", *[a for o in TWO_TASKS for a in ("--set", o)]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "task plan" in out and "data sources" in out and "check passed" in out
    for name in names:
        assert name in out
    assert "class order seed 1993" in out
    assert "hf-vision" in out and "google/vit-base-patch16-224-in21k" in out
    assert "not built" in out  # no --backbone: the hub model is named, not loaded
    assert not runs.exists()
    assert files_under(tmp_path) == before  # no manifest, no cache, nothing

    config = load_config(PAPER / f"{stem}.yaml",
                         [f"data.0.root={root}", f"output_dir={runs}", *TWO_TASKS])
    summary = check(config)
    assert summary["num_tasks"] == 2 and summary["num_classes"] == 4
    assert sorted(n for t in summary["tasks"] for n in t["class_names"]) == names
    assert (summary["num_train"], summary["num_test"]) == (n_train, n_test)
    assert [t["classes"] for t in summary["tasks"]] == [[0, 1], [2, 3]]
    assert summary["class_order"]["seed"] == 1993
    assert summary["sources"][0]["location"] == str(root)
    assert summary["parameters"]["rank"] == config.learner.options["rank"]
    assert summary["parameters"]["backbone_parameters"] is None
    json.dumps(summary)  # plain, JSON-ready
    assert not runs.exists()


def test_check_plan_matches_what_a_run_would_use(tmp_path):
    """The plan is the run's: same class order and per-task ids as the scenario builder's."""
    from proteus.data import ScenarioOptions, build_scenario
    from proteus.assemble import load_data

    root = image_folder(tmp_path / "imagenet-r", classes=6)
    config = load_config(PAPER / "imagenet-r-10t.yaml",
                         [f"data.0.root={root}", "scenario.num_tasks=3", "seed=7"])
    summary = check(config)
    scenario = build_scenario(load_data(config.data), ScenarioOptions.model_validate(config.scenario), 7)
    assert summary["class_order"]["order"] == scenario.class_order
    assert [(t["num_train"], t["num_test"]) for t in summary["tasks"]] == \
        [(len(t.train), len(t.test)) for t in scenario.tasks]
    assert summary["class_order"]["seed"] == 7


def test_check_official_split_of_an_image_folder(tmp_path, capsys):
    root = image_folder(tmp_path / "imagenet-a", split=True)
    code = main(["check", str(PAPER / "imagenet-a-10t.yaml"), "--set", f"data.0.root={root}",
                 "--set", "scenario.num_tasks=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "20 train / 8 test" in out and "official" in out


def test_check_with_backbone_counts_low_rank_parameters(tmp_path, capsys):
    root = cifar_folder(tmp_path / "cifar")
    code = main(["check", str(PAPER / "cifar100-10t.yaml"), "--backbone", "--set",
                 f"data.0.root={root}", "--set", "scenario.num_tasks=2", "--set",
                 "backbone={name: tiny-vit}", "--set", "learner.rank=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    # tiny ViT: 2 blocks x (query, value), 32 -> 32: 4 layers x 2 x (32 + 32) per task
    assert "512" in out and "adapted layers" in out

    config = load_config(PAPER / "cifar100-10t.yaml",
                         [f"data.0.root={root}", "scenario.num_tasks=2",
                          "backbone={name: tiny-vit}", "learner.rank=2"])
    p = check(config, build_backbone=True)["parameters"]
    assert p["backbone_built"] and p["backbone_parameters"] > 0
    assert p["target_layers"] == 4
    assert p["trained_per_task"] == p["low_rank_per_task"] == 4 * 2 * (32 + 32)


def test_check_with_backbone_for_a_learner_without_units(tmp_path):
    root = cifar_folder(tmp_path / "cifar")
    config = load_config(PAPER / "cifar100-10t.yaml",
                         [f"data.0.root={root}", "scenario.num_tasks=2",
                          "backbone={name: tiny-vit}", "learner={name: simplecil}"])
    p = check(config, build_backbone=True)["parameters"]
    assert p["backbone_built"] and not p["low_rank"]
    assert p["trained_per_task"] is None
    render(check(config), None)  # renders without a backbone too


def test_check_backbone_that_cannot_be_built_returns_2(tmp_path, capsys):
    root = cifar_folder(tmp_path / "cifar")
    missing = tmp_path / "no-such-model"
    code = main(["check", str(PAPER / "cifar100-10t.yaml"), "--backbone", "--set",
                 f"data.0.root={root}", "--set", "scenario.num_tasks=2", "--set",
                 f"backbone.model={missing}", "--set", "backbone.local_files_only=true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "could not be built" in err and "hf-vision" in err


def test_check_json_summary(tmp_path, capsys):
    root = cifar_folder(tmp_path / "cifar")
    code = main(["check", str(PAPER / "cifar100-10t.yaml"), "--json", "--set",
                 f"data.0.root={root}", "--set", "scenario.num_tasks=4"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_tasks"] == 4 and len(summary["tasks"]) == 4
    assert all(len(t["class_names"]) == 1 for t in summary["tasks"])


def test_check_vtab_config_with_datasets_as_tasks(tmp_path, capsys):
    """VTAB-5T small style: the vtab reader in dataset order, shuffle off, one dataset a task."""
    root = vtab_folder(tmp_path / "vtab", {"eurosat": 2, "pets": 2, "resisc45": 2})
    preset = tmp_path / "vtab.yaml"
    raw = yaml.safe_load((PAPER / "imagenet-a-10t.yaml").read_text())
    raw["data"] = [{"name": "vtab", "root": str(root), "datasets": ["pets", "eurosat", "resisc45"]}]
    raw["scenario"] = {"num_tasks": 3, "shuffle_classes": False}
    preset.write_text(yaml.safe_dump(raw))
    code = main(["check", str(preset)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pets/c0" in out and "data order" in out
    summary = check(load_config(preset))
    assert [t["class_names"] for t in summary["tasks"]] == [
        ["pets/c0", "pets/c1"], ["eurosat/c0", "eurosat/c1"], ["resisc45/c0", "resisc45/c1"]]
    assert summary["class_order"]["seed"] is None
    assert [(t["num_train"], t["num_test"]) for t in summary["tasks"]] == [(6, 4)] * 3


# -- error paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("stem,expected", [
    ("cifar100-10t", "expected root/{train,test,meta}"),
    ("imagenet-r-10t", "expected root/<class>/<image>"),
    ("imagenet-a-10t", "expected root/<class>/<image>"),
])
def test_check_missing_root_returns_2_naming_folder_and_layout(tmp_path, capsys, stem, expected):
    missing = tmp_path / "not-here"
    code = main(["check", str(PAPER / f"{stem}.yaml"), "--set", f"data.0.root={missing}",
                 "--set", f"output_dir={tmp_path / 'runs'}"])
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())  # rich wraps long lines
    assert code == 2
    assert str(missing) in err and expected in err and "not found" in err
    assert "task plan" not in captured.out
    assert not (tmp_path / "runs").exists()


def test_check_image_folder_with_wrong_layout_returns_2(tmp_path, capsys):
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.jpg")  # images straight in root, no class folders
    code = main(["check", str(PAPER / "imagenet-r-10t.yaml"), "--set", f"data.0.root={root}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert str(root) in err and "no class folders" in err
    assert "expected root/<class>/<image>" in err


def test_check_cifar_preset_on_an_image_folder_returns_2(tmp_path, capsys):
    root = image_folder(tmp_path / "imagenet-r")
    code = main(["check", str(PAPER / "cifar100-10t.yaml"), "--set", f"data.0.root={root}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert str(root / "meta") in err and "expected root/{train,test,meta}" in err


def test_check_empty_class_folder_returns_2(tmp_path, capsys):
    root = image_folder(tmp_path / "imagenet-r")
    (root / "n00009").mkdir()
    code = main(["check", str(PAPER / "imagenet-r-10t.yaml"), "--set", f"data.0.root={root}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and str(root / "n00009") in err and "no images" in err


def test_check_bad_override_and_bad_scenario_return_2(tmp_path, capsys):
    root = cifar_folder(tmp_path / "cifar")
    assert main(["check", str(PAPER / "cifar100-10t.yaml"), "--set", "learner.rnak=2"]) == 2
    assert "rnak" in capsys.readouterr().err
    # 4 classes cannot make the preset's 10 tasks: reported, not trained
    assert main(["check", str(PAPER / "cifar100-10t.yaml"), "--set",
                 f"data.0.root={root}"]) == 2
    assert "num_tasks=10" in " ".join(capsys.readouterr().err.split())


def test_check_function_raises_data_error(tmp_path):
    config = load_config(PAPER / "cifar100-10t.yaml", [f"data.0.root={tmp_path / 'nope'}"])
    with pytest.raises(DataError, match="CIFAR-100 folder not found"):
        check(config)
    assert issubclass(CheckError, ValueError)
