"""Class-incremental scenarios: a seeded class order cut into tasks, per-class splits, manifests.

The protocol is numbered across the modules (the code cites the numbers):

* :mod:`.protocol`: options, :class:`Task` / :class:`Scenario` and :func:`build_scenario`: 1. seeded
  class order, 2. relabelling into contiguous blocks, 3. per-class split and caps, 8. what the
  learners can run;
* :mod:`.manifest`: 4. the JSON split manifest (reading, writing, reuse checks, versions);
* :mod:`.vtab`: the paper scenarios on VTAB, 5. tasks by dataset, 6. similarity mixing
  (VTAB-Sim-S), 7. recurrence (VTAB-Rec-R);
* ``_streams``: the seeded random stream behind every draw.
"""

from __future__ import annotations

from proteus.data.scenario.manifest import (
    MANIFEST_VERSION,
    MIXED_MANIFEST_VERSION,
    load_manifest,
    write_manifest,
)
from proteus.data.scenario.protocol import Scenario, ScenarioOptions, Task, build_scenario

__all__ = ["MANIFEST_VERSION", "MIXED_MANIFEST_VERSION", "Scenario", "ScenarioOptions", "Task",
           "build_scenario", "load_manifest", "write_manifest"]
