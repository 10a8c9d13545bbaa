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
    assert (run_dir / "model" / "state.safetensors").is_file()
