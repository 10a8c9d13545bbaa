"""What every low-rank learner shares: options, the unit pool on the backbone, the cached frozen
stages, the embedding helpers and the one training loop.

* :class:`LowRankOptions` / :class:`LowRankLearner`: the low-rank units (``targets``, ``rank``,
  ``scale``, ``init_std``) and the training recipe (Adam with ``lr``, ``epochs`` over
  ``batch_size`` batches, gradient-norm clip ``grad_clip``, optional ``augment``) used by PROTEUS
  and by every LoRA baseline, so that tables compare methods, not training recipes. The defaults
  are PROTEUS's; a learner overrides a field where its own default differs.
* :class:`LoRABaselineOptions` / :class:`UnitPool` / :class:`LoRABaseline`: what the three
  merged-LoRA baselines (o-lora, inflora, sd-lora) share on top: one backbone whose low-rank
  updates are summed over tasks, a growing linear head, the task loop with its hooks, saving.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..backbones.base import stage_cat, stage_take
from ..data.base import LabeledData, take
from ..data.scenario import Task
from ..lora import LowRankLayer, LowRankPool
from ..registry import Options
from ..dist import active, all_reduce, all_reduce_grads, sharded_rows
from ..seeding import RUN, derive_seed, generator
from .base import Context, Learner, TaskOutcome


#: largest per-sample frozen-stage output a run keeps for later evaluations
PREFIX_KEEP_BYTES = 64 * 1024


class TrainingOptions(Options):
    """The training recipe every gradient-trained learner shares (:meth:`LowRankLearner._fit`;
    PROTEUS's defaults): what prompt learners, which train no low-rank units, take alone."""

    epochs: int = Field(5, ge=0)
    # the training budget in optimiser steps per task (overrides epochs; the last epoch stops
    # part-way): one budget that every gradient-trained learner reads alike
    steps_per_task: int | None = Field(None, ge=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    grad_clip: float = 1.0
    # the units' learning rate is lr * unit_lr_scale, the head's lr (SLCA's slow learner: 0.01)
    unit_lr_scale: float = Field(1.0, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD's (Adam ignores it)
    # "cosine": the learning rate follows half a cosine from lr to 0 over the task's steps
    schedule: Literal["constant", "cosine"] = "constant"
    augment: bool = False  # RandomResizedCrop + flip; off caches the frozen stages below the units


class LowRankOptions(TrainingOptions):
    """The low-rank units and training options every low-rank learner shares (PROTEUS's names
    and defaults)."""

    targets: list[str] | None = None  # regexes over layer names; None = the backbone's default
    rank: int = Field(4, gt=0)
    scale: float = 0.1  # the PROTEUS authors' code scales the whole update by 0.1
    init_std: float = 0.01


class LowRankLearner(Learner):
    """A low-rank unit pool on the backbone, cached frozen stages, embedding helpers and the
    training loop (:meth:`_fit`).

    ``self.pool`` is built by :meth:`_build_pool` (a :class:`LowRankPool` with transfer weight
    ``alpha``, or None for no units); ``self.start`` is the first stage that sees an adapted
    layer (0 with ``augment``: augmented inputs cannot reuse cached stages).
    """

    options_model = LowRankOptions
    alpha = 0.0  # transfer weight over pool units; the baselines never use the transfer

    def __init__(self, options: LowRankOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.pool: LowRankPool | None = self._build_pool()
        # stages below the first adapted layer are frozen: their output can be computed once
        self.start = (backbone.first_stage(list(self.pool.layers))
                      if self.pool is not None and not options.augment else 0)
        self._channels_last = False  # the layout of the frozen-stage prefix (see _cached_prefix)
        self._curves: list[dict[str, Any]] = []  # fits since training_curves() was last called

    def training_curves(self) -> list[dict[str, Any]]:
        curves, self._curves = self._curves, []
        return curves

    def _build_pool(self) -> LowRankPool | None:
        o = self.options
        return LowRankPool(self.backbone, o.targets, o.rank, self.alpha, o.scale, o.init_std)

    def frozen_scope(self) -> contextlib.AbstractContextManager:
        return self.pool.disabled() if self.pool else contextlib.nullcontext()

    # -- embedding helpers ---------------------------------------------------------------
    def _batches(self, n: int, size: int):
        return (slice(i, min(i + size, n)) for i in range(0, n, size))

    def _prefix(self, items, size: int) -> torch.Tensor | None:
        """Output of the frozen stages below the first adapted layer (None when there are none)."""
        if self.start == 0:
            return None

        def compute(part: np.ndarray):
            chunk = take(items, part)
            with torch.inference_mode(), self.frozen_scope():
                return stage_cat([self.backbone.run_stages(self.backbone.preprocess(chunk[b]),
                                                           0, self.start)
                                  for b in self._batches(len(part), size)])

        return sharded_rows(len(items), compute)  # across ranks: each its part, gathered

    def _cached_prefix(self, data: LabeledData, ctx: Context,
                       new: torch.Tensor | None = None) -> torch.Tensor | None:
        """:meth:`_prefix` of ``data``, kept per sample id for the run where it is small (a CNN's
        low-resolution map: EfficientNet-Lite0 at 64 px keeps 5 KB a sample; a ViT's token
        sequence is not kept), so that every evaluation after the first runs only the adapted
        stages. ``new``: the prefix of all of ``data``, already computed (stored, returned)."""
        if self.start == 0:
            return None
        cache = ctx.caches.setdefault("prefix", {})
        ids = data.ids.tolist()
        if new is not None:
            missing, part = list(range(len(ids))), new
        else:
            missing = [i for i, sid in enumerate(ids) if sid not in cache]
            part = (self._prefix(take(data.items, np.asarray(missing)), ctx.batch_size)
                    if missing else None)
        if part is not None:
            if isinstance(part, dict) or part[0].numel() * part.element_size() > PREFIX_KEEP_BYTES:
                return part if len(missing) == len(ids) else self._prefix(data.items,
                                                                           ctx.batch_size)
            for j, i in enumerate(missing):
                cache[ids[i]] = part[j]
            # keep the backbone's memory layout: a CNN's maps come channels-last, and its
            # convolutions run ~1.5x slower on the plain layout that stacking rows gives
            self._channels_last = part.ndim == 4 and part.is_contiguous(
                memory_format=torch.channels_last)
        out = torch.stack([cache[sid] for sid in ids])
        if self._channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _embed(self, items, task: int | str | np.ndarray | None, size: int,
               prefix: torch.Tensor | None = None, index: np.ndarray | None = None) -> np.ndarray:
        """Embeddings by task ``task``'s backbone h_task ("train": the units being trained;
        None: the frozen backbone; an array: sample ``index[i]`` by stored task ``task[i]``,
        all in one batched forward)."""
        index = np.arange(len(items)) if index is None else index
        per_sample = isinstance(task, np.ndarray)
        # across ranks (while learning a task) each embeds its part of the rows; gathered
        return sharded_rows(len(index), lambda part: self._embed_rows(
            items, task[part] if per_sample else task, size, prefix, index[part]))

    def _embed_rows(self, items, task: int | str | np.ndarray | None, size: int,
                    prefix: torch.Tensor | None, index: np.ndarray) -> np.ndarray:
        per_sample = isinstance(task, np.ndarray)
        out = []
        scope = (self.pool.using(None if per_sample else task) if self.pool
                 else contextlib.nullcontext())
        with torch.inference_mode(), scope:
            for b in self._batches(len(index), size):
                rows = index[b]
                if per_sample:
                    self.pool.activate(torch.as_tensor(task[b], dtype=torch.long))
                if prefix is not None:
                    x = stage_take(prefix, rows)
                    out.append(self.backbone.run_stages(x, self.start))
                else:
                    out.append(self.backbone(self.backbone.preprocess(take(items, rows))))
        if not out:
            return np.zeros((0, self.backbone.embed_dim), dtype=np.float32)
        return torch.cat(out).float().cpu().numpy()

    # -- training ------------------------------------------------------------------------
    def _new_head(self, out_dim: int, seed: int) -> nn.Linear:
        """A linear head over the embedding, initialised from ``seed`` (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Linear(self.backbone.embed_dim, out_dim)
        return head.to(self.backbone.device)

    def _fit(self, params: list[nn.Parameter], head: nn.Module, items, targets: np.ndarray,
             prefix: torch.Tensor | None, seed: int,
             extra_loss: Callable[[], Iterable[torch.Tensor]] | None = None,
             clip_head: bool = False) -> float | None:
        """Train ``params`` + ``head`` with CE of ``head(features)`` on ``targets`` (head output
        positions), plus each term ``extra_loss()`` returns, added in order.

        ``params`` must be what the active units train (the pool on "train"). Adam with ``lr``
        over ``params`` and the head's parameters (``optimizer`` "sgd": SGD with ``momentum``;
        ``schedule`` "cosine": the rate anneals to 0 over the task's steps); the gradient norm
        is clipped at ``grad_clip`` over ``params`` (and the head's parameters too with
        ``clip_head``). One generator seeded
        with ``seed`` draws the epoch orders and, with ``augment``, the augmentations; without
        ``augment`` the batches come from ``prefix`` (the cached frozen stages) when there is
        one. Returns the mean loss of the last epoch (None: no epoch ran).
        """
        o = self.options
        gen = torch.Generator().manual_seed(seed)
        labels = torch.as_tensor(targets, dtype=torch.long, device=self.backbone.device)
        trained = [*params, *head.parameters()]
        clipped = trained if clip_head else params
        groups = ([{"params": trained}] if o.unit_lr_scale == 1.0 else
                  [{"params": params, "lr": o.lr * o.unit_lr_scale},
                   {"params": list(head.parameters())}])
        optimiser = (torch.optim.Adam(groups, lr=o.lr) if o.optimizer == "adam" else
                     torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum))
        n, last = len(labels), None
        group = active()
        # across ranks every rank draws the same epoch orders and takes its part of each batch;
        # augmentations come from a stream of its own (the batch's other rows are not its own)
        aug_gen = (generator(seed, RUN, "augment", group.rank) if group.enabled and o.augment
                   else gen)
        # per epoch: mean total loss, cross-entropy and each extra term (a training curve);
        # kept as the last fit's trace and handed out by training_curves()
        self.fit_trace: dict[str, Any] = {"loss": [], "ce": [], "terms": []}
        per_epoch = -(-n // o.batch_size)
        budget = o.steps_per_task
        epochs = o.epochs if budget is None else -(-budget // max(per_epoch, 1))
        total = per_epoch * epochs if budget is None else min(budget, per_epoch * epochs)
        schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(total, 1))
                    if o.schedule == "cosine" else None)
        steps = 0
        for _ in range(epochs):
            order, losses, ces, terms = torch.randperm(n, generator=gen), [], [], []
            for b in self._batches(n, o.batch_size):
                if budget is not None and steps == budget:
                    break
                steps += 1
                batch = order[b]
                rows = batch[group.part(len(batch))] if group.enabled else batch
                if not len(rows):  # a batch smaller than the group: nothing here this step
                    loss = sum(p.sum() * 0.0 for p in trained)
                    shared = 1.0 / group.world
                elif group.enabled:  # the part's share of the batch's mean; summed over ranks
                    loss = nn.functional.cross_entropy(head(self._batch_features(
                        prefix, items, rows, aug_gen)), labels[rows], reduction="sum") / len(batch)
                    shared = 1.0 / group.world  # each rank adds the shared terms once
                else:
                    loss = nn.functional.cross_entropy(head(self._batch_features(
                        prefix, items, rows, aug_gen)), labels[rows])
                    shared = 1.0
                ces.append(loss.detach())
                step_terms = []
                if extra_loss is not None:
                    for term in extra_loss():
                        loss = loss + shared * term
                        step_terms.append(term.detach())
                terms.append(step_terms)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if group.enabled:
                    all_reduce_grads(trained)
                if o.grad_clip:
                    torch.nn.utils.clip_grad_norm_(clipped, o.grad_clip)
                optimiser.step()
                if schedule is not None:
                    schedule.step()
                # Autocast keeps the bf16 copy of every trainable leaf it casts until the
                # outermost autocast context exits, and the engine holds one around the whole
                # task: without this every step would run the first step's head weights.
                torch.clear_autocast_cache()
                losses.append(loss.detach())
            if losses:
                # across ranks each step's loss is the sum of the ranks' shares: one all-reduce
                # an epoch (the identity alone), not one a step
                last = float(all_reduce(torch.stack(losses)).mean())
                self.fit_trace["loss"].append(last)
                self.fit_trace["ce"].append(float(all_reduce(torch.stack(ces)).mean()))
                self.fit_trace["terms"].append([float(torch.stack(t).mean())
                                                for t in zip(*terms)] if terms[0] else [])
        self.fit_trace["steps"] = steps
        self._curves.append(self.fit_trace)  # a new _fit starts a new dict: this one stays
        return last

    def _batch_features(self, prefix: torch.Tensor | None, items, rows: torch.Tensor,
                        gen: torch.Generator) -> torch.Tensor:
        """Features of training rows ``rows`` through the adapted stages."""
        if prefix is not None:
            x = stage_take(prefix, rows)  # indexing copies: the cache stays intact
        else:
            x = self.backbone.preprocess(take(items, rows.numpy()), train=self.options.augment,
                                         generator=gen)
        return self.backbone.run_stages(x, self.start)

    def _trained_unit_parameters(self) -> int:
        """Trained unit parameters of one task (A_new, B_new; no transfer weights)."""
        return sum(layer.rank * (layer.in_features + layer.out_features)
                   for layer in self.pool.layers.values())


# -- shared by the merged-LoRA baselines (o-lora, inflora, sd-lora) ----------------------------
class LoRABaselineOptions(LowRankOptions):
    # 1.0: the baselines' own code adds B A x unscaled (PROTEUS's 0.1 is its authors' choice)
    scale: float = 1.0
    # "current": CE over the current task's classes only, older rows frozen (the InfLoRA and
    # SD-LoRA code: one head per task); "seen": CE over every class seen so far, every row trains
    head_loss: Literal["seen", "current"] = "current"


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


class _HeadRows(nn.Module):
    """The growing head (weight: class x embed, bias) as trainable copies; with ``rows``, the
    logits are those of the given classes only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())
        self.rows = rows

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return feats @ self.weight.T + self.bias
        return feats @ self.weight[self.rows].T + self.bias[self.rows]


class LoRABaseline(LowRankLearner):
    """One backbone whose low-rank updates are summed over tasks + a growing linear head.

    Subclasses set up a task's units in :meth:`_begin_task` (returning the trainable unit
    parameters), may add loss terms in :meth:`_penalty`, and finish in :meth:`_end_task`.
    """

    options_model = LoRABaselineOptions
    layer_cls: type[LowRankLayer] = LowRankLayer

    def __init__(self, options: LoRABaselineOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        device = backbone.device
        self.head_w = torch.zeros(0, backbone.embed_dim, device=device)  # class x embed
        self.head_b = torch.zeros(0, device=device)
        self.task_classes: list[list[int]] = []

    def _build_pool(self) -> UnitPool:
        o = self.options
        return UnitPool(self.backbone, self._targets(), o.rank, o.scale, o.init_std,
                        self.layer_cls)

    def _targets(self) -> list[str] | None:
        """Where the units go: the ``targets`` option (None: the backbone's default)."""
        return self.options.targets

    # -- hooks ---------------------------------------------------------------------------------
    def _begin_task(self, task: Task, ctx: Context, prefix: torch.Tensor | None,
                    extras: dict[str, Any]) -> list[nn.Parameter]:
        raise NotImplementedError

    def _penalty(self) -> torch.Tensor | None:
        """One term added to each batch's loss (None: none)."""
        return None

    def _end_task(self, task: Task, ctx: Context, prefix: torch.Tensor | None,
                  extras: dict[str, Any]) -> None:
        self.pool.end_task()

    # -- learning ------------------------------------------------------------------------------
    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        t0 = time.perf_counter()
        prefix = self._prefix(task.train.items, ctx.batch_size)
        extras: dict[str, Any] = {}
        params = self._begin_task(task, ctx, prefix, extras)
        self._grow_head(task)
        self._train(task, prefix, params)
        self._end_task(task, ctx, prefix, extras)
        self.task_classes.append(list(task.classes))
        self.num_classes = len(self.head_b)
        self.tasks_learned += 1
        return TaskOutcome(timing={"train_units_s": time.perf_counter() - t0}, extras=extras)

    def _grow_head(self, task: Task) -> None:
        top = max(task.classes) + 1
        old = len(self.head_b)
        if top <= old:
            return
        d = self.backbone.embed_dim
        gen = generator(self.seed, self.tasks_learned, "head-rows")
        bound = 1.0 / np.sqrt(d)  # nn.Linear's default range
        rows = (torch.rand(top - old, d, generator=gen) * 2 - 1) * bound
        self.head_w = torch.cat([self.head_w, rows.to(self.head_w.device)])
        self.head_b = torch.cat([self.head_b, self.head_b.new_zeros(top - old)])

    def _train(self, task: Task, prefix: torch.Tensor | None,
               params: list[nn.Parameter]) -> None:
        """The units + the whole head (every row, clipped with the units), CE over every seen
        class ("seen") or over the current task's classes, other rows kept ("current")."""
        device = self.head_w.device
        current = self.options.head_loss == "current"
        classes = torch.as_tensor(task.classes, device=device)
        head = _HeadRows(self.head_w, self.head_b, classes if current else None)
        labels = task.train.labels
        targets = np.searchsorted(np.asarray(task.classes), labels) if current else labels

        def penalty() -> list[torch.Tensor]:
            term = self._penalty()
            return [] if term is None else [term]

        self._fit(params, head, task.train.items, targets, prefix,
                  derive_seed(self.seed, self.tasks_learned, "fit"), extra_loss=penalty,
                  clip_head=True)
        W, b = head.weight, head.bias
        if current:  # other tasks' rows were outside the loss; keep them bit for bit
            others = torch.ones(len(self.head_b), dtype=torch.bool, device=device)
            others[classes] = False
            with torch.no_grad():
                W[others] = self.head_w[others]
                b[others] = self.head_b[others]
        self.head_w, self.head_b = W.detach(), b.detach()

    # -- prediction ----------------------------------------------------------------------------
    def embedding(self, data: LabeledData, ctx: Context) -> np.ndarray:
        """The merged backbone after the last task learned (every input alike)."""
        return self._embed(data.items, self.tasks_learned - 1, ctx.batch_size,
                           self._prefix(data.items, ctx.batch_size))

    def logits(self, data: LabeledData, ctx: Context) -> torch.Tensor:
        h = torch.as_tensor(self.embedding(data, ctx), device=self.head_w.device)
        return h @ self.head_w.T + self.head_b

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        if self.tasks_learned == 0:
            return np.zeros((len(data), max(self.num_classes, 1)), dtype=np.float32)
        return self.logits(data, ctx).float().cpu().numpy()

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
