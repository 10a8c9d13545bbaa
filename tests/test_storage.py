"""Storage: atomic JSON, model directories replaced only when complete, readable errors, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from proteus import storage
from proteus.storage import (
    MANIFEST,
    TENSORS,
    ModelDirError,
    read_manifest,
    read_tensors,
    save_model,
    write_json_atomic,
    write_text_atomic,
)


class FakeLearner:
    """Just enough of a learner for save_model: ``state()`` -> (tensors, JSON metadata)."""

    def __init__(self, tensors=None, meta=None, fail: Exception | None = None):
        self.tensors = tensors if tensors is not None else {
            "prototypes": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
        self.meta = meta if meta is not None else {"num_classes": 3, "tasks_learned": 1}
        self.fail = fail

    def state(self):
        if self.fail is not None:
            raise self.fail
        return self.tensors, self.meta


def save(path: Path, learner: FakeLearner, names=("a", "b", "c")) -> Path:
    return save_model(path, learner=learner, backbone_config={"name": "tiny-vit", "seed": 0},
                      learner_config={"name": "simplecil"}, class_names=list(names),
                      class_order=list(range(len(names))), extra={"seed": 11})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------------------
# atomic JSON / text


def test_write_json_atomic_replaces_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    write_json_atomic(path, {"b": [1, 2], "arr": np.arange(3), "x": np.float32(0.5),
                             "p": Path("/x/y")})
    assert json.loads(path.read_text()) == {"b": [1, 2], "arr": [0, 1, 2], "x": 0.5, "p": "/x/y"}
    assert leftovers(path.parent, {"results.json"}) == []


def test_write_json_atomic_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"ok": True})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        write_json_atomic(path, {"bad": object()})
    assert path.read_bytes() == before
    assert leftovers(tmp_path, {"results.json"}) == []


def test_write_text_atomic_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "report.md"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert leftovers(tmp_path, {"report.md"}) == []


# ---------------------------------------------------------------------------------------------
# model directories


def test_model_dir_holds_only_manifest_and_safetensors(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    assert sorted(p.name for p in model.iterdir()) == [MANIFEST, TENSORS]
    manifest = json.loads((model / MANIFEST).read_text())
    assert manifest["format"] == "proteus-model" and manifest["format_version"] == 1
    assert manifest["class_names"] == ["a", "b", "c"]
    assert manifest["learner_state"] == {"num_classes": 3, "tasks_learned": 1}
    assert manifest["tensors"] == ["prototypes"] and manifest["seed"] == 11
    raw = (model / TENSORS).read_bytes()
    # safetensors: 8-byte little-endian header length, then a JSON header; never a pickle
    # (protocol 2+ starts with 0x80) nor a torch zip archive ("PK")
    assert raw[:1] != b"\x80" and raw[:2] != b"PK"
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header["prototypes"]["dtype"] == "F32" and header["prototypes"]["shape"] == [3, 4]
    with safe_open(model / TENSORS, framework="pt") as fh:
        assert list(fh.keys()) == ["prototypes"]
    assert torch.equal(read_tensors(model)["prototypes"],
                       torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert read_manifest(model)["backbone"] == {"name": "tiny-vit", "seed": 0}
    assert leftovers(tmp_path, {"model"}) == []


def test_non_contiguous_tensor_is_saved(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).T  # a view, not contiguous
    model = save(tmp_path / "model", FakeLearner({"w": t}))
    assert torch.equal(read_tensors(model)["w"], t)


def test_save_over_existing_replaces_it(tmp_path):
    path = tmp_path / "model"
    save(path, FakeLearner())
    save(path, FakeLearner({"prototypes": torch.ones(2, 2)}, {"num_classes": 2,
                                                              "tasks_learned": 1}),
         names=("x", "y"))
    assert read_manifest(path)["class_names"] == ["x", "y"]
    assert torch.equal(read_tensors(path)["prototypes"], torch.ones(2, 2))
    assert leftovers(tmp_path, {"model"}) == []  # no temp or ".old" directories


@pytest.mark.parametrize("learner, error", [
    # learner.state() itself fails
    (FakeLearner(fail=RuntimeError("state exploded")), RuntimeError),
    # a tensor safetensors refuses: two entries sharing memory
    (FakeLearner({"a": (shared := torch.zeros(4)), "b": shared}), Exception),
    # not a tensor at all
    (FakeLearner({"a": np.zeros(3)}), Exception),
    # tensors fine, metadata not JSON: fails after state.safetensors was written
    (FakeLearner(meta={"num_classes": 3, "bad": object()}), TypeError),
])
def test_failed_save_leaves_old_model_intact(tmp_path, learner, error):
    path = tmp_path / "model"
    save(path, FakeLearner())
    before = snapshot(path)
    with pytest.raises(error):
        save(path, learner, names=("x", "y"))
    assert snapshot(path) == before
    assert read_manifest(path)["class_names"] == ["a", "b", "c"]
    assert leftovers(tmp_path, {"model"}) == []  # the half-written temp dir is gone


def test_failed_first_save_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        save(tmp_path / "model", FakeLearner(meta={"bad": {1, 2}}))
    assert leftovers(tmp_path, set()) == []


def test_failed_final_rename_keeps_old_model_at_its_path(tmp_path, monkeypatch):
    path = tmp_path / "model"
    save(path, FakeLearner())
    before = snapshot(path)
    real_replace = os.replace

    def flaky_replace(src, dst):
        if Path(dst) == path and Path(src).name.startswith(".model.") and "old" not in Path(
                src).name:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", flaky_replace)
    with pytest.raises(OSError):
        save(path, FakeLearner({"prototypes": torch.ones(1)}))
    assert path.is_dir() and snapshot(path) == before


# ---------------------------------------------------------------------------------------------
# reading


def test_read_manifest_missing_dir_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelDirError) as info:
        read_manifest(missing)
    assert str(missing) in str(info.value) and MANIFEST in str(info.value)


def test_read_manifest_dir_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="not a model directory"):
        read_manifest(tmp_path / "empty")


def test_read_manifest_bad_json_names_file(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    (model / MANIFEST).write_text("{not json")
    with pytest.raises(ModelDirError) as info:
        read_manifest(model)
    assert str(model / MANIFEST) in str(info.value) and "JSON" in str(info.value)


def test_read_manifest_wrong_format_names_file_and_formats(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["format"] = "something-else"
    (model / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError) as info:
        read_manifest(model)
    msg = str(info.value)
    assert str(model / MANIFEST) in msg and "'something-else'" in msg and "proteus-model" in msg


def test_read_manifest_missing_key_names_it(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    manifest = json.loads((model / MANIFEST).read_text())
    del manifest["learner_state"]
    (model / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="learner_state"):
        read_manifest(model)


def test_read_tensors_missing_or_corrupt_names_file(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    (model / TENSORS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ModelDirError) as info:
        read_tensors(model)
    assert str(model / TENSORS) in str(info.value)
    (model / TENSORS).unlink()
    with pytest.raises(ModelDirError, match=TENSORS):
        read_tensors(model)
