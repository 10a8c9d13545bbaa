"""Classifier alignment (CA): retrain the head on pseudo-features drawn from stored class Gaussians.

SLCA (Zhang et al., ICCV 2023) introduced it; the InfLoRA code ships it as ``inflora_ca.py``.
After each task:

1. the adapted embeddings of the task's training samples (the backbone as it is after the task)
   give each new class a Gaussian: mean and covariance, stored (growth state);
2. pseudo-features are sampled for *every* class seen so far, ``ca_samples_per_class`` each;
3. every head row is retrained on them with cross-entropy over all classes (SGD with momentum,
   ``ca_epochs`` epochs), logits normalised as SLCA does (``ca_logit_norm``).

Only the head changes; the backbone and its units are untouched. This fixes what per-task heads
cannot: their logit offsets and scales were never calibrated against one another. One shared
implementation (:class:`ClassAligner` + :class:`AlignedHead`) serves ``inflora-ca``,
``sd-lora-ca`` and ``o-lora-ca``.

Choices: the covariance gets ``ca_jitter`` times its mean variance on the diagonal, so a class
with fewer samples than dimensions can still be sampled (a Cholesky factor exists) [ours];
logit normalisation divides each sample's logits by tau times their L2 norm over all classes
(SLCA normalises per task) [ours]; class statistics are those of the backbone at the end of the
class's own task (SLCA, InfLoRA-CA: later drift is not re-estimated without the data).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..data.scenario import Task
from ..registry import Options
from ..seeding import derive_seed, generator
from .base import LEARNERS, Context, TaskOutcome
from .inflora import InfLoRA, InfLoRAOptions
from .o_lora import OLoRA, OLoRAOptions
from .sd_lora import SDLoRA, SDLoRAOptions
from .seq_lora import SeqLoRA, SeqLoRAOptions


class AlignOptions(Options):
    ca_samples_per_class: int = Field(256, gt=0)
    ca_epochs: int = Field(5, ge=0)
    ca_lr: float = Field(0.01, gt=0)
    ca_momentum: float = Field(0.9, ge=0)
    ca_batch_size: int = Field(64, gt=0)
    ca_logit_norm: float | None = Field(0.1, gt=0)  # SLCA's temperature; None: plain logits
    ca_covariance: Literal["full", "diag"] = "full"
    ca_jitter: float = Field(1e-4, ge=0)


class ClassAligner:
    """Per-class Gaussians of the adapted embedding and the head retraining of CA."""

    def __init__(self, dim: int, options: AlignOptions):
        self.dim, self.o = dim, options
        self.means = torch.zeros(0, dim, dtype=torch.float64)
        # full: (C, d, d) lower Cholesky factors; diag: (C, d) standard deviations
        self.factors = torch.zeros(0, *((dim, dim) if options.ca_covariance == "full"
                                        else (dim,)), dtype=torch.float32)
        self.seen = torch.zeros(0, dtype=torch.bool)

    def _grow(self, classes: int) -> None:
        extra = classes - len(self.means)
        if extra > 0:
            self.means = torch.cat([self.means, self.means.new_zeros(extra, self.dim)])
            self.factors = torch.cat([self.factors,
                                      self.factors.new_zeros(extra, *self.factors.shape[1:])])
            self.seen = torch.cat([self.seen, self.seen.new_zeros(extra)])

    def add(self, feats: np.ndarray, labels: np.ndarray) -> None:
        """Store the Gaussian of every class in ``labels`` (class-order positions)."""
        x = torch.as_tensor(np.asarray(feats), dtype=torch.float64)
        labels = np.asarray(labels)
        self._grow(int(labels.max()) + 1)
        for c in np.unique(labels):
            xc = x[torch.as_tensor(labels == c)]
            mean = xc.mean(0)
            centred = xc - mean
            cov = centred.T @ centred / max(len(xc) - 1, 1)
            jitter = self.o.ca_jitter * float(cov.diagonal().mean().clamp_min(1e-12))
            if self.o.ca_covariance == "full":
                cov.diagonal().add_(jitter)
                factor = torch.linalg.cholesky(cov)
            else:
                factor = (cov.diagonal() + jitter).sqrt()
            self.means[c], self.factors[c], self.seen[c] = mean, factor.float(), True

    def sample(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``ca_samples_per_class`` pseudo-features of every stored class, and their labels."""
        n = self.o.ca_samples_per_class
        xs, ys = [], []
        for c in torch.nonzero(self.seen).flatten().tolist():
            eps = torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
            factor = self.factors[c].double()
            noise = eps @ factor.T if factor.ndim == 2 else eps * factor
            xs.append(self.means[c] + noise)
            ys.append(torch.full((n,), c, dtype=torch.long))
        return torch.cat(xs).float(), torch.cat(ys)

    def align(self, weight: torch.Tensor, bias: torch.Tensor, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """The head (class x d weight, bias) retrained on pseudo-features of every stored class;
        returns the new weight, bias and the last epoch's mean loss (None: no epoch ran)."""
        o = self.o
        gen = generator(seed, 0, "ca")
        x, y = self.sample(gen)
        device = weight.device
        x, y = x.to(device), y.to(device)
        W = nn.Parameter(weight.detach().clone().float())
        b = nn.Parameter(bias.detach().clone().float())
        optimiser = torch.optim.SGD([W, b], lr=o.ca_lr, momentum=o.ca_momentum)
        last = None
        with torch.enable_grad():
            for _ in range(o.ca_epochs):
                order, losses = torch.randperm(len(y), generator=gen).to(device), []
                for start in range(0, len(y), o.ca_batch_size):
                    rows = order[start:start + o.ca_batch_size]
                    logits = x[rows] @ W.T + b
                    if o.ca_logit_norm is not None:  # SLCA's logit normalisation
                        logits = logits / (logits.norm(dim=1, keepdim=True).clamp_min(1e-7)
                                           * o.ca_logit_norm)
                    loss = nn.functional.cross_entropy(logits, y[rows])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    losses.append(loss.detach())
                last = float(torch.stack(losses).mean())
        return W.detach().to(weight.dtype), b.detach().to(bias.dtype), last

    # -- saving: growth state (only learning more needs it) -------------------------------
    def state(self, prefix: str = "ca.") -> dict[str, torch.Tensor]:
        return {f"{prefix}means": self.means, f"{prefix}factors": self.factors,
                f"{prefix}seen": self.seen}

    def load_state(self, tensors: dict[str, torch.Tensor], prefix: str = "ca.") -> None:
        if f"{prefix}means" in tensors:  # absent from a serving export
            self.means = tensors[f"{prefix}means"].double()
            self.factors = tensors[f"{prefix}factors"].float()
            self.seen = tensors[f"{prefix}seen"].bool()


class AlignedHead:
    """Mixin for a :class:`~proteus.learners.lowrank.LoRABaseline`: after the baseline has
    learned a task, store its classes' Gaussians and align the head (module docstring)."""

    grow_keys = ("ca.*",)

    def __init__(self, options, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.aligner = ClassAligner(backbone.embed_dim, options)

    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        outcome = super().learn_task(task, ctx)
        t0 = time.perf_counter()
        feats = self.embedding(task.train, ctx)  # the backbone as it is after the task
        self.aligner.add(feats, task.train.labels)
        weight, bias, loss = self.aligner.align(
            *self._head_tensors(), derive_seed(self.seed, self.tasks_learned - 1, "ca"))
        self._set_head_tensors(weight, bias)
        outcome.timing["align_s"] = time.perf_counter() - t0
        outcome.extras["ca_loss"] = loss
        return outcome

    # a merged-LoRA baseline's head; SLCA overrides these for seq-lora's nn.Linear
    def _head_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_w, self.head_b

    def _set_head_tensors(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.head_w, self.head_b = weight, bias

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state()
        return {**tensors, **self.aligner.state()}, meta

    def load_state(self, tensors, meta) -> None:
        super().load_state(tensors, meta)
        self.aligner.load_state(tensors)


def aligned(name: str, base: type, options: type, summary: str):
    """Register ``name``: the learner ``base`` with classifier alignment after every task."""
    opts = type(f"{base.__name__}CAOptions", (options, AlignOptions), {
        "__module__": __name__, "__doc__": f"{base.__name__}'s options and CA's."})
    cls = type(f"{base.__name__}CA", (AlignedHead, base), {
        "__module__": __name__, "options_model": opts,
        "grow_keys": tuple(base.grow_keys) + AlignedHead.grow_keys,
        "__doc__": f"{base.__name__} with classifier alignment after every task (CA)."})
    LEARNERS.register(name, opts, summary)(cls)
    return cls


class SLCAHead(AlignedHead):
    """:class:`AlignedHead` on seq-lora's one set of units and ``nn.Linear`` head."""

    def _head_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.weight.detach(), self.head.bias.detach()

    def _set_head_tensors(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)


class SLCAOptions(SeqLoRAOptions, AlignOptions):
    """seq-lora's options and CA's, with SLCA's slow learner: the units train at 1/100 of the
    head's learning rate (SLCA: backbone 1e-4, classifier 1e-2, SGD; here Adam, the recipe every
    low-rank learner shares)."""

    unit_lr_scale: float = Field(0.01, gt=0)


@LEARNERS.register("slca", SLCAOptions,
                   "SLCA: seq-lora with a slow learning rate for the units + classifier alignment")
class SLCA(SLCAHead, SeqLoRA):
    """Zhang et al., "SLCA: Slow Learner with Classifier Alignment" (ICCV 2023), on this
    project's low-rank units instead of the full backbone (SLCA fine-tunes every weight;
    ``targets`` widens the units)."""

    options_model = SLCAOptions
    grow_keys = tuple(SeqLoRA.grow_keys) + AlignedHead.grow_keys


InfLoRACA = aligned("inflora-ca", InfLoRA, InfLoRAOptions,
                    "InfLoRA + classifier alignment (the InfLoRA code's inflora_ca.py)")
SDLoRACA = aligned("sd-lora-ca", SDLoRA, SDLoRAOptions, "SD-LoRA + classifier alignment")
OLoRACA = aligned("o-lora-ca", OLoRA, OLoRAOptions, "O-LoRA + classifier alignment")
