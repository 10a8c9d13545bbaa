"""Multi-process runs (torch.distributed, gloo on CPU): a 2-process run equals the 1-process one.

Analytic learners give the same statistics (1e-6 relative) and identical predictions; gradient
learners the same metrics (within a point; here, on the tiny preset, exactly) and units equal up
to the order of float additions. A rank that dies makes the others fail with a clear error, and
the run resumes from its last complete task.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import assembled, tiny_config_dict
from proteus import dist
from proteus.model import load_model
from proteus.storage import read_manifest, read_tensors

ANALYTIC = {"ranpac": {"name": "ranpac", "proj_dim": 128}, "lda": {"name": "lda"}}
GRADIENT = {"proteus": {"name": "proteus", "epochs": 1, "rank": 2, "proj_dim": 128},
            # the tensor bound below holds for the clipped Adam steps PROTEUS's units take; with
            # InfLoRA's own (unclipped, rank 10) recipe, Adam's near-sign steps on near-zero
            # gradients amplify float-order differences of 1e-7 to 2e-3 of B's scale
            "inflora": {"name": "inflora", "epochs": 1, "rank": 4, "batch_size": 32,
                        "lr": 1e-3, "schedule": "constant", "grad_clip": 1.0}}
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PROTEUS_DIST_TIMEOUT": "60"}


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV, **(env_extra or {})}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "proteus", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _config(root: Path, tag: str, learner: dict) -> Path:
    path = root / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(root / tag, name="d", learner=learner)))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for name, learner in {**ANALYTIC, **GRADIENT}.items():
        one, two = _config(root, f"{name}-1", learner), _config(root, f"{name}-2", learner)
        p1, p2 = _cli(["run", str(one)]), _cli(["run", str(two), "--nproc", "2"])
        assert p1.returncode == 0, p1.stderr[-3000:]
        assert p2.returncode == 0, p2.stderr[-3000:]
        out[name] = {"one": root / f"{name}-1" / "d", "two": root / f"{name}-2" / "d",
                     "log": p2.stderr, "config": one}
    return out


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_tensors(read_manifest(run_dir / "model"))


def _max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not a.numel():
        return 0.0
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def test_two_processes_share_the_run_and_rank0_alone_writes(runs):
    r = runs["ranpac"]
    assert "2 processes (gloo)" in r["log"]
    results = _results(r["two"])
    assert results["distributed"] == {"world_size": 2, "backend": "gloo"}
    # one metrics line per task: the second process wrote nothing
    assert len((r["two"] / "metrics.jsonl").read_text().splitlines()) == 3
    assert not (r["two"] / "checkpoint").exists()


@pytest.mark.parametrize("name", sorted(ANALYTIC))
def test_analytic_learners_give_the_one_process_statistics_and_predictions(runs, name):
    r = runs[name]
    a, b = _results(r["one"]), _results(r["two"])
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    ta, tb = _tensors(r["one"]), _tensors(r["two"])
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert _max_relative(ta[key], tb[key]) <= 1e-6, key
    # identical predictions, sample by sample, on every test image of the scenario
    test = np.concatenate([t.test.items for t in assembled(
        yaml.safe_load(r["config"].read_text()), backbone=False, learner=False).scenario.tasks])
    pa = load_model(r["one"] / "model", device="cpu").predict(test)
    pb = load_model(r["two"] / "model", device="cpu").predict(test)
    assert np.array_equal(pa["class_ids"], pb["class_ids"])


@pytest.mark.parametrize("name", sorted(GRADIENT))
def test_gradient_learners_agree_with_one_process(runs, name):
    r = runs[name]
    a, b = _results(r["one"]), _results(r["two"])
    # the same global batches, gradients summed over the ranks: equal up to float order
    assert np.allclose(a["accuracy_seen"], b["accuracy_seen"], atol=0.01)
    ta, tb = _tensors(r["one"]), _tensors(r["two"])
    for key in ta:
        assert _max_relative(ta[key], tb[key]) <= 1e-3, key


def test_a_dead_rank_stops_the_run_and_it_resumes(runs, tmp_path):
    config = _config(tmp_path, "killed", GRADIENT["proteus"])
    killed = _cli(["run", str(config), "--nproc", "2"], {"PROTEUS_FAULT": "after-learn:1@1"})
    assert killed.returncode != 0
    run_dir = tmp_path / "killed" / "d"
    assert read_manifest(run_dir / "checkpoint")["run_state"]["next_task"] == 1
    resumed = _cli(["run", str(config), "--nproc", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    assert _results(run_dir)["accuracy_matrix"] == _results(runs["proteus"]["two"])[
        "accuracy_matrix"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_survivor_of_a_dead_peer_fails_with_a_clear_error(tmp_path):
    """Without torchrun's agent (which would stop the others itself), a collective whose peer
    died raises, names what happened and how to resume, and exits 2 instead of hanging."""
    config = _config(tmp_path, "peer", ANALYTIC["ranpac"])
    env = {**os.environ, **ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "PROTEUS_FAULT": "after-learn:1@1"}
    procs = [subprocess.Popen([sys.executable, "-m", "proteus", "run", str(config)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2, errors[0][-3000:]
    assert "another process of the run has stopped" in errors[0]
    assert "--resume" in errors[0]


def test_parts_cover_every_sample_once_and_helpers_are_identities_alone():
    for n in (0, 1, 5, 6, 101):
        for world in (1, 2, 3):
            parts = [dist.Dist(rank=r, world=world).part(n) for r in range(world)]
            assert np.array_equal(np.concatenate(parts), np.arange(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    x = np.arange(6.0)
    assert dist.all_reduce(x) is x
    assert dist.gather_objects("a") == ["a"]
    assert np.array_equal(dist.sharded_rows(4, lambda part: part * 2), np.arange(4) * 2)
