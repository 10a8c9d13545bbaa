"""Continual learners, registered by name."""

from . import (  # noqa: F401  (registers)
    align, aper, fecam, hide_prompt, inflora, lda, o_lora, prompts, proteus, ranpac, s_prompts,
    sd_lora, seq_lora, simplecil)
from .base import (LEARNERS, Capabilities, Context, Learner, LearnerError, Prediction,
                   TaskOutcome)

__all__ = ["LEARNERS", "Capabilities", "Context", "Learner", "LearnerError", "Prediction",
           "TaskOutcome"]
