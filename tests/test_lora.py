"""The low-rank unit pool (proteus.lora): composed updates, frozen stored tasks, gradients,
penalties, merging and saving."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proteus.backbones import BACKBONES
from proteus.lora import LowRankLayer, LowRankPool

RANK, ALPHA, SCALE = 2, 0.3, 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


def _fill_random(layer: LowRankLayer, gen: torch.Generator) -> None:
    """Simulate training: give w, A_new and B_new arbitrary (non-zero) values."""
    with torch.no_grad():
        for p in (layer.w, layer.A_new, layer.B_new):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _fill_pool(pool: LowRankPool, gen: torch.Generator) -> None:
    for layer in pool.layers.values():
        _fill_random(layer, gen)


def _hand_update(layer: LowRankLayer, A_pool, B_pool, w, A_new, B_new) -> torch.Tensor:
    """scale * (alpha * sum_j w_j b_j a_j^T + B_new A_new^T), one unit at a time."""
    out = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    for j in range(len(w)):
        out += ALPHA * float(w[j]) * torch.outer(B_pool[:, j].double(), A_pool[j].double())
    out += B_new.double() @ A_new.double().T
    return SCALE * out


def _three_task_layer(base: nn.Module, gen: torch.Generator):
    """A layer that has learned tasks 0 and 1 and is training task 2; returns the hand-recorded
    (w, A_new, B_new) of every task (B_new is out x r, A_new is in x r)."""
    layer = LowRankLayer(base, RANK, ALPHA, SCALE, init_std=0.01)
    record = []
    for k in range(3):
        layer.begin_task(gen)
        assert layer.w.shape == (RANK * k,)
        _fill_random(layer, gen)
        record.append((layer.w.detach().clone(), layer.A_new.detach().clone().T,
                       layer.B_new.detach().clone()))
        if k < 2:
            layer.end_task()
    return layer, record


def _expected_update(layer, record, task: int) -> torch.Tensor:
    """Task ``task``'s update from the recorded values of tasks 0..task."""
    A_prev = torch.cat([r[1].T for r in record[:task]]) if task else torch.zeros(0, layer.in_features)
    B_prev = (torch.cat([r[2] for r in record[:task]], dim=1) if task
              else torch.zeros(layer.out_features, 0))
    w, A_new, B_new = record[task]
    return _hand_update(layer, A_prev, B_prev, w, A_new, B_new)


def _linear_apply(x, delta):
    return x.double() @ delta.T


def _conv_apply(x, delta):
    return nn.functional.conv2d(x.double(), delta.view(*delta.shape, 1, 1))


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_composed_update_matches_the_explicit_sum(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if kind == "linear":
        base = nn.Linear(6, 5)
        x = torch.randn(4, 6)
        apply = _linear_apply
    else:
        base = nn.Conv2d(6, 5, kernel_size=1)
        x = torch.randn(2, 6, 3, 3)
        apply = _conv_apply
    base_out = base(x).detach().double()
    layer, record = _three_task_layer(base, gen)
    assert layer.kind == kind

    # "train" mode: the pool of tasks 0-1 plus the new units of task 2
    expected = _expected_update(layer, record, 2)
    assert torch.allclose(layer.delta_weight("train").double(), expected, atol=1e-5)
    with torch.no_grad():
        y = layer(x).double()
    assert torch.allclose(y, base_out + apply(x, expected), atol=1e-5)

    layer.end_task()
    for task in range(3):
        expected = _expected_update(layer, record, task)
        assert torch.allclose(layer.delta_weight(task).double(), expected, atol=1e-5), task
        layer.active = task
        with torch.no_grad():
            y = layer(x).double()
        assert torch.allclose(y, base_out + apply(x, expected), atol=1e-5), task
        # the update is really there (not a vacuous comparison)
        assert expected.abs().max() > 1e-3
    layer.active = None
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))


@pytest.fixture()
def vit_pool():
    backbone = BACKBONES.build("tiny-vit", {})
    pool = LowRankPool(backbone, None, RANK, ALPHA, SCALE)
    return backbone, pool


def _inputs(seed: int = 0, n: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=gen)


def _out(backbone, x) -> torch.Tensor:
    with torch.no_grad():
        return backbone(x)


def _learn(pool, backbone, tasks: int, gen, x, outputs: dict | None = None) -> None:
    for k in range(pool.num_tasks, tasks):
        pool.begin_task(seed=100 + k)
        _fill_pool(pool, gen)
        pool.end_task()
        if outputs is not None:
            with pool.using(k):
                outputs[k] = _out(backbone, x).clone()


def test_stored_task_output_is_bit_identical_after_later_tasks(vit_pool):
    backbone, pool = vit_pool
    gen = torch.Generator().manual_seed(3)
    x = _inputs()
    frozen = _out(backbone, x)
    outputs: dict[int, torch.Tensor] = {}
    _learn(pool, backbone, 3, gen, x, outputs)
    assert pool.num_tasks == 3
    for k in range(3):
        with pool.using(k):
            again = _out(backbone, x)
        assert torch.equal(again, outputs[k]), k
        assert not torch.allclose(again, frozen), k  # the update does something
    # different tasks are different backbones
    assert not torch.allclose(outputs[0], outputs[2])
    with pool.disabled():
        assert torch.equal(_out(backbone, x), frozen)
    with pytest.raises(IndexError):
        pool.activate(3)


def test_only_new_units_and_transfer_weights_get_gradients(vit_pool):
    backbone, pool = vit_pool
    gen = torch.Generator().manual_seed(4)
    _learn(pool, backbone, 2, gen, _inputs())
    params = pool.begin_task(seed=7)
    _fill_pool(pool, gen)
    # per layer: w (over 2 tasks x RANK pool units), A_new, B_new
    assert len(params) == 3 * len(pool.layers)
    out = backbone(_inputs())
    loss = out.pow(2).sum() + pool.orthogonality() + pool.transfer_penalty()
    loss.backward()
    trainable = {id(p) for p in params}
    for layer in pool.layers.values():
        assert layer.w.shape == (2 * RANK,)
        for p in (layer.w, layer.A_new, layer.B_new):
            assert p.grad is not None and p.grad.abs().sum() > 0
        assert not layer.A_pool.requires_grad and layer.A_pool.grad is None
        assert not layer.B_pool.requires_grad and layer.B_pool.grad is None
        for w in layer.task_w:
            assert not w.requires_grad and w.grad is None
    for name, p in backbone.named_parameters():
        if id(p) not in trainable:
            assert not p.requires_grad, name
            assert p.grad is None, name


def test_orthogonality_penalty_decreases_under_adam(vit_pool):
    backbone, pool = vit_pool
    gen = torch.Generator().manual_seed(5)
    _learn(pool, backbone, 1, gen, _inputs())
    pool.begin_task(seed=9)
    _fill_pool(pool, gen)  # A_new far from orthogonal to the pool
    news = [layer.A_new for layer in pool.layers.values()]
    start = pool.orthogonality().item()
    assert start > 0
    optimiser = torch.optim.Adam(news, lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        penalty = pool.orthogonality()
        penalty.backward()
        optimiser.step()
    end = pool.orthogonality().item()
    assert end < 0.1 * start


def test_orthogonality_is_zero_without_a_pool():
    layer = LowRankLayer(nn.Linear(4, 3), RANK, ALPHA, SCALE, 0.01)
    layer.begin_task(torch.Generator().manual_seed(0))
    assert layer.orthogonality().item() == 0.0
    assert layer.w.numel() == 0


def test_merged_matches_unmerged_and_restores_weights(vit_pool):
    backbone, pool = vit_pool
    gen = torch.Generator().manual_seed(6)
    x = _inputs()
    _learn(pool, backbone, 3, gen, x)
    weights = {n: layer.base.weight.detach().clone() for n, layer in pool.layers.items()}
    for k in range(3):
        with pool.using(k):
            expected = _out(backbone, x)
        pool.activate(2)
        with pool.merged(k):
            merged = _out(backbone, x)
            changed = any(not torch.equal(layer.base.weight, weights[n])
                          for n, layer in pool.layers.items())
        assert changed
        assert torch.allclose(merged, expected, atol=1e-5), k
        for n, layer in pool.layers.items():
            assert torch.equal(layer.base.weight, weights[n]), n
            assert layer.active == 2  # the previous activation is back
        with pool.using(k):
            assert torch.equal(_out(backbone, x), expected)


def test_state_round_trip_into_a_fresh_pool(vit_pool, tmp_path):
    from safetensors.torch import load_file, save_file

    backbone, pool = vit_pool
    gen = torch.Generator().manual_seed(8)
    x = _inputs()
    outputs: dict[int, torch.Tensor] = {}
    _learn(pool, backbone, 3, gen, x, outputs)
    tensors, meta = pool.state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "lora.safetensors")

    fresh_backbone = BACKBONES.build("tiny-vit", {})
    fresh = LowRankPool(fresh_backbone, None, RANK, ALPHA, SCALE)
    fresh.load_state(load_file(tmp_path / "lora.safetensors"), meta)
    assert fresh.num_tasks == 3
    for k in range(3):
        with fresh.using(k):
            assert torch.equal(_out(fresh_backbone, x), outputs[k]), k
    # a loaded pool can go on learning: the next task's transfer spans the whole pool
    fresh.begin_task(seed=11)
    for layer in fresh.layers.values():
        assert layer.w.shape == (3 * RANK,)


def test_load_state_rejects_other_targets(vit_pool):
    backbone, pool = vit_pool
    _learn(pool, backbone, 1, torch.Generator().manual_seed(0), _inputs())
    tensors, meta = pool.state()
    other = LowRankPool(BACKBONES.build("tiny-vit", {}), [r".*\.q_proj"], RANK, ALPHA, SCALE)
    with pytest.raises(ValueError, match="targets"):
        other.load_state(tensors, meta)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 3, kernel_size=3), nn.Conv2d(4, 3, 1, stride=2),
                                  nn.Conv2d(4, 4, 1, groups=2)])
def test_non_pointwise_convolution_is_rejected(conv):
    with pytest.raises(ValueError, match="1x1"):
        LowRankLayer(conv, RANK, ALPHA, SCALE, 0.01)


def test_other_modules_are_rejected():
    with pytest.raises(TypeError, match="nn.Linear"):
        LowRankLayer(nn.LayerNorm(4), RANK, ALPHA, SCALE, 0.01)


def test_mixed_batch_forward_equals_the_per_task_forward(vit_pool):
    """A batch whose rows belong to different stored tasks, in one forward with per-sample
    coefficient rows, gives each row its own task's output (the inference path of PROTEUS)."""
    backbone, pool = vit_pool
    gen = torch.Generator().manual_seed(3)
    x = _inputs(seed=4, n=9)
    per_task = {}
    _learn(pool, backbone, 3, gen, x, per_task)
    tasks = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1])
    with pool.using(None):
        pool.activate(tasks)
        mixed = _out(backbone, x)
    for i, k in enumerate(tasks.tolist()):
        torch.testing.assert_close(mixed[i], per_task[k][i], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per_task[0], per_task[2])  # the tasks really differ
    with pytest.raises(IndexError, match="3 tasks learned"):
        pool.activate(torch.tensor([0, 3]))


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_mixed_rows_match_each_tasks_update(kind):
    gen = torch.Generator().manual_seed(5)
    base = nn.Linear(6, 4) if kind == "linear" else nn.Conv2d(6, 4, 1)
    layer, _ = _three_task_layer(base, gen)
    layer.end_task()
    x = torch.randn(6, 6) if kind == "linear" else torch.randn(6, 6, 3, 3)
    tasks = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        layer.active = tasks
        mixed = layer(x)
        for i, k in enumerate(tasks.tolist()):
            layer.active = k
            torch.testing.assert_close(mixed[i], layer(x)[i], rtol=1e-5, atol=1e-6)
