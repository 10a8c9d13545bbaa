"""The shared training loop's budget options: ``steps_per_task`` (one budget every
gradient-trained learner reads alike) and ``unit_lr_scale`` (SLCA's slow learner)."""

from __future__ import annotations

import pytest
import torch

from conftest import assembled, tiny_config_dict


def _first_task(tmp_path, learner: dict, monkeypatch=None):
    run = assembled(tiny_config_dict(tmp_path, learner=learner))
    steps = []
    if monkeypatch is not None:
        original = torch.optim.Adam.step

        def counted(self, *args, **kwargs):
            steps.append(1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Adam, "step", counted)
    task = run.scenario.tasks[0]
    run.learner.learn_task(task, run.ctx)
    return run.learner, len(steps), len(task.train)


@pytest.mark.parametrize("name", ["seq-lora", "proteus", "inflora"])
@pytest.mark.parametrize("budget", [0, 3, 7])
def test_steps_per_task_is_the_number_of_optimiser_steps(tmp_path, one_thread, monkeypatch,
                                                         name, budget):
    options = {"name": name, "epochs": 1, "batch_size": 16, "steps_per_task": budget,
               **({"proj_dim": 128} if name == "proteus" else {})}
    learner, steps, n = _first_task(tmp_path, options, monkeypatch)
    assert n // 16 < 7  # 7 steps need more than one epoch here: the budget spans epochs
    assert steps == budget
    assert len(learner.fit_trace["loss"]) == -(-budget // -(-n // 16))  # epochs begun


def test_slow_units_move_less_than_the_heads_learning_rate_would(tmp_path, one_thread):
    def units(learner):
        return torch.cat([layer.B_new.detach().flatten()
                          for layer in learner.pool.layers.values()])

    fast, _, _ = _first_task(tmp_path / "fast", {"name": "seq-lora", "epochs": 2})
    slow, _, _ = _first_task(tmp_path / "slow", {"name": "seq-lora", "epochs": 2,
                                                 "unit_lr_scale": 0.01})
    # B starts at 0: its size after training scales with the units' learning rate under Adam
    assert units(slow).norm() < 0.05 * units(fast).norm()
    assert units(slow).norm() > 0


@pytest.mark.parametrize("optimizer, cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizer_and_cosine_schedule_reach_every_step(tmp_path, one_thread, monkeypatch,
                                                        optimizer, cls):
    """``optimizer`` picks the optimiser class; ``schedule: cosine`` anneals the rate from
    ``lr`` to 0 over exactly the task's steps (budget included)."""
    rates = []
    original = cls.step

    def recorded(self, *args, **kwargs):
        rates.append([g["lr"] for g in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "step", recorded)
    run = assembled(tiny_config_dict(tmp_path, learner={
        "name": "seq-lora", "epochs": 1, "batch_size": 16, "steps_per_task": 6, "lr": 0.01,
        "optimizer": optimizer, "schedule": "cosine"}))
    run.learner.learn_task(run.scenario.tasks[0], run.ctx)
    assert len(rates) == 6
    expected = [0.01 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / 6)).item())
                for i in range(6)]
    assert [r[0] for r in rates] == pytest.approx(expected, rel=1e-6)


def test_every_gradient_fit_is_recorded_per_task_and_plotted(tmp_path, one_thread):
    """The engine records each task's gradient fits (per-epoch loss and cross-entropy, steps)
    and the report plots them; a learner that trains only on the first task (aper) records
    only there, and an analytic one (simplecil) nothing."""
    import json

    import proteus
    from proteus.config import validate
    from proteus.report import TRAINING_PLOT

    out = {}
    for name in ("seq-lora", "aper", "simplecil"):
        learner = {"name": name, **({"epochs": 2, "batch_size": 16} if name != "simplecil"
                                    else {})}
        raw = tiny_config_dict(tmp_path, name=name, learner=learner)
        proteus.run(validate(raw))
        out[name] = json.loads((tmp_path / name / "results.json").read_text())
    per_task = out["seq-lora"]["extras"]["per_task"]
    for extras in per_task:
        (fit,) = extras["training_curves"]
        assert len(fit["loss"]) == len(fit["ce"]) == 2 and fit["steps"] > 0
        assert fit["loss"][-1] < fit["loss"][0]  # two epochs on a task: the loss falls
    assert (tmp_path / "seq-lora" / TRAINING_PLOT).is_file()
    assert TRAINING_PLOT in (tmp_path / "seq-lora" / "report.md").read_text()
    aper = out["aper"]["extras"]["per_task"]
    assert "training_curves" in aper[0] and all("training_curves" not in e for e in aper[1:])
    simple = out["simplecil"].get("extras", {}).get("per_task") or []
    assert all("training_curves" not in e for e in simple)
    assert not (tmp_path / "simplecil" / TRAINING_PLOT).exists()
