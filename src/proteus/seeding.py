"""One seeding rule: every random stream derives from (run seed, task, purpose, rank).

A stream never depends on what ran before it (no global RNG), so a run resumed after task k, a
model that goes on learning after it was saved, and a run sharded over processes all draw the
same numbers as one uninterrupted run. The purpose is a short name ("units", "head", "epochs",
...) hashed to a stable integer; task -1 stands for streams that belong to the whole run (the
random projection of the ridge head, say). Built on numpy's ``SeedSequence``, which mixes its
entropy words so that nearby tuples give independent streams.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch

RUN = -1  # the task index of run-wide streams


def _purpose_id(purpose: str) -> int:
    # crc32 is stable across processes and Python versions (hash() of a str is salted)
    return zlib.crc32(purpose.encode())


def derive_seed(seed: int, task: int, purpose: str, rank: int = 0) -> int:
    """A 63-bit seed for the stream ``(seed, task, purpose, rank)``."""
    words = [int(seed) % 2**32, int(task) + 1, _purpose_id(purpose), int(rank)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def generator(seed: int, task: int, purpose: str, rank: int = 0) -> torch.Generator:
    """A CPU torch generator for the stream ``(seed, task, purpose, rank)``."""
    return torch.Generator().manual_seed(derive_seed(seed, task, purpose, rank))


def rng(seed: int, task: int, purpose: str, rank: int = 0) -> np.random.Generator:
    """A numpy generator for the stream ``(seed, task, purpose, rank)``."""
    return np.random.default_rng(derive_seed(seed, task, purpose, rank))


def sklearn_state(seed: int, task: int, purpose: str, rank: int = 0) -> int:
    """A ``random_state`` for scikit-learn estimators (which want a 32-bit int)."""
    return derive_seed(seed, task, purpose, rank) % 2**32


def seed_global(seed: int) -> None:
    """Seed the global generators too, for library code that draws from them (weight init of
    a backbone built from random weights, say). Proteus's own streams never use them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
