"""Sequential LoRA (the forgetting lower bound) and joint LoRA (the non-continual upper bound).

Neither is from one paper; both are the usual reference points of LoRA-based continual
fine-tuning (e.g. InfLoRA, Liang & Li, CVPR 2024; SD-LoRA, Wu et al., ICLR 2025, report both).
The low-rank units are PROTEUS's (``proteus.lora.LowRankPool``, same ``targets``, ``rank``,
``scale``, ``init_std``), trained with the same recipe (Adam, ``lr``, ``epochs``, ``batch_size``,
gradient-norm clip ``grad_clip`` on the units, optional ``augment``), so the table compares
methods, not training recipes. Choices where there is no paper to follow [ours]:

``seq-lora``
    One set of r units per adapted layer, created once (``begin_task`` on the first task and
    never ``end_task``: the pool stays empty and the same ``A_new``/``B_new`` go on training on
    task after task). The head is one linear layer over every class seen so far; it grows when a
    task brings classes (old rows are kept, new rows freshly initialised) and is trained with
    cross-entropy over *all* seen classes' logits on the current task's data only. Nothing
    protects old tasks: no replay, no regularisation, no logit masking.

``joint-lora``
    Keeps the training data of every task seen so far (the point of an upper bound) and, after
    each task, trains *fresh* units and a *fresh* head over all seen classes on the union, with
    the same number of epochs over the union. ``extras["train_samples"]`` is the size of that
    union. The kept data are not part of the saved state: a reloaded model predicts, but does
    not go on learning jointly.

Both predict by argmax of the head over all seen classes on the adapted embedding.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..data.base import LabeledData, stack, take
from ..data.scenario import Task
from ..lora import LowRankPool
from ..registry import Options
from .base import LEARNERS, Context, Learner, Prediction
from .proteus import Proteus


class LoRAOptions(Options):
    """The low-rank units and training options every LoRA baseline shares (ProteusOptions' names
    and defaults)."""

    targets: list[str] | None = None  # regexes over layer names; None = the backbone's default
    rank: int = Field(4, gt=0)
    scale: float = 0.1
    init_std: float = 0.01
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    grad_clip: float = 1.0
    augment: bool = False  # RandomResizedCrop + flip; off caches the frozen stages below the units


class LoRALearner(Learner):
    """Common machinery: a LowRankPool on the backbone, cached frozen stages, a CE training loop.

    The embedding helpers are PROTEUS's own (``_batches``, ``_prefix``, ``_embed``), reused as is.
    """

    options_model = LoRAOptions
    alpha = 0.0  # transfer weight over pool units; these baselines never use the transfer

    def __init__(self, options: LoRAOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        o = options
        self.pool = LowRankPool(backbone, o.targets, o.rank, self.alpha, o.scale, o.init_std)
        self.start = backbone.first_stage(list(self.pool.layers)) if not o.augment else 0

    def frozen_scope(self) -> contextlib.AbstractContextManager:
        return self.pool.disabled()

    _batches = Proteus._batches
    _prefix = Proteus._prefix
    _embed = Proteus._embed

    def _unit_count(self) -> int:
        """Trained unit parameters of one task (A_new, B_new; the transfer weights are unused)."""
        return sum(layer.rank * (layer.in_features + layer.out_features)
                   for layer in self.pool.layers.values())

    def _new_head(self, out_dim: int, seed: int) -> nn.Linear:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Linear(self.backbone.embed_dim, out_dim)
        return head.to(self.backbone.device)

    def _fit(self, units: list[nn.Parameter], head: nn.Module, items, targets: np.ndarray,
             prefix: torch.Tensor | None, seed: int) -> float | None:
        """Train ``units`` + ``head`` with CE on ``targets`` (head output positions); the units
        must be the pool's active ones. Returns the mean loss of the last epoch (None: none)."""
        o = self.options
        gen = torch.Generator().manual_seed(seed)
        labels = torch.as_tensor(targets, dtype=torch.long)
        optimiser = torch.optim.Adam([*units, *head.parameters()], lr=o.lr)
        n, last = len(labels), None
        for _ in range(o.epochs):
            order, losses = torch.randperm(n, generator=gen), []
            for b in self._batches(n, o.batch_size):
                rows = order[b]
                if prefix is not None:
                    x = prefix[rows].clone()
                else:
                    x = self.backbone.preprocess(take(items, rows.numpy()), train=o.augment,
                                                 generator=gen)
                feats = self.backbone.run_stages(x, self.start)
                loss = nn.functional.cross_entropy(head(feats), labels[rows].to(feats.device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if o.grad_clip:
                    torch.nn.utils.clip_grad_norm_(units, o.grad_clip)
                optimiser.step()
                losses.append(loss.detach())
            last = float(torch.stack(losses).mean()) if losses else last
        return last


class SeqLoRAOptions(LoRAOptions):
    pass


@LEARNERS.register("seq-lora", SeqLoRAOptions,
                   "one LoRA trained on task after task, growing head (forgetting lower bound)")
class SeqLoRA(LoRALearner):
    """See the module docstring."""

    options_model = SeqLoRAOptions
    joint = False

    def __init__(self, options: SeqLoRAOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.head: nn.Linear | None = None
        self._units_ready = False
        self._kept: list[LabeledData] = []  # joint only: every task's training data

    def _begin_units(self, k: int) -> list[nn.Parameter]:
        """Fresh units (pool active on them, "train"); the pool itself never stores a task."""
        self._units_ready = True
        return self.pool.begin_task(self.seed * 1000 + k)

    def _grow_head(self, top: int, k: int) -> None:
        new = self._new_head(top, self.seed * 1000 + k)
        if self.head is not None and not self.joint:  # keep what the old rows learned
            with torch.no_grad():
                old = self.head.out_features
                new.weight[:old] = self.head.weight
                new.bias[:old] = self.head.bias
        self.head = new

    def learn_task(self, task: Task, ctx: Context) -> dict[str, Any]:
        k = self.tasks_learned
        top = max(max(task.classes) + 1, self.num_classes)
        if self.joint:
            self._kept.append(task.train)
            data = stack(self._kept)
            units = self._begin_units(k)  # fresh units every time
        else:
            data = task.train
            units = self.pool.parameters() if self._units_ready else self._begin_units(k)
        self._grow_head(top, k)
        prefix = self._prefix(data.items, ctx.batch_size)
        loss = self._fit(units, self.head, data.items, data.labels, prefix, self.seed * 1000 + k)
        self.num_classes = top
        self.tasks_learned += 1
        extras: dict[str, Any] = {"train_samples": len(data), "final_loss": loss}
        if self.joint:
            extras["tasks_in_training"] = len(self._kept)
        return extras

    def predict(self, data: LabeledData, ctx: Context) -> Prediction:
        h = self._embed(data.items, "train" if self._units_ready else None, ctx.batch_size,
                        self._prefix(data.items, ctx.batch_size))
        with torch.inference_mode():
            logits = self.head(torch.as_tensor(h, device=self.backbone.device))
        return Prediction(classes=logits.argmax(1).cpu().numpy().astype(np.int64))

    # -- state ---------------------------------------------------------------------------
    def state(self):
        tensors = ({} if self.head is None else
                   {"head.weight": self.head.weight.detach(), "head.bias": self.head.bias.detach()})
        if self._units_ready:
            for name, layer in self.pool.layers.items():
                tensors[f"lora.{name}.A"] = layer.A_new.detach()
                tensors[f"lora.{name}.B"] = layer.B_new.detach()
        meta = {"num_classes": self.num_classes, "tasks_learned": self.tasks_learned,
                "layers": sorted(self.pool.layers) if self._units_ready else []}
        return tensors, meta

    def load_state(self, tensors, meta) -> None:
        self.num_classes = int(meta["num_classes"])
        self.tasks_learned = int(meta["tasks_learned"])
        device = self.backbone.device
        self.head = None
        if "head.weight" in tensors:
            self.head = self._new_head(self.num_classes, self.seed)
            with torch.no_grad():
                self.head.weight.copy_(tensors["head.weight"].to(device))
                self.head.bias.copy_(tensors["head.bias"].to(device))
        if meta["layers"]:
            if sorted(self.pool.layers) != sorted(meta["layers"]):
                raise ValueError("saved low-rank layers do not match this backbone's targets")
            self._begin_units(self.tasks_learned)
            with torch.no_grad():
                for name, layer in self.pool.layers.items():
                    layer.A_new.copy_(tensors[f"lora.{name}.A"].to(device))
                    layer.B_new.copy_(tensors[f"lora.{name}.B"].to(device))

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        units = self._unit_count()
        head = sum(p.numel() for p in self.head.parameters()) if self.head is not None else 0
        counts["trained_per_task"] = units + head
        return counts


@LEARNERS.register("joint-lora", SeqLoRAOptions,
                   "fresh LoRA + head trained on all seen tasks' data (upper bound, not continual)")
class JointLoRA(SeqLoRA):
    """See the module docstring."""

    joint = True
