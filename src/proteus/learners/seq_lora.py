"""Sequential LoRA (the forgetting lower bound) and joint LoRA (the non-continual upper bound).

Neither is from one paper; both are the usual reference points of LoRA-based continual
fine-tuning (e.g. InfLoRA, Liang & Li, CVPR 2024; SD-LoRA, Wu et al., ICLR 2025, report both).
The low-rank units are PROTEUS's (``proteus.lora.LowRankPool``, same ``targets``, ``rank``,
``scale``, ``init_std``), trained with the same recipe and loop (``LowRankLearner._fit``: Adam,
``lr``, ``epochs``, ``batch_size``, gradient-norm clip ``grad_clip`` on the units, optional
``augment``), so the table compares methods, not training recipes. Choices where there is no
paper to follow [ours]:

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

from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import LabeledData, stack
from ..data.scenario import Task
from ..seeding import derive_seed
from .base import LEARNERS, Capabilities, Context, LearnerError, TaskOutcome
from .lowrank import LowRankLearner, LowRankOptions


class SeqLoRAOptions(LowRankOptions):
    pass


@LEARNERS.register("seq-lora", SeqLoRAOptions,
                   "one LoRA trained on task after task, growing head (forgetting lower bound)")
class SeqLoRA(LowRankLearner):
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
        return self.pool.begin_task(derive_seed(self.seed, k, "units"))

    def _grow_head(self, top: int, k: int) -> None:
        new = self._new_head(top, derive_seed(self.seed, k, "head"))
        if self.head is not None and not self.joint:  # keep what the old rows learned
            with torch.no_grad():
                old = self.head.out_features
                new.weight[:old] = self.head.weight
                new.bias[:old] = self.head.bias
        self.head = new

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
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
        loss = self._fit(units, self.head, data.items, data.labels, prefix,
                         derive_seed(self.seed, k, "fit"))
        self.num_classes = top
        self.tasks_learned += 1
        extras: dict[str, Any] = {"train_samples": len(data), "final_loss": loss}
        if self.joint:
            extras["tasks_in_training"] = len(self._kept)
        return TaskOutcome(extras=extras)

    def embedding(self, data: LabeledData, ctx: Context) -> np.ndarray:
        return self._embed(data.items, "train" if self._units_ready else None, ctx.batch_size,
                           self._prefix(data.items, ctx.batch_size))

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        h = self.embedding(data, ctx)
        with torch.inference_mode():
            logits = self.head(torch.as_tensor(h, device=self.backbone.device))
        return logits.float().cpu().numpy()

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
        units = self._trained_unit_parameters()
        head = sum(p.numel() for p in self.head.parameters()) if self.head is not None else 0
        counts["trained_per_task"] = units + head
        return counts


@LEARNERS.register("joint-lora", SeqLoRAOptions,
                   "fresh LoRA + head trained on all seen tasks' data (upper bound, not continual)")
class JointLoRA(SeqLoRA):
    """See the module docstring."""

    joint = True
    capabilities = Capabilities(
        grows_after_load=False,
        grow_note="joint-lora retrains on every earlier task's data, which a saved model does "
                  "not keep")

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        if len(self._kept) < self.tasks_learned:
            raise LearnerError(f"joint-lora cannot learn task {self.tasks_learned} here: "
                               f"{self.capabilities.grow_note}")
        return super().learn_task(task, ctx)

    def load_session_state(self, tensors, meta, done) -> None:
        # a resumed run still has the scenario: the kept data are its earlier tasks' data
        self._kept = [t.train for t in done]
