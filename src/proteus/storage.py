"""Model directories: versioned, checksummed JSON + safetensors, written atomically under a lock.

Saved state is data, never pickle, so loading a model cannot run code. Layout (format 2)::

    MODEL_DIR/
      manifest.json          format, format version, the current version, the version history
      v0001/ v0002/ ...      one folder per version (the newest ``keep`` are kept):
        model.json           backbone config + fingerprint, learner config, class names and
                             order, the learner's JSON state, and for every tensor file its
                             bytes and SHA-256
        serve.safetensors    what predicting needs (units, head weights, signature means, ...)
        grow.safetensors     what only learning more needs (ridge Gram, class statistics, ...);
                             absent from a serving export
        session.safetensors  checkpoints only: what a resumed run needs beyond the model
      .lock                  held (flock) by the one process writing this directory

A new version is written to a temporary folder, fsynced and renamed into place; ``manifest.json``
is then replaced atomically, which is the moment the new version becomes current. Until then a
reader sees the previous version, complete; a crash at any point leaves it current and readable.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__

FORMAT = "proteus-model"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MODEL_JSON = "model.json"
SERVE = "serve.safetensors"
GROW = "grow.safetensors"
SESSION = "session.safetensors"
LOCK = ".lock"
DEFAULT_KEEP = 2  # versions kept on disk: the current one and the one before it


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete, altered, locked or of another format."""


# -- atomic files -------------------------------------------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path``, then rename: readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
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


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# -- the writer's lock --------------------------------------------------------------------------
@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the directory's writer lock; a second writer fails at once, naming the holder.
    The lock is an ``flock``, so a writer killed with SIGKILL releases it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / LOCK, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ModelDirError(f"{path}: another writer holds the lock ({holder}); "
                                "wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock


# -- writing ------------------------------------------------------------------------------------
@dataclass
class SaveSpec:
    """What describes a model besides the learner's tensors."""

    backbone_config: dict
    backbone_fingerprint: str | None
    learner_config: dict
    class_names: list[str]
    class_order: list[int]
    extra: dict | None = None


def split_tensors(learner, tensors: dict[str, torch.Tensor]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(serve, grow): ``grow`` holds the tensors matching the learner's ``grow_keys``."""
    patterns = tuple(getattr(learner, "grow_keys", ()))
    grow = {k: v for k, v in tensors.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    serve = {k: v for k, v in tensors.items() if k not in grow}
    return serve, grow


def save_model(path: str | Path, *, learner, spec: SaveSpec, fresh: bool = False,
               keep: int = DEFAULT_KEEP, session: bool = False, serve_only: bool = False,
               run_state: dict | None = None, note: str = "", hold_lock: bool = True,
               compact: bool = True) -> str:
    """Write the learner as a new version of the model at ``path``; returns the version name.

    ``fresh`` starts a new history (a run's final model); otherwise the version is appended to
    the directory's history (``proteus learn``). ``session`` adds the learner's session state
    and ``run_state`` (checkpoints); ``serve_only`` leaves the growth statistics out.
    ``hold_lock`` False: the caller holds the directory's lock already (``proteus learn`` holds
    it from loading to saving). ``compact`` stores the float64 tensors the learner names in
    ``compact_keys`` as float32 (read back as float64): half the bytes, the same predictions
    (tests/test_conformance.py); checkpoints are written exact (``compact=False``) so that a
    resumed run equals an uninterrupted one bit for bit.
    """
    path = Path(path)
    tensors, meta = learner.state()
    serve, grow = split_tensors(learner, tensors)
    files = {SERVE: serve} if serve_only else {SERVE: serve, GROW: grow}
    session_meta = None
    if session:
        session_tensors, session_meta = learner.session_state()
        files[SESSION] = session_tensors
    # only where the learner says float32 keeps its predictions (InfLoRA's memory bases, say,
    # would not: an eigenvector's sign can flip on a rounding)
    compactable = tuple(getattr(learner, "compact_keys", ())) if compact else ()
    narrowed = sorted(k for part in files.values() for k, v in part.items()
                      if v.dtype == torch.float64
                      and any(fnmatch.fnmatchcase(k, p) for p in compactable))
    if narrowed:
        files = {name: {k: v.float() if k in narrowed else v for k, v in part.items()}
                 for name, part in files.items()}
    # symmetric d x d statistics (Gram matrices, scatters): the upper triangle alone
    symmetric = tuple(getattr(learner, "symmetric_keys", ())) if compact else ()
    packed = sorted(k for part in files.values() for k, v in part.items()
                    if v.ndim == 2 and v.shape[0] == v.shape[1] and v.shape[0] > 1
                    and any(fnmatch.fnmatchcase(k, p) for p in symmetric))
    if packed:
        files = {name: {k: pack_symmetric(v) if k in packed else v for k, v in part.items()}
                 for name, part in files.items()}
    path.mkdir(parents=True, exist_ok=True)
    with (locked(path) if hold_lock else contextlib.nullcontext()):
        manifest = _read_top(path) if (path / MANIFEST).exists() and not fresh else None
        history = [] if manifest is None else list(manifest["versions"])
        number = _next_number(path, history)
        version = f"v{number:04d}"
        for stale in path.glob(".tmp-*"):  # left by a writer that died
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path))
        try:
            described = {}
            for name, part in files.items():
                save_file({k: v.detach().cpu().contiguous() for k, v in part.items()}, tmp / name)
                _fsync(tmp / name)
                described[name] = {"bytes": (tmp / name).stat().st_size,
                                   "sha256": file_digest(tmp / name), "tensors": sorted(part)}
            model = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "proteus_version": __version__, "version": version,
                "backbone": spec.backbone_config,
                "backbone_fingerprint": spec.backbone_fingerprint,
                "learner": spec.learner_config,
                "class_names": spec.class_names, "class_order": spec.class_order,
                "learner_state": meta, "files": described, "serve_only": serve_only,
                "stored_float32": narrowed,  # float64 tensors kept as float32 (compact)
                "stored_packed": packed,  # symmetric matrices kept as their upper triangle
                **({"session_state": session_meta} if session else {}),
                **({"run_state": run_state} if run_state is not None else {}),
                **(spec.extra or {}),
            }
            write_json_atomic(tmp / MODEL_JSON, model)
            os.replace(tmp, path / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = {"version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "tasks": int(meta.get("tasks_learned", 0)) if isinstance(meta, dict) else 0,
                 "classes": len(spec.class_names), "note": note}
        history.append(entry)
        kept = history[-keep:] if keep > 0 else history
        write_json_atomic(path / MANIFEST, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                            "current": version, "versions": history,
                                            "on_disk": [v["version"] for v in kept]})
        # the new version is current: older folders beyond ``keep`` (and any of an old
        # history that ``fresh`` replaced) can go
        for folder in path.glob("v[0-9][0-9][0-9][0-9]"):
            if folder.name not in {v["version"] for v in kept}:
                shutil.rmtree(folder, ignore_errors=True)
    return version


def _next_number(path: Path, history: list[dict]) -> int:
    numbers = [int(v["version"][1:]) for v in history]
    numbers += [int(p.name[1:]) for p in path.glob("v[0-9][0-9][0-9][0-9]")]
    return max(numbers, default=0) + 1


def _fsync(file: Path) -> None:
    with open(file, "rb") as fh:
        os.fsync(fh.fileno())


# -- reading ------------------------------------------------------------------------------------
def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{file}: expected a JSON object")
    return data


def _check_format(data: dict, file: Path) -> None:
    if data.get("format") != FORMAT:
        raise ModelDirError(f"{file}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{file}: format version {data.get('format_version')!r} is not one "
                            f"this Proteus ({__version__}) reads (it reads {FORMAT_VERSION})")


def _read_top(path: Path) -> dict:
    if not path.exists():
        raise ModelDirError(f"{path}: model directory not found")
    file = path / MANIFEST
    if not file.is_file():
        raise ModelDirError(f"{path}: not a model directory (no {MANIFEST})")
    top = _read_json(file)
    _check_format(top, file)
    for key in ("current", "versions"):
        if key not in top:
            raise ModelDirError(f"{file}: missing key {key!r}")
    return top


def read_manifest(path: str | Path, version: str | None = None) -> dict:
    """The ``model.json`` of the current version (or ``version``), with ``path`` and the
    directory's ``history`` added."""
    path = Path(path)
    top = _read_top(path)
    version = version or top["current"]
    file = path / version / MODEL_JSON
    if not file.is_file():
        raise ModelDirError(f"{path}: version {version} is missing ({file} not found)")
    model = _read_json(file)
    _check_format(model, file)
    for key in ("backbone", "learner", "class_names", "learner_state", "files"):
        if key not in model:
            raise ModelDirError(f"{file}: missing key {key!r}")
    model["history"] = top["versions"]
    model["dir"] = str(path / version)
    return model


def read_tensors(manifest: dict, parts: tuple[str, ...] = (SERVE, GROW), verify: bool = True
                 ) -> dict[str, torch.Tensor]:
    """The tensors of ``parts`` that the version has, each file's size and SHA-256 checked
    against ``model.json`` first (a truncated or altered file is refused, named)."""
    folder = Path(manifest["dir"])
    out: dict[str, torch.Tensor] = {}
    for name in parts:
        described = manifest["files"].get(name)
        if described is None:
            continue
        file = folder / name
        if not file.is_file():
            raise ModelDirError(f"{file}: missing (the model lists it)")
        if verify:
            size = file.stat().st_size
            if size != described["bytes"]:
                raise ModelDirError(f"{file}: {size} bytes, the model recorded "
                                    f"{described['bytes']} (truncated or altered)")
            if file_digest(file) != described["sha256"]:
                raise ModelDirError(f"{file}: checksum differs from the one recorded "
                                    "(altered or corrupt)")
        try:
            out.update(load_file(file))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelDirError(f"{file}: cannot read tensors: {exc}") from None
    for key in manifest.get("stored_packed", []):  # compact storage: the whole matrix again
        if key in out:
            out[key] = unpack_symmetric(out[key])
    for key in manifest.get("stored_float32", []):  # compact storage: back to the learner's dtype
        if key in out:
            out[key] = out[key].double()
    return out


def pack_symmetric(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a symmetric matrix, row by row (d (d + 1) / 2 values)."""
    d = matrix.shape[0]
    return matrix[torch.ones(d, d, dtype=torch.bool).triu()]


def unpack_symmetric(values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_symmetric`: the symmetric matrix."""
    d = int(round((math.sqrt(8 * values.numel() + 1) - 1) / 2))
    if d * (d + 1) // 2 != values.numel() or values.ndim != 1:
        raise ModelDirError(f"a packed symmetric matrix has {values.numel()} values, which is "
                            "no triangle")
    upper = torch.ones(d, d, dtype=torch.bool).triu()
    out = values.new_zeros(d, d)
    out[upper] = values
    out.T[upper] = values  # the lower triangle mirrors the upper one
    return out


def directory_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
