"""Backbones: one protocol (preprocess, embed, named low-rank targets) and its adapters."""

from . import efficientnet, hf  # noqa: F401  (registers the adapters)
from .base import (BACKBONES, Backbone, ImagePreprocessor, embed, fingerprint, resolve_device,
                   stage_cat, stage_take)

__all__ = ["BACKBONES", "Backbone", "ImagePreprocessor", "embed", "fingerprint", "resolve_device",
           "stage_cat", "stage_take"]
