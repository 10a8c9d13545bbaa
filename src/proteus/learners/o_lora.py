"""O-LoRA: orthogonal subspace learning (Wang et al., "Orthogonal Subspace Learning for Language
Model Continual Learning", Findings of EMNLP 2023), in the class-incremental setting.

For each task t:
  1. new low-rank units (A_t, B_t) on every target layer; A_t ~ N(0, init_std^2), B_t = 0
  2. train them with the linear head: CE over the current task's classes (older rows frozen)
       + lambda_orth * sum_layers sum_ij |(A_old A_t^T)_ij|   (A_old: all earlier tasks' A, frozen)
       + lambda_l2 * sum_layers (||A_t||_F + ||B_t||_F)  (the paper's lambda_2; 0 by default)
  3. freeze them: every task's units stay active, the model is W0 + scale * sum_t B_t A_t
Predict: one model for every input (no task id), argmax of the head over all classes seen.

Where the paper is silent (it fine-tunes generative language models, whose "head" is the
vocabulary): the classifier is one linear layer that grows by the new task's classes; its loss
covers the current task's classes only and older rows stay frozen (``head_loss: current``), as
the InfLoRA and SD-LoRA code trains every LoRA baseline in class-incremental vision. CE over
every seen class (``head_loss: seen``) on the current task's data alone drives every old logit
down: on the offline vision preset (seed 1993) it predicted the last task for all 2,000 test
images (final accuracy 10.0%, task-given accuracy 97.6%) against 30.8% with ``current``.

The authors' recipe is the default: the orthogonality term sums absolute values (L1, their
``orthogonal_loss``), lambda_orth 0.5 and lambda_l2 0, lr 1e-3, one epoch, units on q and v
(the backbone default). ``orth_form: frobenius`` gives the squared Frobenius norm the paper
writes; with A ~ N(0, 0.01^2) it is about 300x weaker than the L1 sum on MiniLM.

What the three merged-LoRA baselines share (o-lora, inflora, sd-lora: the options, the task loop
with a growing linear head, saving, and a unit pool built from a chosen layer class) is in
``lowrank.py`` (``LoRABaseline``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..seeding import derive_seed
from .base import LEARNERS
from .lowrank import LoRABaseline, LoRABaselineOptions


class OLoRAOptions(LoRABaselineOptions):
    epochs: int = Field(1, ge=0)  # the authors' scripts: one epoch per task
    lambda_orth: float = Field(0.5, ge=0)  # the paper's lambda_1
    # "l1": sum |A_old A_new^T| (the authors' code); "frobenius": ||A_old A_new^T||_F^2 (paper)
    orth_form: Literal["l1", "frobenius"] = "l1"
    lambda_l2: float = Field(0.0, ge=0)  # the paper's lambda_2 on the new units


@LEARNERS.register("o-lora", OLoRAOptions,
                   "O-LoRA: a new LoRA per task, orthogonal to earlier tasks' A; all summed")
class OLoRA(LoRABaseline):
    options_model = OLoRAOptions

    def orthogonality(self) -> torch.Tensor:
        """Sum over layers of sum_ij |(A_old A_new^T)_ij| ("l1") or ||A_old A_new^T||_F^2."""
        if self.options.orth_form == "frobenius":
            return self.pool.orthogonality()
        terms = [(layer.A_pool @ layer.A_new.T).abs().sum() if layer.A_pool.shape[0]
                 else layer.A_new.sum() * 0.0 for layer in self.pool.layers.values()]
        return sum(terms)

    def _begin_task(self, task, ctx, prefix, extras):
        self.pool.begin_summed_task(derive_seed(self.seed, self.tasks_learned, "units"))
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
