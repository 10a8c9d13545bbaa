"""Continual learners, registered by name."""

from . import proteus, simplecil  # noqa: F401  (registers)
from .base import LEARNERS, Context, Learner, Prediction

__all__ = ["LEARNERS", "Context", "Learner", "Prediction"]
