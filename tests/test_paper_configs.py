"""The paper presets validate, and run end to end on fixture data in the same on-disk formats with
the tiny ViT in place of ViT-B/16 (the real runs need a GPU and the datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import proteus
from proteus.config import load_config
from proteus.data import LabeledData, ScenarioOptions, build_scenario

from fixture_data import cifar_folder

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
PRESETS = sorted(PAPER.glob("*.yaml"))

# a tiny run of any paper preset: tiny ViT, 4 classes in 2 tasks, one short epoch
SMALL = ["backbone={name: tiny-vit}", "scenario.num_tasks=2", "learner.epochs=1",
         "learner.rank=2", "learner.proj_dim=64", "learner.batch_size=8",
         "learner.signature.n_components=2", "eval.batch_size=16", "progress=false",
         "device=cpu"]


def test_there_are_paper_presets():
    assert {p.stem for p in PRESETS} >= {"cifar100-10t", "imagenet-r-10t", "imagenet-a-10t"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_paper_preset_validates_with_the_paper_recipe(path):
    config = load_config(path)
    assert config.learner.name == "proteus-paper"
    assert config.backbone.options["model"] == "google/vit-base-patch16-224-in21k"
    assert config.learner.options["signature"]["kind"] == "dpgmm"
    assert config.learner.options["augment"] is True
    if not path.stem.startswith("vtab"):  # the VTAB presets: test_vtab_presets_* below
        assert config.scenario["num_tasks"] == 10


def _image_folder(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"n0000{c}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, size=(20, 20, 3))
        for i in range(per_class):
            noise = rng.integers(-20, 21, size=base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("stem,make", [("imagenet-r-10t", _image_folder),
                                       ("cifar100-10t", cifar_folder)])
def test_paper_preset_runs_on_fixture_data(tmp_path, stem, make):
    root = make(tmp_path / "data")
    config = load_config(PAPER / f"{stem}.yaml",
                         SMALL + [f"data.0.root={root}", f"output_dir={tmp_path / 'runs'}"])
    results = proteus.run(config)
    assert len(results["accuracy_seen"]) == 2
    assert results["metrics"]["task_retrieval_accuracy"] is not None
    run_dir = tmp_path / "runs" / config.name
    manifest = json.loads((run_dir / "split_manifest.json").read_text())
    assert [t["classes"] for t in manifest["tasks"]] == [[0, 1], [2, 3]]
    assert (run_dir / "model" / "manifest.json").is_file()


# -- the VTAB presets (VTAB-5T small / large, VTAB-19T, VTAB-Sim50) ------------------------------

VTAB_1K = {  # the preset order: groups one after another, each ending with its fewest classes
    "natural": ["caltech101", "cifar", "dtd", "oxford_flowers102", "oxford_iiit_pet", "sun397",
                "svhn"],
    "specialized": ["eurosat", "resisc45", "diabetic_retinopathy", "patch_camelyon"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele", "kitti"],
}
VTAB_1K_CLASSES = {"caltech101": 102, "cifar": 100, "dtd": 47, "oxford_flowers102": 102,
                   "oxford_iiit_pet": 37, "sun397": 397, "svhn": 10, "eurosat": 10,
                   "resisc45": 45, "diabetic_retinopathy": 5, "patch_camelyon": 2,
                   "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "dsprites_loc": 16,
                   "dsprites_ori": 16, "smallnorb_azi": 18, "smallnorb_ele": 9, "kitti": 4}
# METHOD.md sections 1-3: rank, alpha, n_components (20 where the paper gives none), concentration
VTAB_RECIPE = {"vtab-5t-small": (16, 0.01), "vtab-5t-large": (16, 0.01),
               "vtab-19t": (4, 0.3), "vtab-sim50": (4, 0.3)}
# a tiny run of a VTAB preset: SMALL, without the task count (datasets make the tasks)
SMALL_VTAB = [o for o in SMALL if not o.startswith("scenario.num_tasks")]


def test_vtab_presets_have_the_paper_recipe():
    assert {p.stem for p in PRESETS} >= set(VTAB_RECIPE)
    for stem, (rank, alpha) in VTAB_RECIPE.items():
        config = load_config(PAPER / f"{stem}.yaml")
        options = config.learner.options
        assert (options["rank"], options["alpha"]) == (rank, alpha), stem
        assert options["signature"]["n_components"] == 20
        assert options["signature"]["concentration"] == 0.01
        assert config.data[0].name == "vtab"
    small = load_config(PAPER / "vtab-5t-small.yaml").scenario
    assert (small["tasks_by"], small["num_tasks"], small["shuffle_classes"]) == ("classes", 5,
                                                                                 False)
    large = load_config(PAPER / "vtab-5t-large.yaml")
    assert large.scenario["tasks_by"] == "dataset"
    assert large.data[0].options["datasets"] == ["eurosat", "oxford_flowers102",
                                                 "oxford_iiit_pet", "patch_camelyon", "resisc45"]
    order = [d for group in VTAB_1K.values() for d in group]
    for stem in ("vtab-19t", "vtab-sim50"):
        config = load_config(PAPER / f"{stem}.yaml")
        assert config.scenario["tasks_by"] == "dataset"
        assert config.data[0].options["datasets"] == order
    sim = load_config(PAPER / "vtab-sim50.yaml").scenario
    assert sim["similarity_mix"] == 50 and sim["dataset_groups"] == VTAB_1K
    assert sim["recurrence"] == 0


def _vtab_1k_like(datasets: list[str], train: int = 1000) -> LabeledData:
    """In memory, the shape of VTAB-1k: each dataset's real class count, 1000 training samples
    spread over its classes, one test sample per class; class names '<dataset>/<class>'."""
    labels, names, split = [], [], []
    for name in datasets:
        k = VTAB_1K_CLASSES[name]
        first = len(names)
        names += [f"{name}/{c:03d}" for c in range(k)]
        labels += [first + i % k for i in range(train)] + list(range(first, first + k))
        split += [0] * train + [1] * k
    return LabeledData(np.zeros((len(labels), 1), np.uint8), labels, names, "image",
                       official_split=split, source="vtab:vtab-1k")


@pytest.mark.parametrize("seed", [1993, 0, 7])
def test_vtab_sim50_and_19t_presets_build_at_vtab_1k_scale(seed):
    """The preset order passes the learners' check (largest class id never drops) and mixes
    50% within each group, at VTAB-1k scale, for several seeds."""
    config = load_config(PAPER / "vtab-sim50.yaml")
    data = _vtab_1k_like(config.data[0].options["datasets"])
    sim = build_scenario(data, ScenarioOptions.model_validate(config.scenario), seed)
    group_of = {d: g for g, members in VTAB_1K.items() for d in members}
    assert len(sim.tasks) == 19
    for task, spec in zip(sim.tasks, sim.manifest["tasks"]):
        assert len(task.train) == 1000 and len(task.own_classes) == VTAB_1K_CLASSES[task.dataset]
        assert spec["composition"][task.dataset] == 500
        assert all(group_of[d] == group_of[task.dataset] for d in spec["composition"])
    tops = [max(t.classes) for t in sim.tasks]
    assert tops == sorted(tops)
    plain = load_config(PAPER / "vtab-19t.yaml")
    tasks = build_scenario(data, ScenarioOptions.model_validate(plain.scenario), seed).tasks
    assert [len(t.classes) for t in tasks] == [VTAB_1K_CLASSES[t.dataset] for t in tasks]
    assert sum(len(t.classes) for t in tasks) == sum(VTAB_1K_CLASSES.values())


def _vtab_folder(root: Path, datasets: dict[str, int], train: int = 3, test: int = 2) -> Path:
    """root/<dataset>/{train,test}/<class>/<image>, ``datasets`` = name -> number of classes."""
    rng = np.random.default_rng(0)
    for name, classes in datasets.items():
        for c in range(classes):
            base = rng.integers(0, 256, size=(20, 20, 3))
            for part, n in (("train", train), ("test", test)):
                folder = root / name / part / f"c{c}"
                folder.mkdir(parents=True)
                for i in range(n):
                    noise = rng.integers(-20, 21, size=base.shape)
                    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


SIM_FIXTURE = {"natural": ["dtd", "svhn"], "specialized": ["eurosat", "patch_camelyon"],
               "structured": ["kitti"]}
VTAB_RUNS = {  # preset -> (fixture datasets, extra overrides, expected dataset of each task)
    "vtab-5t-small": ({"resisc45": 2, "eurosat": 2}, ["scenario.num_tasks=2"],
                      ["eurosat", "resisc45"]),
    "vtab-5t-large": ({"eurosat": 2, "oxford_flowers102": 3, "oxford_iiit_pet": 2,
                       "patch_camelyon": 2, "resisc45": 3}, [],
                      ["eurosat", "oxford_flowers102", "oxford_iiit_pet", "patch_camelyon",
                       "resisc45"]),
    "vtab-19t": ({"dtd": 2, "eurosat": 3, "kitti": 2}, ["data.0.datasets=[dtd, eurosat, kitti]"],
                 ["dtd", "eurosat", "kitti"]),
    "vtab-sim50": ({"dtd": 2, "svhn": 2, "eurosat": 2, "patch_camelyon": 2, "kitti": 2},
                   ["data.0.datasets=[dtd, svhn, eurosat, patch_camelyon, kitti]",
                    "scenario.dataset_groups={natural: [dtd, svhn], "
                    "specialized: [eurosat, patch_camelyon], structured: [kitti]}"],
                   ["dtd", "svhn", "eurosat", "patch_camelyon", "kitti"]),
}


@pytest.mark.parametrize("stem", sorted(VTAB_RUNS))
def test_vtab_preset_runs_on_fixture_data(tmp_path, stem):
    datasets, overrides, expected = VTAB_RUNS[stem]
    root = _vtab_folder(tmp_path / "vtab", datasets)
    config = load_config(PAPER / f"{stem}.yaml", SMALL_VTAB + overrides + [
        f"data.0.root={root}", f"output_dir={tmp_path / 'runs'}"])
    results = proteus.run(config)
    assert len(results["accuracy_seen"]) == len(expected)
    assert results["metrics"]["task_retrieval_accuracy"] is not None
    run_dir = tmp_path / "runs" / config.name
    manifest = json.loads((run_dir / "split_manifest.json").read_text())
    names = manifest["class_names"]
    own = [t.get("own_classes", t["classes"]) for t in manifest["tasks"]]
    assert [{names[c].split("/")[0] for c in classes} for classes in own] == [
        {d} for d in expected]  # one dataset a task, in the preset's order
    assert sum(len(c) for c in own) == sum(datasets.values())
    assert (run_dir / "model" / "manifest.json").is_file()
    if stem == "vtab-sim50":
        group_of = {d: g for g, members in SIM_FIXTURE.items() for d in members}
        for task in manifest["tasks"]:
            composition = task["composition"]
            own_n = composition[task["dataset"]]
            assert sum(composition.values()) == len(task["train_ids"]) == 6
            if task["dataset"] == "kitti":  # alone in its group: pure
                assert composition == {"kitti": 6}
            else:
                assert own_n == 3 and {group_of[d] for d in composition} == {
                    group_of[task["dataset"]]}
                assert len(task["classes"]) > len(task["own_classes"])  # others' classes too
