"""O-LoRA: orthogonal subspace learning (Wang et al., "Orthogonal Subspace Learning for Language
Model Continual Learning", Findings of EMNLP 2023), in the class-incremental setting.

For each task t:
  1. new low-rank units (A_t, B_t) on every target layer; A_t ~ N(0, init_std^2), B_t = 0
  2. train them with the linear head: CE over every class seen so far
       + lambda_orth * sum_layers ||A_old A_t^T||_F^2   (A_old: all earlier tasks' A, frozen)
       + lambda_l2 * sum_layers (||A_t||_F + ||B_t||_F)  (the paper's lambda_2; 0 by default)
  3. freeze them: every task's units stay active, the model is W0 + scale * sum_t B_t A_t
Predict: one model for every input (no task id), argmax of the head over all classes seen.

Where the paper is silent (it fine-tunes generative language models, whose "head" is the
vocabulary): the classifier is one linear layer that grows by the new task's classes and trains
on all seen classes' logits with the current task's data [ours: how a grown head meets CE]; the
orthogonality term is the squared Frobenius norm the paper writes (the authors' code sums
absolute values) [paper over code]; lambda_orth 0.5 and lambda_l2 0 are the authors' defaults.

This file also holds what the three merged-LoRA baselines share (o-lora, inflora, sd-lora): the
options, the task loop with a growing linear head, saving, and a unit pool built from a chosen
layer class. [That shared part belongs in its own module; it lives here because each baseline
had to be one file.]
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..data.base import LabeledData, take
from ..data.scenario import Task
from ..lora import LowRankLayer, LowRankPool
from ..registry import Options
from .base import LEARNERS, Context, Learner, Prediction
from .proteus import Proteus


# -- shared by the merged-LoRA baselines -------------------------------------------------------
class LoRABaselineOptions(Options):
    targets: list[str] | None = None  # regexes over layer names; None = the backbone's default
    rank: int = Field(4, gt=0)
    # 1.0: the baselines' own code adds B A x unscaled (PROTEUS's 0.1 is its authors' choice)
    scale: float = 1.0
    init_std: float = 0.01
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    grad_clip: float = 1.0
    augment: bool = False  # RandomResizedCrop + flip; off caches the frozen stages below the units
    # "seen": CE over every class seen so far, every head row trains; "current": CE over the
    # current task's classes only, older rows frozen (InfLoRA / SD-LoRA code: one head per task)
    head_loss: Literal["seen", "current"] = "seen"


class UnitPool(LowRankPool):
    """A :class:`LowRankPool` whose layers are ``layer_cls`` and whose stored units all count
    fully (alpha 1): with every stored transfer weight at 1, task t's update is the sum of the
    updates of tasks 0..t, i.e. one merged model."""

    def __init__(self, backbone: nn.Module, targets: list[str] | None, rank: int, scale: float,
                 init_std: float, layer_cls: type[LowRankLayer] = LowRankLayer):
        self.backbone = backbone
        self.layers: dict[str, LowRankLayer] = {}
        for name, module in backbone.target_layers(targets).items():
            layer = layer_cls(module, rank, 1.0, scale, init_std)
            backbone.set_submodule(name, layer)
            self.layers[name] = layer

    def begin_summed_task(self, seed: int) -> None:
        """New units for every layer; earlier units fixed at weight 1 (not trained)."""
        self.begin_task(seed)
        for layer in self.layers.values():
            layer.w.requires_grad_(False)
            with torch.no_grad():
                layer.w.fill_(1.0)


class LoRABaseline(Learner):
    """One backbone whose low-rank updates are summed over tasks + a growing linear head.

    Subclasses set up a task's units in :meth:`_begin_task` (returning the trainable unit
    parameters), may add a :meth:`_penalty`, and finish in :meth:`_end_task`.
    """

    options_model = LoRABaselineOptions
    layer_cls: type[LowRankLayer] = LowRankLayer

    def __init__(self, options: LoRABaselineOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        o = options
        self.pool = UnitPool(backbone, o.targets, o.rank, o.scale, o.init_std, self.layer_cls)
        self.start = 0 if o.augment else backbone.first_stage(list(self.pool.layers))
        device = backbone.device
        self.head_w = torch.zeros(0, backbone.embed_dim, device=device)  # class x embed
        self.head_b = torch.zeros(0, device=device)
        self.task_classes: list[list[int]] = []

    # the frozen-stage cache and embedding helpers are PROTEUS's (they read pool/start/backbone)
    frozen_scope = Proteus.frozen_scope
    _batches = Proteus._batches
    _prefix = Proteus._prefix
    _embed = Proteus._embed

    # -- hooks ---------------------------------------------------------------------------------
    def _begin_task(self, task: Task, ctx: Context, prefix: torch.Tensor | None,
                    extras: dict[str, Any]) -> list[nn.Parameter]:
        raise NotImplementedError

    def _penalty(self) -> torch.Tensor | None:
        return None

    def _end_task(self, task: Task, ctx: Context, prefix: torch.Tensor | None,
                  extras: dict[str, Any]) -> None:
        self.pool.end_task()

    def _trained_unit_parameters(self) -> int:
        return sum(layer.rank * (layer.in_features + layer.out_features)
                   for layer in self.pool.layers.values())

    # -- learning ------------------------------------------------------------------------------
    def learn_task(self, task: Task, ctx: Context) -> dict[str, Any]:
        t0 = time.perf_counter()
        prefix = self._prefix(task.train.items, ctx.batch_size)
        extras: dict[str, Any] = {}
        params = self._begin_task(task, ctx, prefix, extras)
        self._grow_head(task)
        self._train(task, prefix, params, extras)
        self._end_task(task, ctx, prefix, extras)
        self.task_classes.append(list(task.classes))
        self.num_classes = len(self.head_b)
        self.tasks_learned += 1
        extras["timing"] = {"train_units_s": time.perf_counter() - t0}
        return extras

    def _grow_head(self, task: Task) -> None:
        top = max(task.classes) + 1
        old = len(self.head_b)
        if top <= old:
            return
        d = self.backbone.embed_dim
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.tasks_learned)
        bound = 1.0 / np.sqrt(d)  # nn.Linear's default range
        rows = (torch.rand(top - old, d, generator=gen) * 2 - 1) * bound
        self.head_w = torch.cat([self.head_w, rows.to(self.head_w.device)])
        self.head_b = torch.cat([self.head_b, self.head_b.new_zeros(top - old)])

    def _train(self, task: Task, prefix: torch.Tensor | None, params: list[nn.Parameter],
               extras: dict[str, Any]) -> None:
        o = self.options
        k = self.tasks_learned
        device = self.head_w.device
        W, b = nn.Parameter(self.head_w.clone()), nn.Parameter(self.head_b.clone())
        classes = torch.as_tensor(task.classes, device=device)
        labels = torch.as_tensor(task.train.labels, device=device)
        current = o.head_loss == "current"
        targets = torch.searchsorted(classes, labels) if current else labels
        gen = torch.Generator().manual_seed(self.seed * 1000 + k)
        optimiser = torch.optim.Adam([*params, W, b], lr=o.lr)
        trained = [*params, W, b]
        items, n = task.train.items, len(labels)
        for _ in range(o.epochs):
            order = torch.randperm(n, generator=gen)
            for rows in (order[s] for s in self._batches(n, o.batch_size)):
                if prefix is not None:
                    x = prefix[rows].clone()
                else:
                    x = self.backbone.preprocess(take(items, rows.numpy()), train=o.augment,
                                                 generator=gen)
                feats = self.backbone.run_stages(x, self.start)
                logits = (feats @ W[classes].T + b[classes]) if current else feats @ W.T + b
                loss = nn.functional.cross_entropy(logits, targets[rows.to(device)])
                penalty = self._penalty()
                if penalty is not None:
                    loss = loss + penalty
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if o.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trained, o.grad_clip)
                optimiser.step()
        if current:  # other tasks' rows were outside the loss; keep them bit for bit
            others = torch.ones(len(self.head_b), dtype=torch.bool, device=device)
            others[classes] = False
            with torch.no_grad():
                W[others] = self.head_w[others]
                b[others] = self.head_b[others]
        self.head_w, self.head_b = W.detach(), b.detach()

    # -- prediction ----------------------------------------------------------------------------
    def logits(self, data: LabeledData, ctx: Context) -> torch.Tensor:
        prefix = self._prefix(data.items, ctx.batch_size)
        h = self._embed(data.items, self.tasks_learned - 1, ctx.batch_size, prefix)
        h = torch.as_tensor(h, device=self.head_w.device)
        return h @ self.head_w.T + self.head_b

    def predict(self, data: LabeledData, ctx: Context) -> Prediction:
        if self.tasks_learned == 0:
            return Prediction(classes=np.zeros(len(data), dtype=np.int64))
        return Prediction(classes=self.logits(data, ctx).argmax(1).cpu().numpy())

    # -- state ---------------------------------------------------------------------------------
    def state(self):
        tensors, lora_meta = self.pool.state()
        tensors = {**tensors, "head.weight": self.head_w, "head.bias": self.head_b}
        meta = {"tasks_learned": self.tasks_learned, "num_classes": self.num_classes,
                "task_classes": self.task_classes, "lora": lora_meta}
        return tensors, meta

    def load_state(self, tensors, meta) -> None:
        device = self.backbone.device
        self.tasks_learned = int(meta["tasks_learned"])
        self.num_classes = int(meta["num_classes"])
        self.task_classes = [list(c) for c in meta["task_classes"]]
        self.head_w = tensors["head.weight"].to(device)
        self.head_b = tensors["head.bias"].to(device)
        self.pool.load_state(tensors, meta["lora"])

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        if self.task_classes:
            rows = (len(self.task_classes[-1]) if self.options.head_loss == "current"
                    else self.num_classes)
            counts["trained_per_task"] = (self._trained_unit_parameters()
                                          + rows * (self.backbone.embed_dim + 1))
        return counts


# -- O-LoRA ------------------------------------------------------------------------------------
class OLoRAOptions(LoRABaselineOptions):
    lambda_orth: float = Field(0.5, ge=0)  # the paper's lambda_1
    lambda_l2: float = Field(0.0, ge=0)  # the paper's lambda_2 on the new units


@LEARNERS.register("o-lora", OLoRAOptions,
                   "O-LoRA: a new LoRA per task, orthogonal to earlier tasks' A; all summed")
class OLoRA(LoRABaseline):
    options_model = OLoRAOptions

    def orthogonality(self) -> torch.Tensor:
        """sum over layers of ||A_old A_new^T||_F^2 (the pool's penalty with no transfer term)."""
        return self.pool.orthogonality()

    def _begin_task(self, task, ctx, prefix, extras):
        self.pool.begin_summed_task(self.seed * 1000 + self.tasks_learned)
        if self.tasks_learned:
            with torch.no_grad():
                extras["orth_penalty_start"] = float(self.orthogonality())
        return [p for layer in self.pool.layers.values() for p in (layer.A_new, layer.B_new)]

    def _penalty(self):
        o = self.options
        terms = []
        if o.lambda_orth and self.tasks_learned:
            terms.append(o.lambda_orth * self.orthogonality())
        if o.lambda_l2:
            terms.append(o.lambda_l2 * sum(layer.A_new.norm() + layer.B_new.norm()
                                           for layer in self.pool.layers.values()))
        return sum(terms) if terms else None

    def _end_task(self, task, ctx, prefix, extras):
        if self.tasks_learned:
            with torch.no_grad():
                extras["orth_penalty_end"] = float(self.orthogonality())
        super()._end_task(task, ctx, prefix, extras)
