"""The backbone protocol: preprocess raw items, embed them to ``N x d``, name low-rank targets.

Every adapter is an ``nn.Module`` whose ``forward`` maps a preprocessed batch to embeddings, so
low-rank units attached to its layers (see ``proteus.lora``) take part in the forward pass with
no special casing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.base import DataError, Modality
from ..registry import Registry

BACKBONES: Registry["Backbone"] = Registry("backbone")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A pre-trained encoder. Subclasses set ``modality``, ``embed_dim``, ``default_targets``."""

    modality: Modality
    embed_dim: int
    #: regular expressions over ``named_modules()`` names: where low-rank units go by default
    default_targets: list[str] = []
    #: the attention key/value projections (InfLoRA's targets); None: the backbone has none
    kv_targets: list[str] | None = None
    #: stages whose pooled outputs a learner may add to frozen features (multi-layer features)
    default_signature_stages: list[int] = []

    def preprocess(self, items: Sequence[Any] | np.ndarray, train: bool = False) -> Any:
        """Raw items (image arrays/paths, or texts) -> model inputs on ``self.device``."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Backbone":
        """Always eval mode: batch-norm statistics and dropout stay those of the pre-trained
        network; continual learners adapt it only through low-rank units and heads."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- stages: lets a learner cache the frozen part below its first adapted layer -----------
    def stage_prefixes(self) -> list[str]:
        """Module-name prefixes of the sequential stages; one stage (the whole net) by default."""
        return [""]

    def run_stages(self, x: Any, start: int = 0, stop: int | None = None) -> Any:
        """Run stages ``start..stop-1`` (all from ``start`` when ``stop`` is None)."""
        if start == 0 and stop is None:
            return self(x)
        if start == 0 and stop == 0:
            return x
        raise NotImplementedError(f"{type(self).__name__} runs only as a whole")

    def pool_stage(self, x: Any) -> torch.Tensor:
        """A stage's output -> one vector per sample (for multi-layer features): spatial mean
        for CNN maps, the first token for token sequences."""
        if x.ndim == 4:
            return x.mean(dim=(2, 3))
        if x.ndim == 3:
            return x[:, 0]
        return x

    def first_stage(self, layer_names: list[str]) -> int:
        """Index of the first stage that holds one of ``layer_names`` (0 if unknown)."""
        prefixes = self.stage_prefixes()
        if len(prefixes) == 1:
            return 0
        return min(i for i, p in enumerate(prefixes)
                   for n in layer_names if n == p or n.startswith(p + "."))

    def target_layers(self, patterns: list[str] | None = None) -> dict[str, nn.Module]:
        """Modules whose names fully match one of ``patterns`` (default: ``default_targets``)."""
        regexes = [re.compile(p) for p in (patterns or self.default_targets)]
        found = {
            name: module
            for name, module in self.named_modules()
            if name and any(r.fullmatch(name) for r in regexes)
        }
        if not found:
            raise ValueError(
                f"{type(self).__name__}: no layer matches target patterns {patterns}; "
                f"layer names look like {[n for n, _ in list(self.named_modules())[1:6]]}"
            )
        return found


def stage_features(backbone: Backbone, items, stages: list[int],
                   capture_stage: int | None = None) -> tuple[torch.Tensor, Any]:
    """One pass of a batch through every stage: the pooled outputs of ``stages`` and the final
    embedding, each L2-normalised, concatenated (multi-layer features); with ``capture_stage``
    also that stage's input (the prefix a learner continues from). Run it under the scope the
    caller wants (frozen, inference)."""
    x, parts, captured = backbone.preprocess(items), [], None
    for stage in range(len(backbone.stage_prefixes())):
        if stage == capture_stage:
            captured = x
        x = backbone.run_stages(x, stage, stage + 1)
        if stage in stages:
            parts.append(backbone.pool_stage(x))
    parts.append(x)
    feats = torch.cat([nn.functional.normalize(p.float(), dim=1) for p in parts], 1)
    return feats, captured


def multi_stage_features(backbone: Backbone, items, stages: list[int], batch_size: int,
                         capture_stage: int | None = None) -> tuple[np.ndarray, list]:
    """:func:`stage_features` over ``items`` in batches, under inference mode: the features as
    one float32 array, and the captured stage inputs per batch (empty without
    ``capture_stage``). The caller chooses the scope (a learner's frozen scope, say)."""
    feats, captured = [], []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            f, x = stage_features(backbone, items[start:start + batch_size], stages,
                                  capture_stage)
            feats.append(f.cpu().numpy())
            if capture_stage is not None:
                captured.append(x)
    return (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), captured


def embed(
    backbone: Backbone,
    items: Sequence[Any] | np.ndarray,
    batch_size: int = 256,
    desc: str = "embed",
    progress: bool = True,
) -> np.ndarray:
    """Embed ``items`` in batches under inference mode; returns float32 ``N x d``."""
    backbone.eval()  # (backbones always stay in eval mode; see Backbone.train)
    out = []
    n = len(items)
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress or n <= batch_size,
                          leave=False, unit="batch"):
            batch = items[start:start + batch_size]
            out.append(backbone(backbone.preprocess(batch)).float().cpu().numpy())
    if not out:
        return np.zeros((0, backbone.embed_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


class ImagePreprocessor:
    """uint8 arrays (N,H,W[,C]) or image paths -> normalised float tensors (N,3,S,S).

    Written with torch ops rather than torchvision: the torchvision wheel does not load beside the
    CPU torch build this project pins, and the few transforms needed are short.
    Training augmentation follows the paper's config: RandomResizedCrop + horizontal flip.
    """

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_scale=(0.05, 1.0),
                 flip: bool = True):
        self.size = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.crop_scale = crop_scale
        self.flip = flip

    def __call__(self, items, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(items, np.ndarray):
            batch = self._from_array(items)
            x = (torch.stack([self._augment(img, generator) for img in batch]) if train
                 else _resize(batch, self.size))
        else:
            # decoding is I/O and C code that releases the GIL: threads keep a GPU fed
            images = list(_decoder_pool().map(self._load, items))
            x = torch.stack([self._augment(img, generator) if train else self._center(img)
                             for img in images])
        return (x - self.mean) / self.std

    @staticmethod
    def _from_array(items: np.ndarray) -> torch.Tensor:
        if items.dtype != np.uint8:
            raise DataError(f"image arrays must be uint8, got {items.dtype}")
        if not (items.ndim == 3 or (items.ndim == 4 and items.shape[-1] in (1, 3))):
            raise DataError("image arrays must be N x H x W (grey) or N x H x W x 3 (RGB), got "
                            f"shape {items.shape}")
        t = torch.from_numpy(np.ascontiguousarray(items))
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        # arrays are small, already-framed images (MNIST-style): resized whole, no centre crop
        t = t.float() / 255.0
        return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t

    @staticmethod
    def _load(path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = np.array(im.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot read image: {exc}") from None
        return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0

    def _center(self, img: torch.Tensor) -> torch.Tensor:
        """Resize the short side to size*256/224, then centre-crop (the usual test transform)."""
        _, h, w = img.shape
        short = round(self.size * 256 / 224)
        nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        img = torch.nn.functional.interpolate(img.unsqueeze(0), size=(nh, nw), mode="bilinear",
                                              antialias=True, align_corners=False)[0]
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        return img[:, top:top + self.size, left:left + self.size]

    def _augment(self, img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        _, h, w = img.shape
        area = h * w
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.crop_scale, generator=generator))
            log_ratio = torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3), generator=generator)
            ratio = float(torch.exp(log_ratio))
            cw = int(round((target * ratio) ** 0.5))
            ch = int(round((target / ratio) ** 0.5))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                img = img[:, top:top + ch, left:left + cw]
                break
        img = _resize(img.unsqueeze(0), self.size)[0]
        if self.flip and float(torch.rand(1, generator=generator)) < 0.5:
            img = img.flip(-1)
        return img


@functools.lru_cache(maxsize=1)
def _decoder_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                              thread_name_prefix="proteus-decode")


def stage_cat(states: list[Any]) -> Any:
    """Concatenate batches of stage outputs (tensors, or dicts of tensors) along samples."""
    if isinstance(states[0], dict):
        return {k: torch.cat([s[k] for s in states]) for k in states[0]}
    return torch.cat(states)


def stage_take(state: Any, rows) -> Any:
    """Rows of a stage output (a tensor, or a dict of tensors), as a copy."""
    rows = torch.as_tensor(rows)
    if isinstance(state, dict):
        return {k: v[rows] for k, v in state.items()}
    return state[rows]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the backbone's matrix work on CUDA ("auto": where the GPU supports
    bf16); fp32 otherwise. Heads and signatures compute in float64 on the CPU regardless."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto" and not torch.cuda.is_bf16_supported():
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fingerprint(backbone: nn.Module) -> str:
    """SHA-256 of the backbone's weights (every tensor's name, dtype, shape and bytes, sorted by
    name); taken before any learner attaches units, so it names the pre-trained network."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()
