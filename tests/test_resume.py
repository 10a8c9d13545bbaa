"""Checkpoint and resume: a run killed with SIGKILL mid-task resumes from the last complete task
and ends with the results (timing and memory aside) and the model of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config_dict
from proteus.storage import read_manifest, read_tensors

LEARNER = {"name": "proteus", "epochs": 1, "rank": 2, "proj_dim": 128}


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "proteus", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _comparable(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k not in ("timing", "peak_memory_mb")}
    out["config"] = {k: v for k, v in results["config"].items() if k != "output_dir"}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    out = {}
    for kind in ("straight", "killed"):
        raw = tiny_config_dict(root / kind, name="tiny", learner=LEARNER)
        config = root / f"{kind}.yaml"
        config.write_text(yaml.safe_dump(raw))
        out[kind] = {"config": config, "dir": root / kind / "tiny"}
    out["straight"]["proc"] = _cli(["run", str(out["straight"]["config"])])
    out["killed"]["proc"] = _cli(["run", str(out["killed"]["config"])],
                                 {"PROTEUS_FAULT": "after-learn:1"})
    out["killed"]["checkpoint"] = read_manifest(out["killed"]["dir"] / "checkpoint")
    out["killed"]["resumed"] = _cli(["run", str(out["killed"]["config"]), "--resume"])
    return out


def test_the_fault_hook_kills_mid_task(runs):
    proc = runs["killed"]["proc"]
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # the last complete task was task 0: task 1 was learned but neither evaluated nor saved
    checkpoint = runs["killed"]["checkpoint"]
    assert checkpoint["run_state"]["next_task"] == 1
    assert checkpoint["learner_state"]["tasks_learned"] == 1


def test_resumed_run_equals_an_uninterrupted_one(runs):
    assert runs["straight"]["proc"].returncode == 0, runs["straight"]["proc"].stderr[-2000:]
    resumed = runs["killed"]["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    a = json.loads((runs["straight"]["dir"] / "results.json").read_text())
    b = json.loads((runs["killed"]["dir"] / "results.json").read_text())
    assert _comparable(b) == _comparable(a)
    lines = [json.loads(x) for x in (runs["killed"]["dir"] / "metrics.jsonl").read_text()
             .splitlines()]
    assert [line["task"] for line in lines] == [0, 1, 2]  # no line of the killed attempt
    ta = read_tensors(read_manifest(runs["straight"]["dir"] / "model"))
    tb = read_tensors(read_manifest(runs["killed"]["dir"] / "model"))
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert (ta[key] == tb[key]).all(), key
    assert not (runs["killed"]["dir"] / "checkpoint").exists()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    raw = tiny_config_dict(tmp_path, name="never", learner={"name": "simplecil"})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = _cli(["run", str(config), "--resume"])
    assert proc.returncode == 2
    assert "cannot resume never" in proc.stderr and "checkpoint" in proc.stderr


def test_resume_with_another_config_is_refused(runs, tmp_path):
    raw = yaml.safe_load(runs["killed"]["config"].read_text())
    raw["seed"] = 7
    config = tmp_path / "other.yaml"
    # write a checkpoint for the original config first, then resume with another seed
    config.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / "o")}))
    killed = _cli(["run", str(config)], {"PROTEUS_FAULT": "after-learn:1"})
    assert killed.returncode == -signal.SIGKILL
    raw2 = {**raw, "output_dir": str(tmp_path / "o"), "seed": 8}
    config.write_text(yaml.safe_dump(raw2))
    proc = _cli(["run", str(config), "--resume"])
    assert proc.returncode == 2 and "another config" in proc.stderr and "seed" in proc.stderr
