"""Classifier alignment (CA): the head alone is retrained, on pseudo-features of stored class
Gaussians, and that calibrates heads whose tasks' logits were never compared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assembled, tiny_config_dict
from proteus.learners.align import AlignOptions, ClassAligner


def _learn_all(tmp_path, learner: dict):
    run = assembled(tiny_config_dict(tmp_path, learner=learner))
    for task in run.scenario.tasks:
        run.learner.learn_task(task, run.ctx)
    return run.learner.state()[0]


@pytest.mark.parametrize("name", ["inflora", "sd-lora", "o-lora"])
def test_ca_changes_only_the_head(tmp_path, one_thread, name):
    plain = _learn_all(tmp_path / "plain", {"name": name, "epochs": 1})
    aligned = _learn_all(tmp_path / "ca", {"name": f"{name}-ca", "epochs": 1})
    assert set(aligned) == set(plain) | {"ca.means", "ca.factors", "ca.seen"}
    for key, value in plain.items():
        if key.startswith("head."):
            assert not torch.equal(value, aligned[key]), key  # the head was retrained
        else:
            assert torch.equal(value, aligned[key]), key  # units, memory: untouched


def _gaussians(gen, classes=6, dim=8, n=200):
    means = torch.randn(classes, dim, generator=gen, dtype=torch.float64) * 3
    x = torch.cat([m + torch.randn(n, dim, generator=gen, dtype=torch.float64) for m in means])
    y = np.repeat(np.arange(classes), n)
    return x.numpy(), y, means


def test_pseudo_features_follow_the_stored_gaussians():
    x, y, means = _gaussians(torch.Generator().manual_seed(0))
    aligner = ClassAligner(8, AlignOptions(ca_samples_per_class=4000))
    aligner.add(x, y)
    assert torch.allclose(aligner.means, torch.as_tensor(
        np.stack([x[y == c].mean(0) for c in range(6)])))
    fake, labels = aligner.sample(torch.Generator().manual_seed(1))
    assert fake.shape == (6 * 4000, 8) and labels.tolist() == np.repeat(range(6), 4000).tolist()
    for c in range(6):
        drawn = fake[labels == c].double()
        assert torch.allclose(drawn.mean(0), aligner.means[c], atol=0.1)
        want = np.cov(x[y == c], rowvar=False)
        assert np.allclose(np.cov(drawn.numpy(), rowvar=False), want, atol=0.15)


def test_alignment_calibrates_heads_of_tasks_trained_apart():
    """Two 'tasks' whose rows were fitted apart, task 1's logits shifted up: argmax over all
    classes sends many of task 0's samples to task 1; after CA the classes are told apart."""
    x, y, means = _gaussians(torch.Generator().manual_seed(2))
    weight = means.float().clone()
    bias = -0.5 * (means ** 2).sum(1).float()
    bias[3:] += 40.0  # task 1's offset: never calibrated against task 0's
    xt = torch.as_tensor(x, dtype=torch.float32)
    before = ((xt @ weight.T + bias).argmax(1).numpy() == y).mean()
    aligner = ClassAligner(8, AlignOptions())
    aligner.add(x, y)
    W, b, loss = aligner.align(weight, bias, seed=0)
    after = ((xt @ W.T + b).argmax(1).numpy() == y).mean()
    assert before < 0.8 and after > 0.9 and loss is not None
    assert W.shape == weight.shape and b.shape == bias.shape


def test_slca_is_seq_lora_with_slow_units_and_an_aligned_head(tmp_path, one_thread):
    """On its first task SLCA trains exactly seq-lora's units at 1/100 of the lr; CA then
    changes the head alone (later tasks train the units against the aligned head)."""
    def first_task(root, learner):
        run = assembled(tiny_config_dict(root, learner=learner))
        run.learner.learn_task(run.scenario.tasks[0], run.ctx)
        return run.learner.state()[0]

    slow = first_task(tmp_path / "seq", {"name": "seq-lora", "epochs": 1,
                                         "unit_lr_scale": 0.01})
    slca = first_task(tmp_path / "slca", {"name": "slca", "epochs": 1})
    for key, value in slow.items():
        same = torch.equal(value, slca[key])
        assert same != key.startswith("head."), key
