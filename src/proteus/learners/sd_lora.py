"""SD-LoRA: scalable decoupled low-rank adaptation (Wu et al., ICLR 2025).

Every target layer's update is split into directions and magnitudes:

    W = W0 + scale * ( sum_{j<t} alpha_j * B_j A_j / n_j  +  s_t * B_t A_t )

For each task t:
  1. the directions of tasks j < t are frozen (their A_j, B_j never change again) and
     normalised by n_j; their magnitudes alpha_j stay learnable
  2. a new direction B_t A_t (B = 0) trains together with every alpha_j, the new direction's
     scale s_t and the head
  3. task t's direction (with s_t folded into B_t) joins the frozen ones
Predict: one model for every input (no component selection), argmax of the head over all
classes seen.

Defaults are the authors' code (WuYichen-97/SD-Lora-CL, ``backbone/lora.py``,
``models/sdlora.py``):
  * ``magnitude_sharing: global``: one magnitude alpha_j per old task, shared by every layer;
  * ``magnitude_init: 0.8``: every alpha_j restarts at 0.8 when a task begins (so the model at
    the start of task t is not exactly the model after t-1);
  * ``direction_norm: factors``: n_j = ||B_j||_F ||A_j||_F;
  * ``new_scale_init: 0.8``: the new direction's learnable scalar s_t;
  * ``a_init: kaiming``: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a = sqrt(5)), B = 0;
  * rank 10, SGD with momentum 0.9, lr 1e-2, constant rate, no gradient clipping, 20 epochs,
    batch 128, units on q and v (the backbone default).
The paper's form and this project's earlier choice are options: ``magnitude_sharing:
per-layer``, ``magnitude_init: null`` (each alpha_j carries over and the just-finished
direction's starts at n_{t-1}, so task t starts from exactly the model after t-1),
``direction_norm: product`` (n_j = ||B_j A_j||_F, as the paper writes), ``new_scale_init: null``
(no separate scalar: B absorbs it). ``magnitude_init: null`` needs per-layer magnitudes (a
shared magnitude cannot start at every layer's own norm).

Also: loss over the current task's classes with older head rows frozen (the authors' code trains
one growing fc with CE on the current task's logits) -- ``head_loss: current``. The
rank-reduction and knowledge-distillation variants (SD-LoRA-RR/-KD) are not included.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..lora import LowRankLayer
from ..seeding import derive_seed
from .base import LEARNERS
from .lowrank import LoRABaseline, LoRABaselineOptions


class SDLoRALayer(LowRankLayer):
    """A :class:`LowRankLayer` whose transfer weights are tied per old task: the weight of task
    j's units is magnitude_j / n_j, so task j contributes magnitude_j times its normalised
    direction. Stored tasks read frozen per-unit weights, as in the base class.

    ``configure`` sets the form (see the module docstring); the learner may hand every layer the
    same ``magnitude`` / ``new_scale`` parameters (global sharing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.magnitude: nn.Parameter | None = None  # one per finished task, while training
        self.new_scale: nn.Parameter | None = None  # the new direction's scalar, while training
        self.direction_norm, self.magnitude_init = "product", None
        self.new_scale_init, self.a_init = None, "normal"

    def configure(self, direction_norm: str, magnitude_init: float | None,
                  new_scale_init: float | None, a_init: str) -> None:
        self.direction_norm, self.magnitude_init = direction_norm, magnitude_init
        self.new_scale_init, self.a_init = new_scale_init, a_init

    def task_norms(self) -> torch.Tensor:
        """n_j of every finished task j: ||B_j A_j||_F ("product", without forming the dense
        product) or ||B_j||_F ||A_j||_F ("factors")."""
        norms = []
        for start, end in self.task_range:
            A, B = self.A_pool[start:end], self.B_pool[:, start:end]
            if self.direction_norm == "factors":
                norms.append(A.norm() * B.norm())
            else:
                norms.append(((B.T @ B) * (A @ A.T)).sum().clamp_min(0).sqrt())
        return torch.stack(norms) if norms else self.A_pool.new_zeros(0)

    def magnitudes(self, task: int) -> torch.Tensor:
        """The magnitudes stored task ``task`` gives to tasks 0..task-1 (its own is implicit)."""
        w = self.task_w[task]
        norms = self.task_norms()[:task]
        return torch.stack([w[self.task_range[j][0]] * norms[j] for j in range(task)]) \
            if task else w.new_zeros(0)

    def _unit_weights(self, magnitude: torch.Tensor) -> torch.Tensor:
        norms = self.task_norms().clamp_min(1e-12)  # a zero direction stays zero
        sizes = [end - start for start, end in self.task_range]
        per_task = magnitude / norms
        return per_task.repeat_interleave(torch.as_tensor(sizes, dtype=torch.long,
                                                                  device=per_task.device))

    def begin_task(self, generator: torch.Generator | None = None) -> None:
        super().begin_task(generator)
        self.w = None  # replaced by the tied magnitudes below
        ref = self.base.weight
        if self.a_init == "kaiming":  # nn.init.kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), ..)
            bound = 1.0 / math.sqrt(self.in_features)
            a = (torch.rand(self.rank, self.in_features, generator=generator,
                            dtype=ref.dtype) * 2 - 1) * bound
            self.A_new = nn.Parameter(a.to(ref.device))
        t = len(self.task_range)
        if not t:
            init = self.A_pool.new_zeros(0)
        elif self.magnitude_init is not None:
            init = self.A_pool.new_full((t,), float(self.magnitude_init))
        else:  # carry the magnitudes on; the last task's own units had weight 1 -> its norm
            carried = self.magnitudes(t - 1)
            last = self.task_norms()[t - 1:]
            init = torch.cat([carried, last]).detach().clone()
        self.magnitude = nn.Parameter(init)
        self.new_scale = (None if self.new_scale_init is None else
                          nn.Parameter(ref.new_full((1,), float(self.new_scale_init))))

    def factors(self, task):
        if task != "train":
            return super().factors(task)
        A = torch.cat([self.A_pool, self.A_new])
        B = torch.cat([self.B_pool, self.B_new], dim=1)
        new = (self.A_new.new_ones(self.rank) if self.new_scale is None
               else self.new_scale.expand(self.rank))
        coef = torch.cat([self._unit_weights(self.magnitude), new])
        return A, coef, B

    def end_task(self) -> None:
        with torch.no_grad():
            w = self._unit_weights(self.magnitude).detach().clone()
            if self.new_scale is not None:  # folded into B: the stored units have weight 1
                self.B_new = nn.Parameter(self.B_new.detach() * self.new_scale.detach())
        self.magnitude = self.new_scale = None
        self.w = nn.Parameter(w, requires_grad=False)  # what the base class stores for the task
        super().end_task()


class SDLoRAOptions(LoRABaselineOptions):
    rank: int = Field(10, gt=0)
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = Field(1e-2, gt=0)
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(128, gt=0)
    grad_clip: float = 0.0  # the authors' code does not clip
    magnitude_sharing: Literal["global", "per-layer"] = "global"
    magnitude_init: float | None = 0.8  # None: carry each magnitude over from the last task
    direction_norm: Literal["factors", "product"] = "factors"
    new_scale_init: float | None = 0.8  # None: no learnable scalar on the new direction
    a_init: Literal["kaiming", "normal"] = "kaiming"  # normal: N(0, init_std^2)

    @model_validator(mode="after")
    def _carry_needs_per_layer(self):
        if self.magnitude_init is None and self.magnitude_sharing == "global":
            raise ValueError("magnitude_init null (carry the magnitudes over) needs "
                             "magnitude_sharing: per-layer; a global magnitude cannot start at "
                             "every layer's own direction norm")
        return self


@LEARNERS.register("sd-lora", SDLoRAOptions,
                   "SD-LoRA: frozen normalised LoRA directions, learnable magnitudes, new LoRA")
class SDLoRA(LoRABaseline):
    options_model = SDLoRAOptions
    layer_cls = SDLoRALayer

    def __init__(self, options: SDLoRAOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        o = self.options
        for layer in self.pool.layers.values():
            layer.configure(o.direction_norm, o.magnitude_init, o.new_scale_init, o.a_init)

    def magnitudes(self) -> dict[str, list[float]]:
        """Per layer, the current model's magnitude of every earlier task's direction."""
        t = self.tasks_learned - 1
        return {name: [float(m) for m in layer.magnitudes(t)]
                for name, layer in self.pool.layers.items()} if t > 0 else {}

    def _begin_task(self, task, ctx, prefix, extras):
        self.pool.begin_task(derive_seed(self.seed, self.tasks_learned, "units"))
        layers = list(self.pool.layers.values())
        if self.options.magnitude_sharing == "global":
            # one parameter object in every layer: alpha_j and s_t are shared across layers
            for layer in layers[1:]:
                layer.magnitude, layer.new_scale = layers[0].magnitude, layers[0].new_scale
        params, seen = [], set()
        for layer in layers:
            for p in (layer.magnitude, layer.new_scale, layer.A_new, layer.B_new):
                if p is not None and p.numel() and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def _end_task(self, task, ctx, prefix, extras):
        super()._end_task(task, ctx, prefix, extras)
        if self.tasks_learned:  # (tasks_learned is still this task's index)
            mags = torch.cat([layer.magnitudes(self.tasks_learned)
                              for layer in self.pool.layers.values()])
            extras["magnitudes"] = {"min": float(mags.min()), "max": float(mags.max()),
                                    "mean": float(mags.mean())}

    def _trained_unit_parameters(self) -> int:
        o = self.options
        old_tasks = max(self.tasks_learned - 1, 0)  # magnitudes trained in the last task
        copies = 1 if o.magnitude_sharing == "global" else len(self.pool.layers)
        scalars = (old_tasks + (o.new_scale_init is not None)) * copies
        return super()._trained_unit_parameters() + scalars
