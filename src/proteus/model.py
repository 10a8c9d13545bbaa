"""A saved model as a product: load it, predict with it, grow it by one task, describe it.

    model = proteus.load_model("runs/demo/model")
    model.predict(images)                         # class ids, names, retrieved tasks, scores
    model.learn(new_data)                          # one task of new classes -> a new version
    model.info()                                   # tasks, classes, backbone, versions, size

The backbone is rebuilt from the model's config and refused when its weights' fingerprint differs
from the one recorded at saving time. ``learn`` adds one task without any earlier data and writes
a new version atomically, holding the directory's writer lock from loading to saving.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from .assemble import build_backbone, build_learner, make_context
from .backbones import BACKBONES, Backbone
from .config import Component
from .data.base import DataError, LabeledData
from .data.scenario import Task
from .learners import LEARNERS, Learner, LearnerError
from .storage import (GROW, SERVE, ModelDirError, SaveSpec, directory_bytes, locked,
                      read_manifest, read_tensors, save_model)

OnKnown = Literal["error", "skip"]


@dataclass
class ProteusModel:
    backbone: Backbone
    learner: Learner
    manifest: dict[str, Any]
    path: Path | None = None
    batch_size: int = 256
    progress: bool = False
    #: the caller holds the directory's writer lock already (``proteus learn`` takes it before
    #: loading, so that no other writer can slip a version in between)
    holds_lock: bool = field(default=False, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def modality(self) -> str:
        return self.backbone.modality

    def _context(self):
        return make_context(self.learner, seed=int(self.manifest.get("seed", 0)),
                            batch_size=self.batch_size, progress=self.progress)

    # -- predicting -------------------------------------------------------------------------
    def predict(self, items: Sequence[Any] | np.ndarray) -> dict[str, Any]:
        """Raw images (uint8 arrays or paths) or texts -> class ids and names, the retrieved
        task per input (None for learners that retrieve none) and the predicted class's score."""
        if not len(items):
            return {"class_ids": np.zeros(0, np.int64), "class_names": [], "task_ids": None,
                    "scores": None}
        data = LabeledData(items, np.zeros(len(items), dtype=np.int64), self.class_names,
                           self.backbone.modality, ids=-1 - np.arange(len(items)))
        pred = self.learner.predict(data, self._context())
        if pred.scores is not None and not np.isfinite(pred.scores).all():
            bad = int(np.flatnonzero(~np.isfinite(pred.scores))[0])
            raise DataError(f"input {bad}: the model's score is not finite (NaN or inf "
                            "embedding); the input is not one the backbone can embed")
        return {"class_ids": pred.classes,
                "class_names": [self.class_names[c] for c in pred.classes],
                "task_ids": pred.tasks, "scores": pred.scores}

    # -- growing ----------------------------------------------------------------------------
    def learn(self, data: LabeledData, *, on_known: OnKnown = "error", note: str = ""
              ) -> dict[str, Any]:
        """Learn ``data`` (classes named by ``data.class_names``) as one new task, then save a
        new version to the model directory. Classes the model knows already are an error, or
        with ``on_known="skip"`` their samples are left out. Nothing is written unless the new
        version is complete."""
        if self.path is None:
            raise ModelDirError("this model has no directory to save a new version to")
        with self._lock():
            summary = self._learn(data, on_known)
            version = save_model(self.path, learner=self.learner, spec=self._spec(),
                                 hold_lock=False, note=note or f"learn: {summary['new_classes']}")
        self.manifest = read_manifest(self.path)
        return {**summary, "version": version}

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if self.holds_lock:
            yield
            return
        with locked(self.path):
            yield

    def _learn(self, data: LabeledData, on_known: OnKnown) -> dict[str, Any]:
        caps = self.learner.capabilities
        source = data.source or "data"
        if not caps.grows_after_load:
            raise LearnerError(f"{self.manifest['learner']['name']} cannot learn after loading: "
                               f"{caps.grow_note}")
        if self.manifest.get("serve_only"):
            raise ModelDirError(f"{self.path}: a serving export (no {GROW}) cannot learn; "
                                "use the full model directory")
        if data.modality != self.backbone.modality:
            raise DataError(f"{source}: {data.modality} data, but the model's backbone "
                            f"({self.manifest['backbone']['name']}) takes {self.backbone.modality}")
        present = sorted(set(data.labels.tolist()))
        names = [data.class_names[c] for c in present]
        known = [n for n in names if n in self.class_names]
        if known and on_known == "error":
            raise DataError(f"{source}: the model already knows class(es) "
                            f"{', '.join(known[:5])}{' …' if len(known) > 5 else ''}; "
                            "a task must bring new classes (--on-known skip leaves them out)")
        new = [n for n in names if n not in self.class_names]
        if not new:
            raise DataError(f"{source}: no new classes to learn")
        start = len(self.class_names)
        position = {n: start + i for i, n in enumerate(new)}
        keep = np.flatnonzero([data.class_names[c] in position for c in data.labels])
        subset = data.subset(keep)
        labels = np.asarray([position[data.class_names[c]] for c in subset.labels],
                            dtype=np.int64)
        all_names = self.class_names + new
        train = subset.with_labels(labels, all_names)
        classes = list(range(start, start + len(new)))
        task = Task(index=self.learner.tasks_learned, classes=classes, train=train,
                    test=train.subset([]))
        self.learner.learn_task(task, self._context())
        self.manifest["class_names"] = all_names
        self.manifest["class_order"] = list(self.manifest.get("class_order", [])) + classes
        return {"task": task.index, "new_classes": new, "samples": len(train),
                "skipped_known": known if on_known == "skip" else []}

    def _spec(self) -> SaveSpec:
        m = self.manifest
        return SaveSpec(backbone_config=m["backbone"],
                        backbone_fingerprint=m.get("backbone_fingerprint"),
                        learner_config=m["learner"], class_names=self.class_names,
                        class_order=list(m.get("class_order", [])),
                        extra={"seed": m.get("seed", 0)})

    # -- describing -------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.manifest
        files = {name: d["bytes"] for name, d in m["files"].items()}
        return {"path": str(self.path) if self.path else None,
                "version": m.get("version"), "versions": m.get("history", []),
                "learner": m["learner"]["name"], "backbone": m["backbone"],
                "backbone_fingerprint": m.get("backbone_fingerprint"),
                "modality": self.backbone.modality,
                "tasks": int(m["learner_state"].get("tasks_learned", 0)),
                "classes": len(m["class_names"]), "class_names": m["class_names"],
                "can_learn": self.learner.capabilities.grows_after_load
                and not m.get("serve_only"),
                "bytes": {"version": sum(files.values()), "files": files,
                          "directory": directory_bytes(self.path) if self.path else None}}

    def export_serve(self, path: str | Path) -> str:
        """Write the serving part alone (no growth statistics) as a new model directory."""
        return save_model(path, learner=self.learner, spec=self._spec(), fresh=True,
                          serve_only=True, note="serving export")


def load_model(path: str | Path, device: str = "auto", backbone: dict | None = None,
               verify: bool = True, batch_size: int = 256) -> ProteusModel:
    """Rebuild a saved model (``runs/<name>/model``) from JSON + safetensors only.

    ``backbone`` overrides options of the saved backbone config (say a local ``model`` folder
    for a hub id); the weights must still be the ones the model was saved with.
    """
    path = Path(path)
    manifest = read_manifest(path)
    raw = {**manifest["backbone"], **(backbone or {})}
    component = Component.of(BACKBONES, raw, "backbone")
    built, fp = build_backbone(component, device)
    saved_fp = manifest.get("backbone_fingerprint")
    if verify and saved_fp and fp != saved_fp:
        raise ModelDirError(
            f"{path}: the model was saved with backbone {manifest['backbone']} (weights "
            f"{saved_fp[:19]}…), but the backbone built here, {raw}, has weights "
            f"{fp[:19]}…; load it with the backbone it was trained on")
    learner_component = Component.of(LEARNERS, manifest["learner"], "learner")
    learner = build_learner(learner_component, built, int(manifest.get("seed", 0)))
    parts = (SERVE, GROW)
    learner.load_state(read_tensors(manifest, parts, verify=verify), manifest["learner_state"])
    return ProteusModel(built, learner, manifest, path, batch_size=batch_size)
