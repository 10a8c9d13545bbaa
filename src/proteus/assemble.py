"""The one place that turns a config into data, scenario, backbone, learner and context.

``proteus run``, ``check``, ``learn``, ``predict``, ``serve``, model loading, the tests and the
benchmarks all build their parts here, so that a run, a check of the same config and a model
loaded from its directory are the same objects built the same way::

    run = assemble(config)                       # everything
    run = assemble(config, backbone=False)       # data and scenario only (``proteus check``)
    backbone, fp = build_backbone(config.backbone, "cpu")

Nothing here writes files: the engine owns the run directory, storage the model directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import BACKBONES, Backbone, fingerprint, resolve_device
from .config import Component, RunConfig
from .data import DATASETS, LabeledData, Scenario, ScenarioOptions, build_scenario, concat
from .learners import LEARNERS, Context, Learner
from .seeding import seed_global


@dataclass
class Run:
    """A config's parts; those not asked for are None."""

    config: RunConfig
    device: torch.device
    sources: list[LabeledData] | None = None  # each data source as read, before combining
    data: LabeledData | None = None
    scenario: Scenario | None = None
    backbone: Backbone | None = None
    backbone_fingerprint: str | None = None
    learner: Learner | None = None
    ctx: Context | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir) / str(self.config.name)


def read_sources(sources: list[Component]) -> list[LabeledData]:
    """Read every data source (``data.0``, ``data.1``, ...)."""
    return [DATASETS.create(c.name, c.typed(DATASETS, f"data.{i}"))
            for i, c in enumerate(sources)]


def combine(parts: list[LabeledData]) -> LabeledData:
    """Sources combined with label offsets (one source: itself)."""
    return parts[0] if len(parts) == 1 else concat(parts)


def load_data(sources: list[Component]) -> LabeledData:
    return combine(read_sources(sources))


def build_backbone(component: Component, device: str | torch.device = "cpu"
                   ) -> tuple[Backbone, str]:
    """The backbone on ``device`` and the fingerprint of its pre-trained weights (taken before a
    learner attaches anything)."""
    backbone = BACKBONES.create(component.name, component.typed(BACKBONES, "backbone"))
    return backbone.to(resolve_device(str(device))), fingerprint(backbone)


def build_learner(component: Component, backbone: Backbone, seed: int) -> Learner:
    return LEARNERS.create(component.name, component.typed(LEARNERS, "learner"),
                           backbone=backbone, seed=seed)


def make_context(learner: Learner, *, seed: int, batch_size: int, progress: bool,
                 num_tasks: int | None = None) -> Context:
    return Context(backbone=learner.backbone, seed=seed, batch_size=batch_size,
                   progress=progress, num_tasks=num_tasks, frozen_scope=learner.frozen_scope)


def assemble(config: RunConfig, *, data: bool = True, backbone: bool = True,
             learner: bool = True) -> Run:
    """Build the parts of ``config`` in order: data and scenario, backbone, learner + context.

    ``learner`` needs ``backbone``. The global generators are seeded first, for library code
    that draws from them (a backbone built from random weights); the learners' own streams
    derive from ``(seed, task, purpose)`` (``proteus.seeding``).
    """
    if learner and not backbone:
        raise ValueError("assemble: a learner needs the backbone (backbone=True)")
    seed_global(config.seed)
    run = Run(config=config, device=resolve_device(config.device))
    if data:
        run.sources = read_sources(config.data)
        run.data = combine(run.sources)
        options = ScenarioOptions.model_validate(config.scenario)
        run.scenario = build_scenario(run.data, options, config.seed)
    if backbone:
        run.backbone, run.backbone_fingerprint = build_backbone(config.backbone, run.device)
    if learner:
        run.learner = build_learner(config.learner, run.backbone, config.seed)
        run.ctx = make_context(run.learner, seed=config.seed, batch_size=config.eval.batch_size,
                               progress=config.progress,
                               num_tasks=len(run.scenario.tasks) if run.scenario else None)
    return run
