"""Summable class statistics: parts add up to the whole, and the scatter is the centred one."""

from __future__ import annotations

import numpy as np
import pytest

from proteus.stats import ClassStats


def _data(seed: int = 0, n: int = 60, d: int = 5, classes: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + 3.0 * labels[:, None]
    return x, labels


def _centred_scatter(x, labels):
    out = np.zeros((x.shape[1], x.shape[1]))
    for c in np.unique(labels):
        centred = x[labels == c] - x[labels == c].mean(0)
        out += centred.T @ centred
    return out


def test_scatter_and_means_are_the_centred_ones():
    x, labels = _data()
    stats = ClassStats(x.shape[1])
    stats.add(x, labels)
    np.testing.assert_allclose(stats.within_scatter(), _centred_scatter(x, labels),
                               rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(stats.means(), [x[labels == c].mean(0) for c in range(3)])
    assert stats.total == len(x)
    scatter = stats.within_scatter()
    assert np.array_equal(scatter, scatter.T)


def test_shards_in_any_order_add_up_to_the_whole():
    x, labels = _data(1)
    whole = ClassStats(x.shape[1])
    whole.add(x, labels)
    a, b = ClassStats(x.shape[1]), ClassStats(x.shape[1])
    a.add(x[::2], labels[::2])
    b.add(x[1::2], labels[1::2])  # the same classes split over two shards
    b += a
    np.testing.assert_allclose(b.within_scatter(), whole.within_scatter(), rtol=1e-10,
                               atol=1e-9)
    np.testing.assert_allclose(b.sum, whole.sum)
    np.testing.assert_array_equal(b.count, whole.count)


def test_state_round_trip_keeps_the_scatter():
    x, labels = _data(2)
    stats = ClassStats(x.shape[1])
    stats.add(x, labels)
    back = ClassStats.from_state(stats.state("s."), "s.")
    np.testing.assert_allclose(back.within_scatter(), stats.within_scatter(), rtol=1e-10,
                               atol=1e-9)
    more, more_labels = _data(3)
    back.add(more, more_labels)
    stats.add(more, more_labels)
    np.testing.assert_allclose(back.within_scatter(), stats.within_scatter(), rtol=1e-9,
                               atol=1e-8)


def test_bad_shapes_and_missing_classes_are_errors():
    stats = ClassStats(4)
    with pytest.raises(ValueError, match="dimension 4"):
        stats.add(np.zeros((2, 3)), np.array([0, 1]))
    stats.add(np.ones((2, 4)), np.array([0, 2]))
    with pytest.raises(ValueError, match="no samples yet for class rows \\[1\\]"):
        stats.means()
