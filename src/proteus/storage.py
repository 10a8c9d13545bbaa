"""Model directories: ``manifest.json`` + ``state.safetensors``, written atomically.

Saved state is data, never pickle, so loading a model cannot run code. A model directory holds
what is needed to rebuild the learner on its backbone and predict: the resolved backbone and
learner configs, the class names in class order, and the learner's tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__

FORMAT = "proteus-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "state.safetensors"


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete or of another format."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=_json_default)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def save_model(path: str | Path, *, learner, backbone_config: dict, learner_config: dict,
               class_names: list[str], class_order: list[int], extra: dict | None = None) -> Path:
    """Write a model directory; an existing one at ``path`` is replaced only once the new one is
    complete, so a crash mid-write leaves the old model intact."""
    path = Path(path)
    tensors, meta = learner.state()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "proteus_version": __version__,
        "backbone": backbone_config,
        "learner": learner_config,
        "class_names": class_names,
        "class_order": class_order,
        "learner_state": meta,
        "tensors": sorted(tensors),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / TENSORS)
        write_json_atomic(tmp / MANIFEST, manifest)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the previous model back where it was
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise ModelDirError(f"{path}: not a model directory (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{file}: not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ModelDirError(f"{file}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("backbone", "learner", "class_names", "learner_state"):
        if key not in manifest:
            raise ModelDirError(f"{file}: missing key {key!r}")
    return manifest


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    file = Path(path) / TENSORS
    if not file.is_file():
        raise ModelDirError(f"{Path(path)}: missing {TENSORS}")
    try:
        return load_file(file)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelDirError(f"{file}: cannot read tensors: {exc}") from None
