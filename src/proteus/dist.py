"""Multi-process runs on ``torch.distributed`` (launched by ``torchrun``).

What is split across the processes (ranks) of a run, and how:

* **Backbone passes** (the cost of every method): while a rank learns a task inside
  :func:`sharding`, every pass over a dataset that goes through :func:`sharded_rows` (frozen
  features, PROTEUS's signature features and frozen-stage prefix, adapted embeddings) runs on the
  rank's contiguous part of the samples and the rows are all-gathered, in order, so every rank
  holds what one process would have computed.
* **Sum statistics** (the ridge head's Gram matrix and class sums, :class:`~proteus.stats.ClassStats`
  behind the class-Gaussian signatures, SimpleCIL's class sums) are accumulated by each rank over
  its part and summed with one all-reduce (:func:`all_reduce`).
* **Gradient steps**: every rank draws the same epoch order; each global batch is split across
  the ranks and the gradients are summed (:func:`all_reduce_grads`), which is the single-process
  step on the same batch up to the order of float additions.
* **Evaluation**: each rank predicts its part of the test data; predictions are gathered.
* Rank 0 alone writes the run directory and the model.

Plain ``torch.distributed`` collectives rather than DDP, Lightning Fabric or Accelerate: the
trained parameters (low-rank units, a head) sit inside the backbone's own forward and change per
task, the statistics are sums that need one ``all_reduce`` each, and the gradient sync is one
call after ``backward``; a wrapper would add a dependency and hide none of this.

A single-process run never enters this module's collectives: every helper is the identity there.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as tdist

#: seconds a collective waits for the other ranks before failing (a rank that died)
TIMEOUT_ENV = "PROTEUS_DIST_TIMEOUT"
BACKEND_ENV = "PROTEUS_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 600


class DistributedError(RuntimeError):
    """A collective failed: another rank died or timed out."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a run: ``rank`` of ``world`` processes (``world`` 1: alone)."""

    rank: int = 0
    world: int = 1
    backend: str = ""
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> np.ndarray:
        """Start of every rank's contiguous part of ``n`` samples, and ``n`` (``world + 1``)."""
        sizes = np.full(self.world, n // self.world)
        sizes[: n % self.world] += 1
        return np.concatenate([[0], np.cumsum(sizes)])

    def part(self, n: int) -> np.ndarray:
        """Positions of this rank's part of ``n`` samples (all of them when alone)."""
        b = self.bounds(n)
        return np.arange(b[self.rank], b[self.rank + 1])


SINGLE = Dist()
_WORLD: Dist = SINGLE
_SHARDING: contextvars.ContextVar[Dist] = contextvars.ContextVar("proteus_sharding",
                                                                 default=SINGLE)


def world() -> Dist:
    """The process group this process belongs to (:data:`SINGLE` when not launched by torchrun)."""
    return _WORLD


def init_from_env(device: str = "cpu") -> Dist:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``...); alone when those are absent. The backend is NCCL for a
    CUDA run and gloo otherwise (``PROTEUS_DIST_BACKEND`` overrides); collectives time out after
    ``PROTEUS_DIST_TIMEOUT`` seconds, so a rank whose peer died fails instead of hanging."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = SINGLE
        return _WORLD
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        tdist.init_process_group(backend, timeout=timeout)
    _WORLD = Dist(rank=rank, world=size, backend=backend, local_rank=local)
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if tdist.is_initialized():
        tdist.destroy_process_group()
    _WORLD = SINGLE


@contextlib.contextmanager
def sharding(d: Dist | None = None) -> Iterator[Dist]:
    """Within this scope :func:`sharded_rows`, :func:`all_reduce` and the training loop split
    their work across the ranks of ``d`` (default: this process's group)."""
    token = _SHARDING.set(d or _WORLD)
    try:
        yield _SHARDING.get()
    finally:
        _SHARDING.reset(token)


@contextlib.contextmanager
def local() -> Iterator[None]:
    """A scope in which this rank works alone (e.g. predicting its own part of the test data)."""
    token = _SHARDING.set(SINGLE)
    try:
        yield
    finally:
        _SHARDING.reset(token)


def active() -> Dist:
    """The group work is split across right now (:data:`SINGLE` outside :func:`sharding`)."""
    return _SHARDING.get()


# -- collectives ------------------------------------------------------------------------------
def _comm_device(d: Dist) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if d.backend == "nccl" \
        else torch.device("cpu")


def _guard(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (RuntimeError, tdist.DistBackendError) as exc:  # a peer died or timed out
        raise DistributedError(
            f"rank {active().rank}: {what} failed; another process of the run has stopped or "
            f"timed out ({TIMEOUT_ENV} seconds). Resume with `proteus run CONFIG --resume`. "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc


def all_reduce(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The sum of ``x`` over the active ranks (a new array / tensor of the same kind; ``x``
    itself when alone)."""
    d = active()
    if not d.enabled:
        return x
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x
    buf = t.detach().to(_comm_device(d), copy=True)
    _guard("all_reduce", lambda: tdist.all_reduce(buf))
    buf = buf.to(t.device)
    return buf.numpy() if is_np else buf


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over the active ranks, in one flat all-reduce (a missing
    gradient counts as zero)."""
    d = active()
    if not d.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(p).to(p.dtype)
        offset += n


def _gather_tensor(d: Dist, chunk: torch.Tensor, n: int) -> torch.Tensor:
    bounds = d.bounds(n)
    sizes = np.diff(bounds)
    width = int(sizes.max())
    dev = _comm_device(d)
    padded = chunk.new_zeros((width, *chunk.shape[1:]), device=dev)
    padded[: len(chunk)] = chunk.to(dev)
    pieces = [torch.empty_like(padded) for _ in range(d.world)]
    _guard("all_gather", lambda: tdist.all_gather(pieces, padded.contiguous()))
    out = torch.cat([p[: int(s)] for p, s in zip(pieces, sizes)]).to(chunk.device)
    if chunk.ndim == 4 and chunk.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def sharded_rows(n: int, compute: Callable[[np.ndarray], Any]) -> Any:
    """``compute(positions)`` for all ``n`` samples: alone, one call over ``arange(n)``; across
    ranks, each rank computes its contiguous part and the rows are all-gathered in order.
    ``compute`` returns an array or tensor (rows first), or a dict of tensors."""
    d = active()
    if not d.enabled or n < d.world:  # alone, or too few samples to give every rank one
        return compute(np.arange(n))
    part = compute(d.part(n))
    if isinstance(part, dict):
        return {k: _gather_tensor(d, v, n) for k, v in part.items()}
    if isinstance(part, np.ndarray):
        return _gather_tensor(d, torch.from_numpy(np.ascontiguousarray(part)), n).numpy()
    return _gather_tensor(d, part, n)


def gather_objects(obj: Any) -> list[Any]:
    """Every active rank's ``obj`` (picklable, exchanged between the run's own processes), in
    rank order."""
    d = active()
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    _guard("all_gather_object", lambda: tdist.all_gather_object(out, obj))
    return out


def barrier() -> None:
    d = active()
    if d.enabled:
        _guard("barrier", tdist.barrier)
