"""The saved model as a product: ``proteus learn``, ``predict``, ``info``, ``export --serve``,
and the bad inputs of docs/robustness.md (each gives a one-line error naming the input, a
non-zero exit, and a model directory byte-identical to before)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import tiny_config_dict
from proteus.cli import main
from proteus.config import validate
from proteus.data import DATASETS, DataError
from proteus.engine import run
from proteus.learners import LearnerError
from proteus.model import load_model
from proteus.storage import ModelDirError

LEARNER = {"name": "proteus", "epochs": 1, "rank": 2, "proj_dim": 128}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _image_folder(root: Path, classes: dict[str, int], per_class: int = 12) -> Path:
    """Synthetic images of the synthetic reader's classes (of an 8-class draw), as PNG files
    under root/<name>/."""
    data = DATASETS.build("synthetic", {"num_classes": 8, "samples_per_class": 40,
                                        "image_size": 16, "noise": 0.1, "seed": 1})
    for name, cls in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(data.labels == cls)[:per_class]
        for i, row in enumerate(rows):
            Image.fromarray(data.items[row]).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-task PROTEUS model on 6 synthetic classes (the synthetic reader's classes 0-5)."""
    root = tmp_path_factory.mktemp("product")
    run(validate(tiny_config_dict(root / "runs", name="base", learner=LEARNER)))
    return root / "runs" / "base" / "model"


@pytest.fixture
def model_dir(base, tmp_path):
    """A copy of the base model that a test may change."""
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(base, dst)
    return dst


def _learn(model_dir: Path, *data, extra=()) -> int:
    return main(["learn", str(model_dir), *map(str, data), "--quiet", "--device", "cpu",
                 *extra])


def _predict_lines(capsys, model_dir: Path, *inputs, extra=()) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", str(model_dir), *map(str, inputs), "--quiet", "--device", "cpu",
                 *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# -- learn, predict, info ----------------------------------------------------------------------
def test_learn_a_new_task_then_predict_and_info(model_dir, tmp_path, capsys):
    folder = _image_folder(tmp_path / "new", {"zebra": 6, "yak": 7})
    assert _learn(model_dir, folder) == 0
    info = load_model(model_dir, device="cpu").info()
    assert info["tasks"] == 4 and info["classes"] == 8
    assert info["class_names"][-2:] == ["yak", "zebra"]
    assert [v["version"] for v in info["versions"]] == ["v0001", "v0002"]
    assert info["can_learn"] and info["bytes"]["version"] > 0

    lines = _predict_lines(capsys, model_dir, folder)
    assert len(lines) == 24 and set(lines[0]) == {"input", "class", "class_id", "task", "score"}
    right = [Path(r["input"]).parent.name == r["class"] for r in lines]
    assert np.mean(right) >= 0.75
    assert {r["task"] for r in lines if Path(r["input"]).parent.name == r["class"]} == {3}

    capsys.readouterr()
    assert main(["info", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 4
    assert main(["info", str(model_dir)]) == 0


def test_python_learn_equals_the_command(model_dir, base, tmp_path):
    folder = _image_folder(tmp_path / "new", {"zebra": 6, "yak": 7})
    assert _learn(model_dir, folder) == 0
    twin = tmp_path / "twin"
    import shutil

    shutil.copytree(base, twin)
    model = load_model(twin, device="cpu")
    data = DATASETS.build("image-folder", {"root": str(folder)})
    summary = model.learn(data)
    assert summary["version"] == "v0002" and summary["new_classes"] == ["yak", "zebra"]
    files = sorted(str(p) for p in folder.rglob("*.png"))
    a = load_model(model_dir, device="cpu").predict(files)
    b = load_model(twin, device="cpu").predict(files)
    np.testing.assert_array_equal(a["class_ids"], b["class_ids"])


def test_csv_output(model_dir, tmp_path, capsys):
    folder = _image_folder(tmp_path / "imgs", {"any": 0}, per_class=3)
    out = tmp_path / "out.csv"
    assert main(["predict", str(model_dir), str(folder), "--format", "csv", "--output",
                 str(out), "--quiet", "--device", "cpu"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "input,class,class_id,task,score" and len(rows) == 4


def test_serve_export_predicts_and_refuses_to_learn(model_dir, tmp_path, capsys):
    export = tmp_path / "serve"
    assert main(["export", str(model_dir), str(export), "--serve"]) == 0
    files = sorted(str(p) for p in _image_folder(tmp_path / "x", {"a": 1}, 4).rglob("*.png"))
    full = load_model(model_dir, device="cpu").predict(files)
    served = load_model(export, device="cpu")
    np.testing.assert_array_equal(served.predict(files)["class_ids"], full["class_ids"])
    assert not (export / served.manifest["version"] / "grow.safetensors").exists()
    before = snapshot(export)
    capsys.readouterr()
    assert _learn(export, _image_folder(tmp_path / "new", {"zebra": 6})) == 2
    assert "serving export" in capsys.readouterr().err
    assert snapshot(export) == before


# -- bad inputs (docs/robustness.md) ------------------------------------------------------------
def test_learn_with_known_classes_is_an_error_unless_skipped(model_dir, tmp_path, capsys):
    folder = _image_folder(tmp_path / "mixed", {"class 0": 0, "zebra": 6})
    before = snapshot(model_dir)
    assert _learn(model_dir, folder) == 2
    err = capsys.readouterr().err
    assert "already knows class(es) class 0" in err
    assert snapshot(model_dir) == before
    assert _learn(model_dir, folder, extra=["--on-known", "skip"]) == 0
    info = load_model(model_dir, device="cpu").info()
    assert info["classes"] == 7 and info["class_names"][-1] == "zebra"


@pytest.mark.parametrize("bad", ["corrupt", "not-an-image"])
def test_learn_with_a_bad_image_names_it_and_changes_nothing(model_dir, tmp_path, capsys, bad):
    folder = _image_folder(tmp_path / "new", {"zebra": 6})
    broken = folder / "zebra" / "broken.png"
    if bad == "corrupt":
        good = (folder / "zebra" / "000.png").read_bytes()
        broken.write_bytes(good[: len(good) // 2])
    else:
        broken.write_text("this is a text file with an image extension")
    before = snapshot(model_dir)
    capsys.readouterr()
    assert _learn(model_dir, folder) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot read image" in err
    assert snapshot(model_dir) == before


def test_greyscale_image_for_an_rgb_model_is_converted(model_dir, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8), mode="L").save(grey)
    lines = _predict_lines(capsys, model_dir, grey)
    assert len(lines) == 1 and lines[0]["class"]  # converted to RGB, then classified


def test_predict_on_a_missing_model_dir(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_predict_on_a_missing_input(model_dir, tmp_path, capsys):
    assert main(["predict", str(model_dir), str(tmp_path / "missing.png"), "--quiet"]) == 2
    assert "missing.png: not found" in capsys.readouterr().err


def test_predict_on_a_corrupt_image_names_it(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["predict", str(model_dir), str(bad), "--quiet", "--device", "cpu"]) == 2
    assert "bad.jpg" in capsys.readouterr().err


def test_learn_with_a_missing_data_path(model_dir, tmp_path, capsys):
    before = snapshot(model_dir)
    assert _learn(model_dir, tmp_path / "nowhere") == 2
    assert "nowhere: not found" in capsys.readouterr().err
    assert snapshot(model_dir) == before


def test_text_data_for_an_image_model_is_refused(model_dir, tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("text,label\nhello there,greeting\nbye now,farewell\n")
    before = snapshot(model_dir)
    assert _learn(model_dir, table) == 2
    assert "text data, but the model's backbone" in capsys.readouterr().err
    assert snapshot(model_dir) == before


def test_wrong_backbone_is_refused_naming_both(model_dir):
    with pytest.raises(ModelDirError) as info:
        load_model(model_dir, device="cpu", backbone={"seed": 99})
    msg = str(info.value)
    assert "'seed': 0" in msg and "'seed': 99" in msg and "weights" in msg


def test_altered_state_file_is_refused(model_dir, capsys):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    state = model_dir / manifest["current"] / "serve.safetensors"
    state.write_bytes(state.read_bytes()[:-10])
    assert main(["predict", str(model_dir), str(model_dir), "--quiet"]) == 2
    assert "serve.safetensors" in capsys.readouterr().err


def test_unknown_format_version_is_refused(model_dir, capsys):
    top = json.loads((model_dir / "manifest.json").read_text())
    top["format_version"] = 7
    (model_dir / "manifest.json").write_text(json.dumps(top))
    assert main(["info", str(model_dir)]) == 2
    assert "format version 7" in capsys.readouterr().err


def test_nan_embeddings_are_an_error(model_dir, monkeypatch):
    model = load_model(model_dir, device="cpu")
    real = type(model.backbone).forward

    def nan_forward(self, x):
        return real(self, x) * float("nan")

    monkeypatch.setattr(type(model.backbone), "forward", nan_forward)
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="not finite"):
        model.predict(images)


def test_a_learner_that_cannot_grow_refuses_clearly(tmp_path, capsys):
    raw = tiny_config_dict(tmp_path / "runs", name="joint",
                           learner={"name": "joint-lora", "epochs": 1, "rank": 2})
    run(validate(raw))
    model_dir = tmp_path / "runs" / "joint" / "model"
    before = snapshot(model_dir)
    capsys.readouterr()
    assert _learn(model_dir, _image_folder(tmp_path / "new", {"zebra": 6})) == 2
    err = capsys.readouterr().err
    assert "joint-lora cannot learn after loading" in err and "does not keep" in err
    assert snapshot(model_dir) == before
    with pytest.raises(LearnerError):
        load_model(model_dir, device="cpu").learn(
            DATASETS.build("image-folder", {"root": str(tmp_path / "new")}))


def test_yaml_data_source_for_learn(model_dir, tmp_path, capsys):
    folder = _image_folder(tmp_path / "new", {"zebra": 6})
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump({"name": "image-folder", "root": str(folder)}))
    assert _learn(model_dir, source) == 0
    assert load_model(model_dir, device="cpu").info()["class_names"][-1] == "zebra"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "image-folder", "rot": str(folder)}))
    capsys.readouterr()
    assert main(["learn", str(model_dir), str(bad), "--quiet"]) == 2
    assert "unknown key" in capsys.readouterr().err  # a misspelt reader option, named


def test_model_version_holds_json_and_safetensors_only(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for file in (model_dir / manifest["current"]).iterdir():
        assert file.suffix in (".json", ".safetensors")
        raw = file.read_bytes()
        assert raw[:2] != b"PK"  # not a torch zip archive
        if file.suffix == ".json":
            json.loads(raw)
        else:  # safetensors: 8-byte header length, then a JSON header
            header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
            assert all("dtype" in v for k, v in header.items() if k != "__metadata__")


# -- a text model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    from conftest import tiny_bert, tiny_text_config_dict

    root = tmp_path_factory.mktemp("product_text")
    bert = tiny_bert(root / "bert")
    raw = tiny_text_config_dict(root / "runs", bert)
    run(validate(raw))
    return root / "runs" / "txt" / "model"


def test_text_predict_from_strings_files_and_tables(text_model_dir, tmp_path, capsys):
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta"]
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n\n")
    rows = "".join(f"{i},{t}\n" for i, t in enumerate(texts))
    (tmp_path / "t.csv").write_text("id,body\n" + rows)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    expected = load_model(text_model_dir, device="cpu").predict(texts)["class_names"]
    from_text = _predict_lines(capsys, text_model_dir, extra=[x for t in texts
                                                             for x in ("--text", t)])
    from_file = _predict_lines(capsys, text_model_dir, tmp_path / "lines.txt")
    from_csv = _predict_lines(capsys, text_model_dir, tmp_path / "t.csv",
                              extra=["--column", "body"])
    from_jsonl = _predict_lines(capsys, text_model_dir, tmp_path / "t.jsonl",
                                extra=["--column", "body"])
    for lines in (from_text, from_file, from_csv, from_jsonl):
        assert [r["class"] for r in lines] == expected
    assert [r["input"] for r in from_csv] == [f"{tmp_path / 't.csv'}:{n}" for n in (2, 3, 4)]


def test_text_predict_bad_inputs(text_model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "t.csv").write_text("id,body\n1,hello\n")
    cases = [(["--text", "  "], "--text 0: empty text"),
             ([str(tmp_path / "empty.txt")], "empty.txt: empty file"),
             ([str(tmp_path / "t.csv")], "no column 'text'; columns: id, body")]
    for args, message in cases:
        capsys.readouterr()
        assert main(["predict", str(text_model_dir), *args, "--quiet", "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.assets
def test_compact_model_predicts_like_the_exact_one_on_the_demo_preset(tmp_path):
    """The demo preset (real EfficientNet-Lite0, Fashion-MNIST + MNIST, PROTEUS defaults), cut
    to fewer images per class for test time: the compact model (float32 statistics) retrieves
    the same task and predicts the same class for every test image as the exact one."""
    from proteus.assemble import assemble
    from proteus.config import load_config
    from proteus.data import stack
    from proteus.engine import save_spec
    from proteus.storage import save_model

    config = load_config(Path(__file__).resolve().parents[1]
                         / "configs/offline/vision-fmnist-mnist.yaml",
                         ["progress=false", "device=cpu", "scenario.train_per_class=30",
                          "scenario.test_per_class=20", "learner.epochs=1"])
    parts = assemble(config)
    for task in parts.scenario.tasks:
        parts.learner.learn_task(task, parts.ctx)
    test = stack([t.test for t in parts.scenario.tasks])
    for name, compact in (("exact", False), ("compact", True)):
        save_model(tmp_path / name, learner=parts.learner, spec=save_spec(parts), fresh=True,
                   compact=compact)
    exact = load_model(tmp_path / "exact", device="cpu").predict(test.items)
    small = load_model(tmp_path / "compact", device="cpu")
    compact_out = small.predict(test.items)
    np.testing.assert_array_equal(compact_out["class_ids"], exact["class_ids"])
    np.testing.assert_array_equal(compact_out["task_ids"], exact["task_ids"])
    sizes = {n: load_model(tmp_path / n, device="cpu").info()["bytes"]["version"]
             for n in ("exact", "compact")}
    assert sizes["compact"] < 0.6 * sizes["exact"]
