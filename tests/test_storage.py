"""Storage: atomic JSON, model directories replaced only when complete, readable errors, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from proteus import storage
from proteus.storage import (
    GROW,
    MANIFEST,
    MODEL_JSON,
    SERVE,
    ModelDirError,
    SaveSpec,
    locked,
    read_manifest,
    read_tensors,
    save_model,
    write_json_atomic,
    write_text_atomic,
)


class FakeLearner:
    """Just enough of a learner for save_model: ``state()`` -> (tensors, JSON metadata)."""

    grow_keys = ("stats.*",)

    def __init__(self, tensors=None, meta=None, fail: Exception | None = None):
        self.tensors = tensors if tensors is not None else {
            "prototypes": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
        self.meta = meta if meta is not None else {"num_classes": 3, "tasks_learned": 1}
        self.fail = fail

    def state(self):
        if self.fail is not None:
            raise self.fail
        return self.tensors, self.meta


def save(path: Path, learner: FakeLearner, names=("a", "b", "c"), **kwargs) -> Path:
    spec = SaveSpec(backbone_config={"name": "tiny-vit", "seed": 0},
                    backbone_fingerprint="sha256:00", learner_config={"name": "simplecil"},
                    class_names=list(names), class_order=list(range(len(names))),
                    extra={"seed": 11})
    save_model(path, learner=learner, spec=spec, **kwargs)
    return path


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


def test_model_dir_layout_manifest_and_safetensors(tmp_path):
    learner = FakeLearner({"prototypes": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                           "stats.sum": torch.ones(3)})
    model = save(tmp_path / "model", learner)
    assert sorted(p.name for p in model.iterdir()) == [".lock", MANIFEST, "v0001"]
    top = json.loads((model / MANIFEST).read_text())
    assert top["format"] == "proteus-model" and top["format_version"] == 2
    assert top["current"] == "v0001" and [v["version"] for v in top["versions"]] == ["v0001"]
    assert sorted(p.name for p in (model / "v0001").iterdir()) == [GROW, MODEL_JSON, SERVE]
    manifest = read_manifest(model)
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["seed"] == 11
    assert manifest["backbone_fingerprint"] == "sha256:00"
    # serving part and growth part apart, each with its size and checksum
    assert manifest["files"][SERVE]["tensors"] == ["prototypes"]
    assert manifest["files"][GROW]["tensors"] == ["stats.sum"]
    assert manifest["files"][SERVE]["bytes"] == (model / "v0001" / SERVE).stat().st_size
    raw = (model / "v0001" / SERVE).read_bytes()
    # safetensors: 8-byte little-endian header length, then a JSON header; never a pickle
    # (protocol 2+ starts with 0x80) nor a torch zip archive ("PK")
    assert raw[:1] != b"\x80" and raw[:2] != b"PK"
    with safe_open(model / "v0001" / SERVE, framework="pt") as fh:
        assert list(fh.keys()) == ["prototypes"]
    tensors = read_tensors(manifest)
    assert torch.equal(tensors["prototypes"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert "stats.sum" not in read_tensors(manifest, parts=(SERVE,))  # serving part: no stats


def test_non_contiguous_tensor_is_saved(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).T  # a view, not contiguous
    model = save(tmp_path / "model", FakeLearner({"w": t}))
    assert torch.equal(read_tensors(read_manifest(model))["w"], t)


def test_versions_append_and_old_ones_are_pruned(tmp_path):
    path = tmp_path / "model"
    for k in range(3):
        save(path, FakeLearner({"prototypes": torch.full((2,), float(k))}))
    top = json.loads((path / MANIFEST).read_text())
    assert [v["version"] for v in top["versions"]] == ["v0001", "v0002", "v0003"]
    assert top["current"] == "v0003"
    # the two newest stay on disk, and the previous one stays readable
    assert sorted(p.name for p in path.glob("v*")) == ["v0002", "v0003"]
    assert torch.equal(read_tensors(read_manifest(path, "v0002"))["prototypes"],
                       torch.full((2,), 1.0))
    assert torch.equal(read_tensors(read_manifest(path))["prototypes"], torch.full((2,), 2.0))


def test_fresh_save_starts_a_new_history(tmp_path):
    path = tmp_path / "model"
    save(path, FakeLearner())
    save(path, FakeLearner({"prototypes": torch.ones(2, 2)}), names=("x", "y"), fresh=True)
    manifest = read_manifest(path)
    assert manifest["class_names"] == ["x", "y"] and len(manifest["history"]) == 1
    assert torch.equal(read_tensors(manifest)["prototypes"], torch.ones(2, 2))
    assert sorted(p.name for p in path.glob("v*")) == [manifest["version"]]
    assert not list(path.glob(".tmp-*"))


@pytest.mark.parametrize("learner, error", [
    # learner.state() itself fails
    (FakeLearner(fail=RuntimeError("state exploded")), RuntimeError),
    # a tensor safetensors refuses: two entries sharing memory
    (FakeLearner({"a": (shared := torch.zeros(4)), "b": shared}), Exception),
    # not a tensor at all
    (FakeLearner({"a": np.zeros(3)}), Exception),
    # tensors fine, metadata not JSON: fails after the tensor files were written
    (FakeLearner(meta={"num_classes": 3, "bad": object()}), TypeError),
])
def test_failed_save_leaves_model_byte_identical(tmp_path, learner, error):
    path = tmp_path / "model"
    save(path, FakeLearner())
    before = snapshot(path)
    with pytest.raises(error):
        save(path, learner, names=("x", "y"))
    assert snapshot(path) == before
    assert read_manifest(path)["class_names"] == ["a", "b", "c"]


def test_full_disk_during_save_leaves_model_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "model"
    save(path, FakeLearner())
    before = snapshot(path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        save(path, FakeLearner({"prototypes": torch.ones(1)}))
    assert snapshot(path) == before


def test_failed_first_save_leaves_no_model(tmp_path):
    with pytest.raises(TypeError):
        save(tmp_path / "model", FakeLearner(meta={"bad": {1, 2}}))
    assert not (tmp_path / "model" / MANIFEST).exists()
    assert not list((tmp_path / "model").glob("v*")) and not list(
        (tmp_path / "model").glob(".tmp-*"))


def test_second_writer_is_refused_while_the_lock_is_held(tmp_path):
    path = tmp_path / "model"
    save(path, FakeLearner())
    with locked(path):
        with pytest.raises(ModelDirError, match="another writer holds the lock"):
            save(path, FakeLearner({"prototypes": torch.ones(1)}))
    save(path, FakeLearner({"prototypes": torch.ones(1)}))  # released: writing works again


# ---------------------------------------------------------------------------------------------
# reading


def test_read_manifest_missing_dir_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelDirError, match="not found") as info:
        read_manifest(missing)
    assert str(missing) in str(info.value)


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


@pytest.mark.parametrize("where", [MANIFEST, f"v0001/{MODEL_JSON}"])
def test_unknown_format_version_is_refused(tmp_path, where):
    model = save(tmp_path / "model", FakeLearner())
    data = json.loads((model / where).read_text())
    data["format_version"] = 99
    (model / where).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="format version 99"):
        read_manifest(model)


def test_read_manifest_missing_key_names_it(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    file = model / "v0001" / MODEL_JSON
    manifest = json.loads(file.read_text())
    del manifest["class_names"]
    file.write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="class_names"):
        read_manifest(model)


def test_truncated_or_altered_tensor_file_is_refused(tmp_path):
    model = save(tmp_path / "model", FakeLearner())
    file = model / "v0001" / SERVE
    good = file.read_bytes()
    file.write_bytes(good[:-3])
    with pytest.raises(ModelDirError, match="truncated or altered") as info:
        read_tensors(read_manifest(model))
    assert str(file) in str(info.value)
    file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ModelDirError, match="checksum"):
        read_tensors(read_manifest(model))
    file.unlink()
    with pytest.raises(ModelDirError, match="missing"):
        read_tensors(read_manifest(model))


def test_compact_storage_keeps_the_upper_triangle_of_symmetric_statistics(tmp_path):
    class Symmetric(FakeLearner):
        symmetric_keys = ("stats.gram",)

    a = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gram = a @ a.T
    # a matmul's two triangles may differ in the last bit; the statistics are symmetric by
    # construction, so make the input exactly so (else the lower triangle is not recoverable)
    gram = (gram + gram.T) / 2
    model = save(tmp_path / "model", Symmetric({"w": torch.ones(2), "stats.gram": gram}))
    manifest = read_manifest(model)
    assert manifest["stored_packed"] == ["stats.gram"]
    with safe_open(model / manifest["version"] / GROW, framework="pt") as fh:
        assert fh.get_slice("stats.gram").get_shape() == [7 * 8 // 2]
    back = read_tensors(manifest)["stats.gram"]
    assert back.shape == (7, 7) and torch.equal(back, back.T)
    torch.testing.assert_close(back, gram, rtol=0, atol=0)  # no rounding: float64 stays
    # exact storage (checkpoints) keeps the whole matrix
    exact = read_manifest(save(tmp_path / "exact", Symmetric({"stats.gram": gram}),
                               compact=False))
    assert exact["stored_packed"] == []


def test_a_packed_matrix_that_is_no_triangle_is_refused():
    from proteus.storage import unpack_symmetric

    with pytest.raises(ModelDirError, match="no triangle"):
        unpack_symmetric(torch.ones(5))
