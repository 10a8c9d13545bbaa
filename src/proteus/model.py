"""A saved model, reloaded for prediction: backbone + learner rebuilt from a model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backbones import BACKBONES, Backbone, resolve_device
from .data.base import LabeledData
from .learners import LEARNERS, Context, Learner
from .storage import read_manifest, read_tensors


@dataclass
class ProteusModel:
    backbone: Backbone
    learner: Learner
    class_names: list[str]
    manifest: dict[str, Any]
    batch_size: int = 256

    def predict(self, items: Sequence[Any] | np.ndarray) -> dict[str, Any]:
        """Raw images (uint8 arrays or paths) or texts -> class ids, names and task ids."""
        data = LabeledData(items, np.zeros(len(items), dtype=np.int64), self.class_names,
                           self.backbone.modality, ids=-1 - np.arange(len(items)))
        ctx = Context(self.backbone, batch_size=self.batch_size, progress=False)
        if hasattr(self.learner, "frozen_scope"):
            ctx.frozen_scope = self.learner.frozen_scope
        pred = self.learner.predict(data, ctx)
        return {"class_ids": pred.classes,
                "class_names": [self.class_names[c] for c in pred.classes],
                "task_ids": pred.tasks}


def load_model(path: str | Path, device: str = "auto") -> ProteusModel:
    """Rebuild a model saved by a run (``runs/<name>/model``); reads JSON + safetensors only."""
    manifest = read_manifest(path)
    backbone_cfg = dict(manifest["backbone"])
    learner_cfg = dict(manifest["learner"])
    backbone = BACKBONES.build(backbone_cfg.pop("name"), backbone_cfg, where="backbone")
    backbone = backbone.to(resolve_device(device))
    learner = LEARNERS.build(learner_cfg.pop("name"), learner_cfg, where="learner",
                             backbone=backbone, seed=int(manifest.get("seed", 0)))
    learner.load_state(read_tensors(path), manifest["learner_state"])
    return ProteusModel(backbone, learner, list(manifest["class_names"]), manifest)
