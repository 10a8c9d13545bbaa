"""SD-LoRA: scalable decoupled low-rank adaptation (Wu et al., ICLR 2025).

Every target layer's update is split into directions and magnitudes:

    W = W0 + scale * ( sum_{j<t} alpha_j * B_j A_j / ||B_j A_j||_F  +  B_t A_t )

For each task t:
  1. the directions of tasks j < t are frozen (their A_j, B_j never change again) and
     normalised to unit Frobenius norm; their magnitudes alpha_j (one scalar per old task per
     layer) stay learnable
  2. a new direction B_t A_t (A ~ N(0, init_std^2), B = 0) trains together with every alpha_j
     and the head
  3. task t's direction joins the frozen ones
Predict: one model for every input (no component selection), argmax of the head over all
classes seen.

Choices where the paper is silent or the code differs:
  * alpha_j starts each task where the last task left it, and the just-finished direction's
    magnitude starts at ||B_{t-1} A_{t-1}||_F, so the model at the start of task t is exactly
    the model after task t-1 [ours; the authors' code re-initialises every magnitude to 0.8].
  * One magnitude per old task *per layer*; the authors' code shares one per task across layers.
  * Directions are normalised by ||B A||_F as the paper writes (the code divides by
    ||B||_F ||A||_F); the new direction has no separate learnable scalar (B absorbs it).
  * Loss over the current task's classes with older head rows frozen (the authors' code, built
    on InfLoRA's, trains one head per task) -- ``head_loss: current``.
  * The rank-reduction and knowledge-distillation variants (SD-LoRA-RR/-KD) are not included.
"""

from __future__ import annotations


import torch
from torch import nn

from ..lora import LowRankLayer
from ..seeding import derive_seed
from .base import LEARNERS
from .lowrank import LoRABaseline, LoRABaselineOptions


class SDLoRALayer(LowRankLayer):
    """A :class:`LowRankLayer` whose transfer weights are tied per old task: the weight of task
    j's units is magnitude_j / ||B_j A_j||_F, so task j contributes magnitude_j times its unit
    direction. Stored tasks read frozen per-unit weights, as in the base class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.magnitude: nn.Parameter | None = None  # one per finished task, while training

    def task_norms(self) -> torch.Tensor:
        """||B_j A_j||_F of every finished task j, without forming the dense product."""
        norms = []
        for start, end in self.task_range:
            A, B = self.A_pool[start:end], self.B_pool[:, start:end]
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
        t = len(self.task_range)
        if t:
            # carry the magnitudes on; the last task's own units had weight 1 -> its norm
            carried = self.magnitudes(t - 1)
            last = self.task_norms()[t - 1:]
            init = torch.cat([carried, last]).detach().clone()
        else:
            init = self.A_pool.new_zeros(0)
        self.magnitude = nn.Parameter(init)

    def factors(self, task):
        if task != "train":
            return super().factors(task)
        A = torch.cat([self.A_pool, self.A_new])
        B = torch.cat([self.B_pool, self.B_new], dim=1)
        coef = torch.cat([self._unit_weights(self.magnitude), self.A_new.new_ones(self.rank)])
        return A, coef, B

    def end_task(self) -> None:
        with torch.no_grad():
            w = self._unit_weights(self.magnitude).detach().clone()
        self.magnitude = None
        self.w = nn.Parameter(w, requires_grad=False)  # what the base class stores for the task
        super().end_task()


class SDLoRAOptions(LoRABaselineOptions):
    pass


@LEARNERS.register("sd-lora", SDLoRAOptions,
                   "SD-LoRA: frozen normalised LoRA directions, learnable magnitudes, new LoRA")
class SDLoRA(LoRABaseline):
    options_model = SDLoRAOptions
    layer_cls = SDLoRALayer

    def magnitudes(self) -> dict[str, list[float]]:
        """Per layer, the current model's magnitude of every earlier task's direction."""
        t = self.tasks_learned - 1
        return {name: [float(m) for m in layer.magnitudes(t)]
                for name, layer in self.pool.layers.items()} if t > 0 else {}

    def _begin_task(self, task, ctx, prefix, extras):
        self.pool.begin_task(derive_seed(self.seed, self.tasks_learned, "units"))
        return [p for layer in self.pool.layers.values()
                for p in (layer.magnitude, layer.A_new, layer.B_new) if p.numel()]

    def _end_task(self, task, ctx, prefix, extras):
        super()._end_task(task, ctx, prefix, extras)
        if self.tasks_learned:  # (tasks_learned is still this task's index)
            mags = torch.cat([layer.magnitudes(self.tasks_learned)
                              for layer in self.pool.layers.values()])
            extras["magnitudes"] = {"min": float(mags.min()), "max": float(mags.max()),
                                    "mean": float(mags.mean())}

    def _trained_unit_parameters(self) -> int:
        old_tasks = max(self.tasks_learned - 1, 0)  # magnitudes trained in the last task
        return super()._trained_unit_parameters() + len(self.pool.layers) * old_tasks
