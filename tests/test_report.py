import copy
import json
import struct

import matplotlib.pyplot as plt
import pytest
from rich.console import Console

from proteus.metrics import METRIC_LABELS
from proteus.report import print_summary, render_run, summary_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_results(retrieval: bool = True) -> dict:
    results = {
        "name": "cifar-demo",
        "learner": "proteus",
        "backbone": "vit-b16",
        "seed": 7,
        "config": {"epochs": 3, "lr": 0.01},
        "class_order": [2, 0, 3, 1, 5, 4],
        "class_names": ["cat", "dog", "ship", "car", "frog", "a|b"],
        "tasks": [
            {"index": 0, "classes": [2, 0], "num_train": 100, "num_test": 20},
            {"index": 1, "classes": [3, 1], "num_train": 100, "num_test": 20},
            {"index": 2, "classes": [5, 4], "num_train": 100, "num_test": 20},
        ],
        "accuracy_matrix": [
            [0.9, 0.8, 0.7],
            [None, 0.85, 0.6],
            [None, None, 0.95],
        ],
        "accuracy_seen": [0.9, 0.825, 0.75],
        "metrics": {
            "final_accuracy": 0.75,
            "average_incremental_accuracy": 0.825,
            "average_accuracy": 0.75,
            "average_forgetting": 0.225,
            "backward_transfer": -0.225,
            "task_retrieval_accuracy": 0.8,
        },
        "retrieval_confusion": [[18, 2, 0], [3, 15, 2], [1, 4, 15]],
        "retrieval_accuracy_seen": [1.0, 0.9, 0.8],
        "timing": [
            {"task": 0, "train_s": 10.0, "eval_s": 1.0},
            {"task": 1, "train_s": 12.5, "eval_s": 1.5, "cache_s": 2.0},
            {"task": 2, "train_s": 11.0, "eval_s": 2.0},
        ],
        "peak_memory_mb": 1234.0,
        "parameters": {"trained_per_task": 12345, "stored_bytes": 2 * 2**20},
        "extras": {"prototype_count": 6},
    }
    if not retrieval:
        results["metrics"]["task_retrieval_accuracy"] = None
        results["retrieval_confusion"] = None
        del results["retrieval_accuracy_seen"]
    return results


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    assert width > 200 and height > 200
    assert len(data) > 5_000


def test_write_report_writes_markdown_and_plots(tmp_path):
    paths = write_report(tmp_path, synthetic_results())
    names = [p.name for p in paths]
    assert names == [
        "accuracy_matrix.png",
        "accuracy_curve.png",
        "retrieval_confusion.png",
        "report.md",
    ]
    for path in paths:
        assert path.parent == tmp_path and path.exists()
    for path in paths[:-1]:
        assert_png(path)
    # atomic writes leave no temporary files behind; figures are closed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert plt.get_fignums() == []

    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# cifar-demo")
    assert "`proteus`" in md and "`vit-b16`" in md and "seed 7" in md
    for label in METRIC_LABELS.values():
        assert f"| {label} |" in md
    assert "| final accuracy | 75.00% |" in md
    assert "| average incremental accuracy | 82.50% |" in md
    assert "| average forgetting | 22.50% |" in md
    assert "| backward transfer | -22.50% |" in md
    assert "| task-retrieval accuracy | 80.00% |" in md
    # accuracy matrix rows, blank where i > t, and the A_t row
    assert "| 0 | 90.00 | 80.00 | 70.00 |" in md
    assert "| 2 |  |  | 95.00 |" in md
    assert "| **all seen** | 90.00 | 82.50 | 75.00 |" in md
    # timing: cache_s only in task 1; a step's total is train_s + eval_s (finer phases lie inside
    # train_s): 10+1 + 12.5+1.5 + 11+2 = 38
    assert "| task | train_s | eval_s | cache_s | total_s |" in md
    assert "| 1 | 12.5 | 1.5 | 2.0 | 14.0 |" in md
    assert "| **total** | 33.5 | 4.5 | 2.0 | **38.0** |" in md
    assert "Class order: `2 0 3 1 5 4`" in md
    assert "ship (2), cat (0)" in md
    assert "a\\|b (5)" in md  # a pipe in a class name must not split the table cell
    for name in names[:-1]:
        assert f"]({name})" in md
    assert "Partial run" not in md


def test_no_confusion_plot_without_retrieval(tmp_path):
    paths = write_report(tmp_path, synthetic_results(retrieval=False))
    assert [p.name for p in paths] == ["accuracy_matrix.png", "accuracy_curve.png", "report.md"]
    assert not (tmp_path / "retrieval_confusion.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "retrieval_confusion.png" not in md
    assert "| task-retrieval accuracy | — |" in md
    assert_png(tmp_path / "accuracy_curve.png")


def test_partial_run_renders(tmp_path):
    results = synthetic_results(retrieval=False)
    results["accuracy_matrix"] = [[0.9, 0.8, None], [None, 0.85, None], [None, None, None]]
    results["accuracy_seen"] = [0.9, 0.825]
    results["metrics"] = {"final_accuracy": 0.825, "average_forgetting": None}
    results["timing"] = results["timing"][:2]
    del results["parameters"], results["extras"]
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "Partial run: 2 of 3 tasks finished" in md
    assert "| final accuracy | 82.50% |" in md
    assert "| average accuracy | — |" in md
    assert "| 0 | 90.00 | 80.00 |  |" in md
    assert_png(tmp_path / "accuracy_matrix.png")


def test_summary_table_shows_percentages():
    table = summary_table(synthetic_results())
    console = Console(record=True, width=120, color_system=None)
    print_summary(synthetic_results(), console=console)
    text = console.export_text()
    assert table.row_count == len(METRIC_LABELS) + 2  # plus total time and peak memory
    for label in METRIC_LABELS.values():
        assert label in text
    assert "75.00%" in text and "-22.50%" in text and "80.00%" in text
    assert "38.0 s" in text and "1234 MB" in text
    assert "cifar-demo" in text


def test_render_run_reads_results_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(synthetic_results()))
    paths = render_run(tmp_path)
    assert (tmp_path / "report.md") in paths
    assert "| final accuracy | 75.00% |" in (tmp_path / "report.md").read_text()


def test_render_run_missing_results_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="results.json") as err:
        render_run(tmp_path)
    assert str(tmp_path / "results.json") in str(err.value)


def test_render_run_bad_json_names_the_file(tmp_path):
    (tmp_path / "results.json").write_text('{"name": "x", ')
    with pytest.raises(ValueError, match="not valid JSON") as err:
        render_run(tmp_path)
    assert str(tmp_path / "results.json") in str(err.value)
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "JSON object"),
        (None, r"accuracy_matrix\[1\]\[1\]"),
    ],
)
def test_render_run_bad_content_names_the_file(tmp_path, content, message):
    if content is None:
        results = copy.deepcopy(synthetic_results())
        results["accuracy_matrix"][1][1] = "high"
        content = json.dumps(results)
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        render_run(tmp_path)
    assert str(tmp_path / "results.json") in str(err.value)
