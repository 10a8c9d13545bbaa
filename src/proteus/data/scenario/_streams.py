"""Seeded random streams: every random draw of a scenario comes from its own stream.

A stream is ``SeedSequence([seed, id, purpose])`` with ``id`` a class id (split, caps,
recurrence split) or a task index (mixing), so no draw depends on iteration order or on
how many draws came before. Shared by :mod:`.protocol` and :mod:`.vtab`, below both.
"""

from __future__ import annotations

import numpy as np


# purposes of the random streams: per class (split, caps, recurrence split) or per task (mixing)
_SPLIT, _TRAIN_CAP, _TEST_CAP, _MIX, _RECUR, _RECUR_TRAIN, _RECUR_TEST, _VAL = range(8)


def _rng(seed: int, cls: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, cls, purpose]))
