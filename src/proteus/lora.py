"""The low-rank unit pool shared by every LoRA-based learner (METHOD.md section 2).

A rank-1 *unit* of a layer is a pair (a_j, b_j). Units learned by finished tasks live in a frozen,
append-only pool. While task k+1 trains, a layer computes

    y = base(x) + scale * ( alpha * sum_j w_j b_j a_j^T x  +  B_new A_new^T x )

with one learned transfer weight w_j per pool unit (per layer) and r new units. When the task ends
its w is stored and its new units are appended to the pool, so every stored task's update can be
re-activated bit for bit later: it reads only frozen pool rows and its own frozen w.

The update is always applied as a product of thin matrices (rank = pool size + r), never as a
d x d matrix per task; :meth:`LowRankPool.merged` folds one task's update into the dense weights for
inference when that is cheaper.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class LowRankLayer(nn.Module):
    """A frozen Linear or 1x1 Conv2d plus the pool's low-rank update."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, scale: float, init_std: float):
        super().__init__()
        if isinstance(base, nn.Linear):
            self.kind, in_f, out_f = "linear", base.in_features, base.out_features
        elif isinstance(base, nn.Conv2d):
            if base.kernel_size != (1, 1) or base.stride != (1, 1) or base.groups != 1:
                raise ValueError("low-rank units on convolutions need 1x1, stride-1, ungrouped "
                                 f"convolutions; got kernel {base.kernel_size}, stride "
                                 f"{base.stride}, groups {base.groups}")
            self.kind, in_f, out_f = "conv1x1", base.in_channels, base.out_channels
        else:
            raise TypeError(f"low-rank units need nn.Linear or 1x1 nn.Conv2d, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = in_f, out_f
        self.rank, self.alpha, self.scale, self.init_std = rank, alpha, scale, init_std
        ref = base.weight
        self.register_buffer("A_pool", ref.new_zeros(0, in_f))  # rows a_j
        self.register_buffer("B_pool", ref.new_zeros(out_f, 0))  # columns b_j
        self.task_w: list[torch.Tensor] = []  # task k's transfer weights over pool[:start_k]
        self.task_range: list[tuple[int, int]] = []  # task k's own units: pool[start_k:end_k]
        self.A_new: nn.Parameter | None = None
        self.B_new: nn.Parameter | None = None
        self.w: nn.Parameter | None = None
        # task index, "train", None (frozen backbone) or a per-sample task-index tensor
        self.active: int | str | torch.Tensor | None = None

    # -- task life cycle ---------------------------------------------------------------------
    def begin_task(self, generator: torch.Generator | None = None) -> None:
        ref = self.base.weight
        a = torch.randn(self.rank, self.in_features, generator=generator, dtype=ref.dtype)
        self.A_new = nn.Parameter((a * self.init_std).to(ref.device))  # A ~ N(0, 0.01^2)
        self.B_new = nn.Parameter(ref.new_zeros(self.out_features, self.rank))  # B = 0
        self.w = nn.Parameter(ref.new_zeros(self.A_pool.shape[0]))  # no transfer at start [ours]
        self.active = "train"

    def end_task(self) -> None:
        start = self.A_pool.shape[0]
        self.task_w.append(self.w.detach().clone())
        self.A_pool = torch.cat([self.A_pool, self.A_new.detach().clone()])
        self.B_pool = torch.cat([self.B_pool, self.B_new.detach().clone()], dim=1)
        self.task_range.append((start, self.A_pool.shape[0]))
        self.A_new = self.B_new = self.w = None
        self.active = len(self.task_w) - 1

    # -- the update ----------------------------------------------------------------------------
    def factors(self, task: int | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, coefficients, B) with update = scale * B diag(coef) A."""
        if task == "train":
            A = torch.cat([self.A_pool, self.A_new])
            B = torch.cat([self.B_pool, self.B_new], dim=1)
            coef = torch.cat([self.alpha * self.w, self.w.new_ones(self.rank)])
            return A, coef, B
        start, end = self.task_range[task]
        w = self.task_w[task]
        coef = torch.cat([self.alpha * w, w.new_ones(end - start)])
        # task k's units are pool[start:end] and its transfer covers pool[:start]: one slice
        return self.A_pool[:end], coef, self.B_pool[:, :end]

    def delta_weight(self, task: int) -> torch.Tensor:
        """Dense out x in update of a stored task (for merging and tests)."""
        A, coef, B = self.factors(task)
        return self.scale * (B * coef) @ A

    def task_coefficients(self) -> torch.Tensor:
        """(T, P): row k holds stored task k's coefficient of every pool unit (zero beyond its
        own units), so that update_k = scale * B_pool diag(row k) A_pool."""
        pool = self.A_pool.shape[0]
        rows = []
        for k, (start, end) in enumerate(self.task_range):
            w = self.task_w[k]
            row = w.new_zeros(pool)
            row[:start] = self.alpha * w
            row[start:end] = 1.0
            rows.append(row)
        return torch.stack(rows) if rows else self.A_pool.new_zeros(0, pool)

    def _mixed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every sample with its own stored task's update (``active`` is a per-sample index
        tensor), in one batched product: x A_pool^T, times each sample's coefficient row,
        times B_pool^T (the gather that S-LoRA / Punica batch with their kernels)."""
        coef = self.task_coefficients()[self.active.to(x.device)]  # (N, P)
        if self.kind == "linear":
            h = (x @ self.A_pool.T) * coef.view(coef.shape[0], *[1] * (x.ndim - 2), -1)
            return y + self.scale * (h @ self.B_pool.T)
        h = torch.einsum("nchw,pc->nphw", x, self.A_pool) * coef[:, :, None, None]
        return y + self.scale * torch.einsum("nphw,op->nohw", h, self.B_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.active is None:
            return y
        if isinstance(self.active, torch.Tensor):
            return self._mixed(x, y)
        A, coef, B = self.factors(self.active)
        if A.shape[0] == 0:
            return y
        if self.kind == "linear":
            h = (x @ A.T) * coef
            return y + self.scale * (h @ B.T)
        h = torch.einsum("nchw,pc->nphw", x, A) * coef.view(1, -1, 1, 1)
        return y + self.scale * torch.einsum("nphw,op->nohw", h, B)

    # -- penalties ---------------------------------------------------------------------------
    def orthogonality(self) -> torch.Tensor:
        """||A_pool A_new^T||_F^2: new input directions orthogonal to the pool's [ours: which]."""
        if self.A_pool.shape[0] == 0:
            return self.A_new.sum() * 0.0
        return (self.A_pool @ self.A_new.T).pow(2).sum()

    def transfer_penalty(self) -> torch.Tensor:
        """R(w) = ||w||_1 + ||w||_2^2 [ours: the exact l1/l2 form]."""
        return self.w.abs().sum() + self.w.pow(2).sum()


class LowRankPool:
    """All adapted layers of one backbone, driven together."""

    def __init__(self, backbone: nn.Module, targets: list[str] | None, rank: int, alpha: float,
                 scale: float = 0.1, init_std: float = 0.01):
        self.backbone = backbone
        self.layers: dict[str, LowRankLayer] = {}
        for name, module in backbone.target_layers(targets).items():
            layer = LowRankLayer(module, rank, alpha, scale, init_std)
            backbone.set_submodule(name, layer)
            self.layers[name] = layer

    @property
    def num_tasks(self) -> int:
        return len(next(iter(self.layers.values())).task_w)

    def begin_task(self, seed: int) -> list[nn.Parameter]:
        gen = torch.Generator().manual_seed(seed)
        for layer in self.layers.values():
            layer.begin_task(gen)
        return self.parameters()

    def end_task(self) -> None:
        for layer in self.layers.values():
            layer.end_task()

    def parameters(self) -> list[nn.Parameter]:
        out = []
        for layer in self.layers.values():
            out += [p for p in (layer.w, layer.A_new, layer.B_new) if p is not None and p.numel()]
        return out

    def orthogonality(self) -> torch.Tensor:
        return sum(layer.orthogonality() for layer in self.layers.values())

    def transfer_penalty(self) -> torch.Tensor:
        return sum(layer.transfer_penalty() for layer in self.layers.values())

    def activate(self, task: int | str | torch.Tensor | None) -> None:
        """Task ``task``'s update, "train", None (frozen), or a per-sample tensor of stored task
        indices (a mixed batch: row i with task ``task[i]``'s update)."""
        if isinstance(task, torch.Tensor):
            if task.numel() and not 0 <= int(task.min()) <= int(task.max()) < self.num_tasks:
                raise IndexError(f"task indices {int(task.min())}..{int(task.max())}: "
                                 f"{self.num_tasks} tasks learned")
        elif isinstance(task, int) and not 0 <= task < self.num_tasks:
            raise IndexError(f"no stored task {task}; {self.num_tasks} tasks learned")
        for layer in self.layers.values():
            layer.active = task

    @contextlib.contextmanager
    def using(self, task: int | str | None) -> Iterator[None]:
        previous = {n: layer.active for n, layer in self.layers.items()}
        self.activate(task)
        try:
            yield
        finally:
            for n, layer in self.layers.items():
                layer.active = previous[n]

    def disabled(self) -> contextlib.AbstractContextManager:
        """The pre-trained backbone, with no update applied."""
        return self.using(None)

    @contextlib.contextmanager
    def merged(self, task: int) -> Iterator[None]:
        """Fold ``task``'s update into the dense weights for the duration (inference only)."""
        saved = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                weight = layer.base.weight
                saved[name] = weight.detach().clone()
                delta = layer.delta_weight(task)
                weight.add_(delta.view_as(weight) if layer.kind == "linear"
                            else delta.view(*delta.shape, 1, 1))
        try:
            with self.using(None):
                yield
        finally:
            with torch.no_grad():
                for name, layer in self.layers.items():
                    layer.base.weight.copy_(saved[name])  # restore exactly, no subtraction

    def trained_parameters_per_task(self) -> int:
        return sum(layer.rank * (layer.in_features + layer.out_features)
                   + (layer.A_pool.shape[0] if layer.w is None else layer.w.numel())
                   for layer in self.layers.values())

    # -- saving ------------------------------------------------------------------------------
    def state(self, prefix: str = "lora.") -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            tensors[f"{prefix}{name}.A"] = layer.A_pool
            tensors[f"{prefix}{name}.B"] = layer.B_pool
            for k, w in enumerate(layer.task_w):
                tensors[f"{prefix}{name}.w{k}"] = w
        ranges = {name: [list(r) for r in layer.task_range] for name, layer in self.layers.items()}
        return tensors, {"layers": sorted(self.layers), "task_ranges": ranges}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "lora.") -> None:
        if sorted(self.layers) != sorted(meta["layers"]):
            raise ValueError("saved low-rank layers do not match this backbone's targets: "
                             f"saved {meta['layers'][:3]}..., here {sorted(self.layers)[:3]}...")
        for name, layer in self.layers.items():
            device = layer.base.weight.device
            layer.A_pool = tensors[f"{prefix}{name}.A"].to(device)
            layer.B_pool = tensors[f"{prefix}{name}.B"].to(device)
            layer.task_range = [tuple(r) for r in meta["task_ranges"][name]]
            layer.task_w = [tensors[f"{prefix}{name}.w{k}"].to(device)
                            for k in range(len(layer.task_range))]
            layer.active = len(layer.task_w) - 1 if layer.task_w else None
