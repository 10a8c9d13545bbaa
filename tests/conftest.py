"""Shared fixtures: a tiny, fast run config (synthetic images, tiny random ViT, SimpleCIL).

Everything here runs offline: the Hugging Face hub is switched off for the whole session before
any test module imports ``transformers``, so a missing model fails at once instead of waiting on
the network.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from proteus.assemble import Run, assemble
from proteus.config import validate
from proteus.storage import SaveSpec, save_model

# Set at import time: huggingface_hub reads these when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TINY_NUM_CLASSES = 6
TINY_NUM_TASKS = 3
TINY_IMAGE_SIZE = 16


def tiny_config_dict(output_dir: str | Path, name: str = "tiny", **changes: Any) -> dict[str, Any]:
    """A raw run config (what a YAML preset holds): 6 synthetic classes in 3 tasks, tiny ViT.

    With these data options the tiny random ViT + SimpleCIL scores 0.8-1.0 on the first (2-way)
    task for every run seed in 1990..2001, so "above chance" is not a lucky draw.

    ``changes`` replace top-level keys (e.g. ``seed=7`` or ``scenario={...}``).
    """
    raw: dict[str, Any] = {
        "name": name,
        "seed": 1993,
        "output_dir": str(output_dir),
        "device": "cpu",
        "progress": False,
        "data": [{"name": "synthetic", "num_classes": TINY_NUM_CLASSES, "samples_per_class": 40,
                  "image_size": TINY_IMAGE_SIZE, "noise": 0.1, "seed": 1}],
        "scenario": {"num_tasks": TINY_NUM_TASKS},
        "backbone": {"name": "tiny-vit", "image_size": TINY_IMAGE_SIZE},
        "learner": {"name": "simplecil"},
        "eval": {"batch_size": 64},
    }
    raw.update(copy.deepcopy(changes))
    return raw


@pytest.fixture(scope="session", autouse=True)
def _hub_offline():
    """Keep the hub off for the whole session even if a test or library unsets it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def make_tiny_config() -> Callable[..., dict[str, Any]]:
    """The builder itself, for module-scoped fixtures that cannot use ``tmp_path``."""
    return tiny_config_dict


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict[str, Any]:
    """A raw tiny run config writing under ``tmp_path / "runs"``."""
    return tiny_config_dict(tmp_path / "runs")


@pytest.fixture
def tiny_config_file(tmp_path: Path, tiny_config: dict[str, Any]) -> Path:
    """The same tiny config as a YAML preset file (``tmp_path / "tiny.yaml"``)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared, busy CPU multi-threaded LAPACK calls (eigh) can take
    ~1000x longer while threads wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assembled(raw: dict[str, Any], manifest: Path | None = None, **parts: bool) -> Run:
    """``assemble`` of a raw config (what ``proteus run`` builds), optionally on the split of
    a saved ``manifest``; ``parts`` as for :func:`proteus.assemble.assemble`."""
    if manifest is not None:
        raw = {**raw, "scenario": {"manifest": str(manifest)}}
    return assemble(validate(raw), **parts)


def save_driven(path: Path, learner, config, scenario) -> Path:
    """Save a learner driven task by task in a test as ``proteus run`` saves its model."""
    save_model(path, learner=learner, fresh=True, spec=SaveSpec(
        backbone_config=config.backbone.resolved(), backbone_fingerprint=None,
        learner_config=config.learner.resolved(), class_names=scenario.class_names,
        class_order=scenario.class_order, extra={"seed": config.seed}))
    return path


def assert_matches_last_column(ids, scenario, acc) -> None:
    """``ids`` (predictions for every task's test data, in task order) score, task by task,
    the last column of the accuracy matrix ``acc``."""
    start, last = 0, len(scenario.tasks) - 1
    for task in scenario.tasks:
        n = len(task.test)
        got = float((ids[start:start + n] == task.test.labels).mean())
        assert got == pytest.approx(acc[task.index][last]), task.index
        start += n


def tiny_bert(folder: Path) -> Path:
    """A random 2-layer BERT with a character vocabulary, saved to ``folder`` (offline)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64))
    model.save_pretrained(folder)
    return folder


def tiny_text_config_dict(output_dir: str | Path, bert: Path, name: str = "txt",
                          **changes: Any) -> dict[str, Any]:
    """A raw text run config: 4 synthetic text classes in 2 tasks on a :func:`tiny_bert`."""
    return tiny_config_dict(
        output_dir, name=name, checkpoint=False,
        data=[{"name": "synthetic", "modality": "text", "num_classes": 4,
               "samples_per_class": 20, "noise": 0.1, "seed": 1}],
        scenario={"num_tasks": 2},
        backbone={"name": "hf-text", "model": str(bert), "local_files_only": True,
                  "max_length": 32}, **changes)
