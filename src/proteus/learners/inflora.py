"""InfLoRA: interference-free low-rank adaptation (Liang & Li, CVPR 2024).

Each target layer keeps a memory M (orthonormal columns) of the input subspace of old tasks.
For each task t:
  1. collect H_t, the inputs of every target layer on task t's training data (model after t-1)
  2. design A_t: the top-r left singular vectors of the residual (I - M M^T) H_t, as rows,
     times a_scale; A_t is fixed (its rows are orthogonal to M, so the new branch leaves the
     old tasks' inputs untouched to first order: the paper's interference-free property)
  3. train only B_t (from 0) with the head: the branch is Delta W_t = B_t A_t
  4. keep B_t A_t as a frozen, always-on branch (the sum over tasks is one merged model)
  5. collect H_t again with the trained model and grow M by the DualGPM/GPM energy criterion:
     add the residual's top directions until ||M M^T H_t||_F^2 >= eps_t ||H_t||_F^2, with
     eps_t = threshold + (threshold_final - threshold) * t / T (the authors' lamb 0.95 -> lame 1)
Predict: one model (W0 + sum_t B_t A_t) for every input, argmax of the head over all classes.

Choices where the paper is silent or the code differs:
  * M always stores the old tasks' subspace (GPM's "remove" form). DualGPM switches to storing
    the complement once M passes d/2 columns; that is the same projection, kept for memory.
  * SVDs of H_t are taken via its covariance H_t H_t^T (eigh): the same singular vectors, and
    energies sigma^2 = eigenvalues. The authors' code feeds the covariance itself to the SVD
    formulas, which squares the spectrum (fewer directions pass the threshold) [paper over code].
  * A_t = top-r eigenvectors of Q^T C Q lifted by Q, Q an orthonormal basis of M's complement,
    so A_t is orthogonal to M exactly even when the residual has rank < r.
  * The authors' recipe is the default: units on the attention key and value projections of
    every block (``targets`` unset; a backbone without attention, such as EfficientNet, falls
    back to its default targets, a deviation the presets state), rank 10, Adam lr 5e-4 with a
    cosine schedule, 20 epochs, batch 128, no gradient clipping.
  * a_scale 1/sqrt(3) as in the authors' code; loss over the current task's classes with the
    older head rows frozen (their code trains one head per task) -- ``head_loss: current``.
  * The branch is kept as thin factors rather than merged into W: the same function, and the
    saved model stays W0 + pool (no dense weights to store).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..dist import active, all_reduce, local
from ..seeding import derive_seed
from .base import LEARNERS
from .lowrank import LoRABaseline, LoRABaselineOptions


def complement_basis(memory: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d x (d - m)) of the orthogonal complement of ``memory``'s columns."""
    d, m = memory.shape
    if m == 0:
        return torch.eye(d, dtype=memory.dtype, device=memory.device)
    U, _, _ = torch.linalg.svd(memory, full_matrices=True)
    return U[:, m:]


def _top_eigen(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix."""
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    return evals.flip(0).clamp_min(0.0), evecs.flip(1)


def design_down_projection(cov: torch.Tensor, memory: torch.Tensor, rank: int) -> torch.Tensor:
    """A (rank x d): the top-``rank`` principal directions of the inputs outside span(memory).

    ``cov`` is H H^T of the layer's inputs. Rows beyond the complement's dimension are zero.
    """
    Q = complement_basis(memory)
    _, evecs = _top_eigen(Q.T @ cov @ Q)
    A = _fixed_signs(Q @ evecs[:, :rank]).T
    if A.shape[0] < rank:
        A = torch.cat([A, A.new_zeros(rank - A.shape[0], A.shape[1])])
    return A


def update_memory(cov: torch.Tensor, memory: torch.Tensor, threshold: float) -> torch.Tensor:
    """GPM step: add the residual's principal directions until M keeps ``threshold`` of the
    inputs' energy (||M M^T H||^2 >= threshold ||H||^2); returns the grown M."""
    total = float(torch.trace(cov))
    if total <= 0:
        return memory
    Q = complement_basis(memory)
    evals, evecs = _top_eigen(Q.T @ cov @ Q)
    captured = (total - float(evals.sum())) / total  # energy already inside span(M)
    k = 0
    while k < len(evals) and captured < threshold:
        captured += float(evals[k]) / total
        k += 1
    if k == 0:
        return memory
    return torch.cat([memory, _fixed_signs(Q @ evecs[:, :k])], dim=1)


def _fixed_signs(V: torch.Tensor) -> torch.Tensor:
    """Columns of ``V`` with each one's largest entry positive: an eigenvector's sign is
    arbitrary and may flip with rounding (another process count, another BLAS)."""
    peak = V.gather(0, V.abs().argmax(0, keepdim=True))
    return V * torch.where(peak < 0, -1.0, 1.0).to(V.dtype)


class InfLoRAOptions(LoRABaselineOptions):
    # None: the attention key and value projections of every block (the authors'), or the
    # backbone's default targets where it has no attention (a CNN: a deviation)
    targets: list[str] | None = None
    rank: int = Field(10, gt=0)
    lr: float = Field(5e-4, gt=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(128, gt=0)
    grad_clip: float = 0.0  # the authors' code does not clip
    threshold: float = Field(0.95, gt=0, le=1)  # eps for the first task (the authors' "lamb")
    threshold_final: float = Field(1.0, gt=0, le=1)  # eps approached at the last task ("lame")
    a_scale: float = Field(1 / math.sqrt(3), gt=0)  # designed rows' norm (authors' code)


@LEARNERS.register("inflora", InfLoRAOptions,
                   "InfLoRA: per-task branch B_t A_t, A_t designed orthogonal to old inputs")
class InfLoRA(LoRABaseline):
    options_model = InfLoRAOptions
    grow_keys = ("memory.*",)

    def _targets(self) -> list[str] | None:
        """Unset ``targets``: the attention keys and values where the backbone has them."""
        if self.options.targets is None:
            return getattr(self.backbone, "kv_targets", None)
        return self.options.targets

    def __init__(self, options: InfLoRAOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.memory: dict[str, torch.Tensor] = {
            name: torch.zeros(layer.in_features, 0, dtype=torch.float64,
                              device=layer.base.weight.device)
            for name, layer in self.pool.layers.items()}
        # the last task's designed A and the memory it was designed against (not saved)
        self.designed: dict[str, torch.Tensor] = {}
        self.designed_against: dict[str, torch.Tensor] = {}

    def threshold(self, task: int, num_tasks: int | None) -> float:
        o = self.options
        if not num_tasks:
            return o.threshold
        return o.threshold + (o.threshold_final - o.threshold) * task / num_tasks

    def input_covariances(self, items, prefix, task: int | None,
                          size: int) -> dict[str, torch.Tensor]:
        """H H^T of every target layer's inputs (float64), with stored task ``task`` applied."""
        covs: dict[str, torch.Tensor] = {
            name: torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64,
                              device=layer.base.weight.device)
            for name, layer in self.pool.layers.items()}
        handles = []

        def hook(name):
            def record(module, args, output):
                x = args[0]
                if module.kind == "conv1x1":
                    x = x.movedim(1, -1)
                x = x.reshape(-1, x.shape[-1]).double()
                covs[name] = covs[name] + x.T @ x
            return record

        for name, layer in self.pool.layers.items():
            handles.append(layer.register_forward_hook(hook(name)))
        try:
            # a sum over samples: across ranks each takes its part, and the sums are reduced
            part = active().part(len(items))
            with local():
                self._embed(items, task, size, prefix, part)
        finally:
            for h in handles:
                h.remove()
        # normal tensors, not inference ones; across ranks each saw its part: summed
        return {name: all_reduce(c.clone()) for name, c in covs.items()}

    def _begin_task(self, task, ctx, prefix, extras):
        k = self.tasks_learned
        covs = self.input_covariances(task.train.items, prefix, k - 1 if k else None,
                                      ctx.batch_size)
        self.pool.begin_summed_task(derive_seed(self.seed, k, "units"))
        params = []
        residual = []
        for name, layer in self.pool.layers.items():
            memory = self.memory[name]
            A = design_down_projection(covs[name], memory, layer.rank) * self.options.a_scale
            A = A.to(layer.base.weight.dtype)
            layer.A_new = nn.Parameter(A, requires_grad=False)  # designed, never trained
            self.designed[name] = A.detach().clone()
            self.designed_against[name] = memory.clone()
            if memory.shape[1]:
                residual.append(float((A.double() @ memory).abs().max()))
            params.append(layer.B_new)
        if residual:
            extras["max_abs_A_dot_memory"] = max(residual)
        return params

    def _end_task(self, task, ctx, prefix, extras):
        super()._end_task(task, ctx, prefix, extras)  # the branch joins the pool, always on
        k = self.tasks_learned
        covs = self.input_covariances(task.train.items, prefix, k, ctx.batch_size)
        eps = self.threshold(k, ctx.num_tasks)
        for name in self.pool.layers:
            self.memory[name] = update_memory(covs[name], self.memory[name], eps)
        dims = [m.shape[1] for m in self.memory.values()]
        extras["memory_threshold"] = eps
        extras["memory_dims"] = {"min": min(dims), "max": max(dims),
                                 "mean": sum(dims) / len(dims)}

    def _trained_unit_parameters(self) -> int:
        return sum(layer.rank * layer.out_features for layer in self.pool.layers.values())

    # -- state: the memory is kept so a loaded model can go on learning -------------------------
    def state(self):
        tensors, meta = super().state()
        tensors.update({f"memory.{name}": m for name, m in self.memory.items()})
        return tensors, meta

    def load_state(self, tensors, meta) -> None:
        super().load_state(tensors, meta)
        for name, layer in self.pool.layers.items():
            if f"memory.{name}" in tensors:  # growth state: absent from a serving export
                self.memory[name] = tensors[f"memory.{name}"].to(layer.base.weight.device)
