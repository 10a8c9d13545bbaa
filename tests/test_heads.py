"""The random-projection ridge head (proteus.heads.RidgeHead)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proteus.heads import DEFAULT_LAMBDAS, RidgeHead
from proteus.seeding import RUN, generator

pytestmark = pytest.mark.usefixtures("one_thread")


IN_DIM = 8


def task_data(task: int, n_per_class: int = 30, classes_per_task: int = 2, seed: int = 0,
              spread: float = 6.0):
    """Well-separated Gaussian classes: class c has a mean of norm ~spread*sqrt(IN_DIM)."""
    means = np.random.default_rng(100).normal(size=(16, IN_DIM)) * spread
    rng = np.random.default_rng([seed, task])
    classes = np.arange(task * classes_per_task, (task + 1) * classes_per_task)
    h = np.concatenate([means[c] + rng.normal(size=(n_per_class, IN_DIM)) for c in classes])
    y = np.repeat(classes, n_per_class)
    return h.astype(np.float32), y


def one_hot(y, k):
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def closed_form(phi: np.ndarray, y: np.ndarray, k: int, lam: float) -> np.ndarray:
    return np.linalg.solve(phi.T @ phi + lam * np.eye(phi.shape[1]), phi.T @ one_hot(y, k))


def test_streaming_updates_equal_the_joint_closed_form():
    head = RidgeHead(IN_DIM, proj_dim=64, seed=3, lambdas=[0.5])
    h0, y0 = task_data(0)
    h1, y1 = task_data(1)
    assert head.update(h0, y0, 2) == 0.5
    assert head.W_out.shape == (64, 2)
    assert head.update(h1, y1, 4) == 0.5
    assert head.num_classes == 4 and head.W_out.shape == (64, 4)
    assert head.lambda_history == [0.5, 0.5]

    # W_rand ~ N(0, 1) drawn from the run's "projection" stream, independently of the head
    W_rand = torch.randn(IN_DIM, 64, generator=generator(3, RUN, "projection"),
                         dtype=torch.float64).numpy()
    H = np.concatenate([h0, h1]).astype(np.float64)
    Y = np.concatenate([y0, y1])
    phi = np.maximum(H @ W_rand, 0.0)
    assert np.allclose(head.features(H).numpy(), phi)
    expected = closed_form(phi, Y, 4, 0.5)
    np.testing.assert_allclose(head.W_out.numpy(), expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(head.logits(H), phi @ expected, rtol=1e-6, atol=1e-6)
    # the streamed statistics are the joint ones
    np.testing.assert_allclose(head.G.numpy(), phi.T @ phi, rtol=1e-10)
    np.testing.assert_allclose(head.Q.numpy(), phi.T @ one_hot(Y, 4), rtol=1e-10, atol=1e-12)


def test_default_grid_picks_a_grid_lambda_and_classifies():
    head = RidgeHead(IN_DIM, proj_dim=128, seed=0)
    assert head.lambdas == DEFAULT_LAMBDAS
    for t in range(3):
        h, y = task_data(t, seed=1)
        lam = head.update(h, y, 2 * (t + 1))
        assert lam in DEFAULT_LAMBDAS
        assert head.lam == lam
    assert len(head.lambda_history) == 3
    H, Y = zip(*(task_data(t, seed=2) for t in range(3)))  # fresh test points
    pred = head.logits(np.concatenate(H)).argmax(1)
    assert float((pred == np.concatenate(Y)).mean()) >= 0.95


def test_lambda_selection_is_by_validation_error():
    """With many noisy features and few samples, a tiny lambda overfits: the grid must not pick
    the smallest value, and its choice has the lowest validation error of the grid."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(40, IN_DIM)).astype(np.float32)
    y = rng.integers(0, 2, size=40)  # labels unrelated to the features
    head = RidgeHead(IN_DIM, proj_dim=256, seed=0)
    lam = head.update(h, y, 2)
    assert lam > DEFAULT_LAMBDAS[0]


def test_proj_dim_zero_is_ridge_on_raw_features():
    head = RidgeHead(IN_DIM, proj_dim=0, seed=0, lambdas=[2.0])
    assert head.W_rand is None
    h0, y0 = task_data(0)
    h1, y1 = task_data(1)
    head.update(h0, y0, 2)
    head.update(h1, y1, 4)
    H = np.concatenate([h0, h1]).astype(np.float64)
    assert np.array_equal(head.features(H).numpy(), H)  # no projection, no ReLU
    expected = closed_form(H, np.concatenate([y0, y1]), 4, 2.0)
    assert head.W_out.shape == (IN_DIM, 4)
    np.testing.assert_allclose(head.W_out.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_state_round_trip_redraws_the_projection(tmp_path):
    from safetensors.torch import load_file, save_file

    head = RidgeHead(IN_DIM, proj_dim=64, seed=7)
    for t in range(2):
        head.update(*task_data(t), 2 * (t + 1))
    tensors, meta = head.state()
    assert not any("rand" in k for k in tensors)  # W_rand is redrawn from the seed, not saved
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "head.safetensors")

    fresh = RidgeHead(IN_DIM, proj_dim=64, seed=7)
    fresh.load_state(load_file(tmp_path / "head.safetensors"), meta)
    H = np.concatenate([task_data(t, seed=5)[0] for t in range(2)])
    # equal up to rounding (a reloaded W_out may be laid out differently in memory)
    np.testing.assert_allclose(fresh.logits(H), head.logits(H), rtol=1e-10, atol=1e-12)
    assert np.array_equal(fresh.logits(H).argmax(1), head.logits(H).argmax(1))
    assert fresh.lam == head.lam and fresh.lambda_history == head.lambda_history

    # another seed draws another projection: the seed is what makes reloading work
    other = RidgeHead(IN_DIM, proj_dim=64, seed=8)
    other.load_state(load_file(tmp_path / "head.safetensors"), meta)
    assert not np.allclose(other.logits(H), head.logits(H))

    # a reloaded head goes on learning exactly like the original
    h2, y2 = task_data(2)
    assert fresh.update(h2, y2, 6) == head.update(h2, y2, 6)
    np.testing.assert_allclose(fresh.W_out.numpy(), head.W_out.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("proj_dim", [0, 32])
def test_logits_cover_every_class_seen(proj_dim):
    head = RidgeHead(IN_DIM, proj_dim=proj_dim, seed=0)
    head.update(*task_data(0), 2)
    h1, y1 = task_data(1, classes_per_task=3)
    head.update(h1, y1 - 1, 5)  # task 1 holds classes 2, 3, 4
    assert head.logits(h1).shape == (len(h1), 5)
