"""The prompt family on a frozen transformer: L2P, DualPrompt and CODA-Prompt.

All three keep the pre-trained backbone frozen and condition it on learned prompts chosen per
sample by a *query*, the frozen backbone's own embedding of the input (the [CLS] token for ViT;
the mean-pooled tokens for MiniLM/BERT, the embedding that backbone gives). Prompts go into the
backbone through :mod:`proteus.prompting`, the one prompt/prefix mechanism; a linear head over
every class seen so far reads the prompted embedding.

``l2p`` -- Wang et al., "Learning to Prompt for Continual Learning" (CVPR 2022)
    A pool of ``pool_size`` prompts of ``prompt_length`` tokens, each with a learnable key. A
    sample's query picks the ``top_k`` keys of highest cosine similarity; their prompts are
    prepended to the tokens at the input of the first layer (prompt tuning). The head reads the
    mean of the prompt positions' outputs (the authors' ``head_type="prompt"``; ``head_input:
    token`` reads the backbone's own pooling instead). Loss: cross-entropy on logits masked to the
    current task's classes (``train_mask``) minus ``pull_weight`` x the summed cosine of the
    selected keys to the query (the surrogate loss that pulls the chosen keys to the queries).
    Pool, keys and head are shared by all tasks and train on every task.

``dualprompt`` -- Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free
Continual Learning" (ECCV 2022)
    A shared G-prompt (``g_length``) as key/value prefixes in layers ``g_layers`` and one
    E-prompt per task (``e_length``) as prefixes in layers ``e_layers``, with one key per task.
    Training uses the true task's E-prompt and pulls its key to the queries (``pull_weight``);
    at test time the E-prompt of the key most cosine-similar to the query is used, and that
    task is reported as the inferred task. A new task's E-prompt starts as the previous task's
    (the code's ``shared_prompt_pool``; ``init_from_previous: false`` draws it afresh). Older
    E-prompts and keys stay fixed (the authors' code trains only the selected one; its optimiser
    is re-made per task); the G-prompt trains on every task.

``coda-prompt`` -- Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting
for Rehearsal-Free Continual Learning" (CVPR 2023)
    Per prompted layer, prompt components ``P_m`` (``prompt_length`` tokens) with keys ``K_m``
    and attention vectors ``A_m``; a sample's prompt is ``sum_m alpha_m P_m`` with
    ``alpha_m = cos(q * A_m, K_m)``, its first half the key prefix and its second half the value
    prefix (the authors' split), in layers ``layers``. Each task adds ``pool_size / num_tasks``
    components (``components_per_task`` when the task count is unknown), initialised by
    Gram-Schmidt orthonormal to each other and to the older ones, which are frozen. Optional
    orthogonality penalty ``ortho_weight`` * mean((X X^T - I)^2) over P, K and A (the authors'
    public configs set it to 0).

HiDe-Prompt (``hide-prompt``) builds on the same base in :mod:`proteus.learners.hide_prompt`.

Shared choices:

* The training loop is every gradient-trained learner's (``LowRankLearner._fit``: Adam,
  ``epochs`` or ``steps_per_task``, ``batch_size``, gradient-norm clip ``grad_clip`` over
  prompts, keys and head), so tables compare methods, not loops. The options are that loop's
  (``TrainingOptions``), without the low-rank units' ``targets``, ``rank``, ``scale``.
* The head is one linear layer over all seen classes; a task's training masks the logits to its
  own classes, so other classes' rows get no gradient (and are kept bit for bit).
* Layer indices are the papers' (for a 12-layer ViT-B); on a shallower backbone the indices past
  its depth are dropped (reported in the task's extras as ``prompt_layers``).

Deviations from the authors' code (defaults follow the authors; budgets live in the presets):

* L2P's and DualPrompt's prompt selection is per sample, also in training; the authors' code
  with ``batchwise_prompt`` takes the batch's majority prompts, which lets test samples inform
  each other's prediction.
* L2P's prompt tokens get no position embedding (the authors' code extends the position
  embedding over them); they sit after [CLS], before the patches.
* Learning-rate schedules as the authors': constant for L2P/DualPrompt, cosine to 0 over the
  task's steps for CODA-Prompt (the shared loop's ``schedule``; its cosine is per step, the
  code's per epoch).
* DualPrompt's key and value prefixes each have the full prompt length (the PyTorch code's
  prefix form); CODA-Prompt's split one prompt into halves (its code).
* Gram-Schmidt cannot make more components orthogonal than the space has dimensions (a tiny
  test backbone); the excess components keep their random initialisation.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..data.base import LabeledData, take
from ..data.scenario import Task
from ..prompting import PromptSlots, cosine_match, gram_schmidt, uniform_parameter
from ..seeding import derive_seed, generator
from .base import LEARNERS, Capabilities, Context, Prediction, TaskOutcome
from .lowrank import LowRankLearner, TrainingOptions, _HeadRows

Prompts = tuple[dict[int, torch.Tensor], dict[int, tuple[torch.Tensor, torch.Tensor]]]


class PromptOptions(TrainingOptions):
    """The training recipe of L2P/DualPrompt's code: Adam at ``lr`` x ``batch_size`` / 256
    (their ``lr 0.03`` scaled by the global batch), 5 epochs, global batch 128 (16 x 8 GPUs),
    gradient clip 1.0."""

    lr: float = Field(0.03, gt=0)
    scale_lr: bool = True  # the effective rate is lr * batch_size / 256
    batch_size: int = Field(128, gt=0)
    epochs: int = Field(5, ge=0)


class PromptLearner(LowRankLearner):
    """A frozen transformer with prompts chosen by a query, and a linear head over all seen
    classes. Subclasses define the prompt parameters (:meth:`_begin_task`), how a batch's query
    turns into prompts (:meth:`_prompts`) and what the head reads (:meth:`_read`)."""

    options_model = PromptOptions
    capabilities = Capabilities(needs_tokens=True)

    def __init__(self, options: PromptOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.slots = PromptSlots(backbone)  # refuses a backbone without tokens
        self.device = backbone.device
        self.head_w = torch.zeros(0, backbone.embed_dim, device=self.device)
        self.head_b = torch.zeros(0, device=self.device)
        self.task_classes: list[list[int]] = []
        self._terms: list[torch.Tensor] = []  # extra loss terms of the batch being trained
        self._train_query: torch.Tensor | None = None

    def _build_pool(self):
        return None  # no low-rank units: prompts instead

    def _layers(self, wanted: list[int], what: str) -> list[int]:
        kept = self.slots.clip_layers(wanted)
        if kept != list(wanted):
            warnings.warn(f"{type(self).__name__}: {what} layers {wanted} clipped to {kept} "
                          f"(the backbone has {self.slots.num_layers} layers)")
        return kept

    # -- what a method defines ----------------------------------------------------------------
    def _begin_task(self, task: Task, ctx: Context) -> list[nn.Parameter]:
        """Set up the task's prompt parameters; returns those that train."""
        raise NotImplementedError

    def _prompts(self, query: torch.Tensor, train: bool,
                 tasks: torch.Tensor | None = None) -> Prompts:
        """Prompt tokens and prefixes for a batch with frozen queries ``query``; in training it
        also sets ``self._terms`` (the batch's extra loss terms). ``tasks``: use these tasks'
        prompts (task-incremental prediction) where the method has per-task prompts."""
        raise NotImplementedError

    def _end_task(self, task: Task) -> None:
        """Freeze what the task trained."""

    def _read(self, embedding: torch.Tensor) -> torch.Tensor:
        """The head's input from the prompted pass (default: the backbone's own embedding)."""
        return embedding

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def _load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- the prompted forward -----------------------------------------------------------------
    def _features(self, x, query: torch.Tensor, train: bool,
                  tasks: torch.Tensor | None = None) -> torch.Tensor:
        tokens, prefixes = self._prompts(query.to(self.device), train, tasks)
        with self.slots.active(tokens, prefixes):
            embedding = self.backbone(x)
        return self._read(embedding)  # after the pass: the prompt outputs are complete

    def _batch_features(self, prefix, items, rows: torch.Tensor, gen: torch.Generator):
        """A training batch through the prompted backbone (called by ``_fit``)."""
        x = self.backbone.preprocess(take(items, rows.numpy()), train=self.options.augment,
                                     generator=gen)
        if self.options.augment:  # the query of the augmented input, as the authors' code
            with torch.no_grad():
                query = self.backbone(x)
        else:
            query = self._train_query[rows]
        return self._features(x, query, train=True)

    # -- learning -----------------------------------------------------------------------------
    def learn_task(self, task: Task, ctx: Context) -> TaskOutcome:
        t0 = time.perf_counter()
        k = self.tasks_learned
        classes = np.asarray(task.classes)
        self._train_query = torch.as_tensor(
            ctx.features(task.train, desc=f"task {k}: query (frozen)"), device=self.device)
        params = self._begin_task(task, ctx)
        self._grow_head(task)
        rows = torch.as_tensor(classes, device=self.device)
        head = _HeadRows(self.head_w, self.head_b, rows)  # logits masked to the task's classes
        with self._recipe():
            loss = self._fit(params, head, task.train.items,
                             np.searchsorted(classes, task.train.labels), None,
                             derive_seed(self.seed, k, "fit"), extra_loss=lambda: self._terms,
                             clip_head=True)
        with torch.no_grad():  # only the task's rows were in the loss: the others stay as they were
            self.head_w[rows] = head.weight.detach()[rows]
            self.head_b[rows] = head.bias.detach()[rows]
        self._end_task(task)
        self._train_query, self._terms = None, []
        self.task_classes.append([int(c) for c in classes])
        self.num_classes = len(self.head_b)
        self.tasks_learned += 1
        return TaskOutcome(timing={"train_prompts_s": time.perf_counter() - t0},
                           extras={"final_loss": loss, **self._extras()})

    def _extras(self) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def _recipe(self):
        """The options ``_fit`` reads, with the authors' batch-scaled learning rate."""
        o = self.options
        if getattr(o, "scale_lr", False):
            self.options = o.model_copy(update={"lr": o.lr * o.batch_size / 256})
        try:
            yield
        finally:
            self.options = o

    def _grow_head(self, task: Task) -> None:
        top = max(task.classes) + 1
        old = len(self.head_b)
        if top <= old:
            return
        with torch.random.fork_rng(devices=[]):  # nn.Linear's initialisation, seeded
            torch.manual_seed(derive_seed(self.seed, self.tasks_learned, "head"))
            new = nn.Linear(self.backbone.embed_dim, top - old)
        self.head_w = torch.cat([self.head_w, new.weight.detach().to(self.device)])
        self.head_b = torch.cat([self.head_b, new.bias.detach().to(self.device)])

    # -- prediction ---------------------------------------------------------------------------
    def prompted_embedding(self, data: LabeledData, ctx: Context,
                           tasks: np.ndarray | None = None) -> torch.Tensor:
        """The head's input for every sample of ``data``, prompts chosen by the frozen query
        (or those of ``tasks``, one per sample)."""
        query = torch.as_tensor(ctx.features(data, desc="embed (query)"))
        out = []
        with torch.inference_mode():
            for b in self._batches(len(data), ctx.batch_size):
                x = self.backbone.preprocess(take(data.items, np.arange(b.start, b.stop)))
                t = None if tasks is None else torch.as_tensor(tasks[b], device=self.device)
                out.append(self._features(x, query[b], train=False, tasks=t).float())
        return torch.cat(out) if out else torch.zeros(0, self.backbone.embed_dim)

    def _logits(self, data: LabeledData, ctx: Context,
                tasks: np.ndarray | None = None) -> torch.Tensor:
        return self.prompted_embedding(data, ctx, tasks) @ self.head_w.T + self.head_b

    def scores(self, data: LabeledData, ctx: Context) -> np.ndarray:
        if self.tasks_learned == 0:
            return np.zeros((len(data), max(self.num_classes, 1)), dtype=np.float32)
        return self._logits(data, ctx).cpu().numpy()

    def embedding(self, data: LabeledData, ctx: Context) -> np.ndarray:
        """The prompted embedding the head reads, prompts chosen as for :meth:`scores`."""
        return self.prompted_embedding(data, ctx).cpu().numpy()

    # -- state --------------------------------------------------------------------------------
    def state(self):
        tensors, meta = self._state()
        tensors = {**tensors, "head.weight": self.head_w, "head.bias": self.head_b}
        return tensors, {**meta, "tasks_learned": self.tasks_learned,
                         "num_classes": self.num_classes, "task_classes": self.task_classes}

    def load_state(self, tensors, meta) -> None:
        self.tasks_learned = int(meta["tasks_learned"])
        self.num_classes = int(meta["num_classes"])
        self.task_classes = [list(c) for c in meta["task_classes"]]
        self.head_w = tensors["head.weight"].to(self.device)
        self.head_b = tensors["head.bias"].to(self.device)
        self._load({k: v.to(self.device) for k, v in tensors.items()}, meta)

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        counts["trained_per_task"] = self._trained_parameters() + (
            len(self.task_classes[-1]) * (self.backbone.embed_dim + 1) if self.task_classes
            else 0)
        return counts

    def _trained_parameters(self) -> int:
        """Prompt parameters one task trains (known before the first task: ``proteus check``)."""
        return 0


def _parameter(t: torch.Tensor, device) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().to(device))


# -- L2P ----------------------------------------------------------------------------------------
class L2POptions(PromptOptions):
    pool_size: int = Field(10, gt=0)
    prompt_length: int = Field(5, gt=0)
    top_k: int = Field(5, gt=0)
    pull_weight: float = Field(0.1, ge=0)  # the L2P code's pull_constraint_coeff for L2P
    head_input: Literal["prompt", "token"] = "prompt"  # mean of prompt outputs, or the pooling


@LEARNERS.register("l2p", L2POptions,
                   "L2P: prompt pool with learned keys, top-N prompts prepended to the tokens")
class L2P(PromptLearner):
    """See the module docstring."""

    options_model = L2POptions

    def __init__(self, options: L2POptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        if options.top_k > options.pool_size:
            raise ValueError(f"l2p: top_k {options.top_k} > pool_size {options.pool_size}")
        d, o = self.slots.dim, options
        self.prompts = _parameter(uniform_parameter(
            (o.pool_size, o.prompt_length, d), derive_seed(seed, 0, "l2p-prompts")), self.device)
        self.keys = _parameter(uniform_parameter((o.pool_size, d),
                                                 derive_seed(seed, 0, "l2p-keys")), self.device)

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-N pool indices (B, N) by cosine match of the keys to the query, and the
        similarities (B, M)."""
        sim = cosine_match(query, self.keys)
        return sim.topk(self.options.top_k, dim=1).indices, sim

    def _begin_task(self, task, ctx):
        return [self.prompts, self.keys]

    def _prompts(self, query, train, tasks=None):
        idx, sim = self.select(query)
        if train:  # pull the selected keys to the queries: - w * sum cos / B (the L2P code)
            self._terms = [-self.options.pull_weight * sim.gather(1, idx).sum() / len(query)]
        tokens = self.prompts[idx].flatten(1, 2)  # (B, N * L, D)
        return {0: tokens}, {}

    def _read(self, embedding):
        if self.options.head_input == "token":
            return embedding
        return self.backbone.token_norm(self.slots.prompt_outputs).mean(dim=1)

    def _state(self):
        return {"prompts": self.prompts.detach(), "keys": self.keys.detach()}, {}

    def _load(self, tensors, meta):
        self.prompts = _parameter(tensors["prompts"], self.device)
        self.keys = _parameter(tensors["keys"], self.device)

    def _trained_parameters(self) -> int:
        return self.prompts.numel() + self.keys.numel()


# -- DualPrompt ---------------------------------------------------------------------------------
class DualPromptOptions(PromptOptions):
    g_length: int = Field(5, gt=0)
    g_layers: list[int] = [0, 1]
    e_length: int = Field(20, gt=0)
    e_layers: list[int] = [2, 3, 4]
    pull_weight: float = Field(1.0, ge=0)  # the DualPrompt code's pull_constraint_coeff
    # a new task's E-prompt starts as the previous task's (the code's shared_prompt_pool)
    init_from_previous: bool = True
    batch_size: int = Field(24 * 8, gt=0)  # DualPrompt's code: 24 per GPU on 8 GPUs


@LEARNERS.register("dualprompt", DualPromptOptions,
                   "DualPrompt: shared G-prompt + per-task E-prompts (prefixes), key-matched")
class DualPrompt(PromptLearner):
    """See the module docstring."""

    options_model = DualPromptOptions
    capabilities = Capabilities(needs_tokens=True, infers_task=True)

    def __init__(self, options: DualPromptOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.g_layers = self._layers(options.g_layers, "G-prompt")
        self.e_layers = self._layers(options.e_layers, "E-prompt")
        d = self.slots.dim
        # per G layer: key prefix and value prefix, (layers, 2, L_g, D)
        self.g = _parameter(uniform_parameter((len(self.g_layers), 2, options.g_length, d),
                                              derive_seed(seed, 0, "g-prompt")), self.device)
        self.e = torch.zeros(0, len(self.e_layers), 2, options.e_length, d, device=self.device)
        self.e_keys = torch.zeros(0, d, device=self.device)
        self._new_e: nn.Parameter | None = None  # the training task's E-prompt and key
        self._new_key: nn.Parameter | None = None

    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every task's E-prompts (T, layers, 2, L_e, D) and keys (T, D), the training one
        included."""
        if self._new_e is None:
            return self.e, self.e_keys
        return (torch.cat([self.e, self._new_e[None]]),
                torch.cat([self.e_keys, self._new_key[None]]))

    def _begin_task(self, task, ctx):
        k, o, d = self.tasks_learned, self.options, self.slots.dim
        init = (self.e[-1] if o.init_from_previous and len(self.e) else uniform_parameter(
            (len(self.e_layers), 2, o.e_length, d), derive_seed(self.seed, k, "e-prompt")))
        self._new_e = _parameter(init, self.device)
        self._new_key = _parameter(uniform_parameter((d,), derive_seed(self.seed, k, "e-key")),
                                   self.device)
        return [self.g, self._new_e, self._new_key]

    def match(self, query: torch.Tensor) -> torch.Tensor:
        """The task whose key is most cosine-similar to each query."""
        return cosine_match(query, self.e_keys).argmax(dim=1)

    def _prompts(self, query, train, tasks=None):
        e, keys = self._all()
        if train:  # the true task's E-prompt; its key pulled to the queries (mean cosine)
            task = torch.full((len(query),), len(keys) - 1, device=self.device)
            sim = cosine_match(query, self._new_key[None])[:, 0]
            self._terms = [-self.options.pull_weight * sim.mean()]
        else:
            task = self.match(query) if tasks is None else tasks
        prefixes = {layer: (self.g[i, 0], self.g[i, 1]) for i, layer in enumerate(self.g_layers)}
        chosen = e[task]  # (B, layers, 2, L_e, D)
        for i, layer in enumerate(self.e_layers):
            prefixes[layer] = (chosen[:, i, 0], chosen[:, i, 1])
        return {}, prefixes

    def _end_task(self, task):
        self.e, self.e_keys = (t.detach() for t in self._all())
        self._new_e = self._new_key = None

    def _extras(self):
        return {"prompt_layers": {"g": self.g_layers, "e": self.e_layers}}

    def predict(self, data: LabeledData, ctx: Context) -> Prediction:
        """Argmax of the head with the best-matching key's E-prompt; that key's task reported."""
        pred = super().predict(data, ctx)
        query = torch.as_tensor(ctx.features(data, desc="embed test (query)"),
                                device=self.device)
        pred.tasks = self.match(query).cpu().numpy().astype(np.int64)
        return pred

    def predict_given_task(self, data, ctx, tasks, task_classes) -> np.ndarray:
        """The given task's E-prompt, argmax within its classes."""
        from .base import argmax_within_task

        logits = self._logits(data, ctx, np.asarray(tasks, dtype=np.int64)).cpu().numpy()
        return argmax_within_task(logits, tasks, task_classes)

    def _state(self):
        return ({"g": self.g.detach(), "e": self.e, "e_keys": self.e_keys},
                {"g_layers": self.g_layers, "e_layers": self.e_layers})

    def _load(self, tensors, meta):
        self.g = _parameter(tensors["g"], self.device)
        self.e, self.e_keys = tensors["e"], tensors["e_keys"]

    def _trained_parameters(self) -> int:
        o, d = self.options, self.slots.dim
        return self.g.numel() + len(self.e_layers) * 2 * o.e_length * d + d


# -- CODA-Prompt --------------------------------------------------------------------------------
class CODAPromptOptions(PromptOptions):
    """CODA-Prompt's public config (cifar-100_prompt.yaml): Adam lr 1e-3 (not batch-scaled),
    batch 128, 20 epochs; prompt_param 100 8 0.0."""

    pool_size: int = Field(100, gt=0)
    prompt_length: int = Field(8, gt=1)  # split in halves: key prefix, value prefix
    layers: list[int] = [0, 1, 2, 3, 4]
    components_per_task: int = Field(10, gt=0)  # when the number of tasks is unknown
    ortho_weight: float = Field(0.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    scale_lr: bool = False
    schedule: Literal["constant", "cosine"] = "cosine"
    epochs: int = Field(20, ge=0)


@LEARNERS.register("coda-prompt", CODAPromptOptions,
                   "CODA-Prompt: attention-weighted sums of orthogonal prompt components")
class CODAPrompt(PromptLearner):
    """See the module docstring."""

    options_model = CODAPromptOptions

    def __init__(self, options: CODAPromptOptions, backbone, seed: int = 0):
        super().__init__(options, backbone, seed)
        self.layers = self._layers(options.layers, "prompt")
        d, length = self.slots.dim, options.prompt_length
        # per prompted layer: frozen components P (M, L, D), keys K (M, D), attention A (M, D)
        self.frozen = [{"p": torch.zeros(0, length, d, device=self.device),
                        "k": torch.zeros(0, d, device=self.device),
                        "a": torch.zeros(0, d, device=self.device)} for _ in self.layers]
        self.new: list[dict[str, nn.Parameter]] = []  # the training task's components
        self.components: list[int] = []  # components added per task

    def _begin_task(self, task, ctx):
        o, k = self.options, self.tasks_learned
        if self.components:  # a task count fixed by the first task holds for the run
            count = self.components[0]
        elif ctx.num_tasks:
            count = max(o.pool_size // ctx.num_tasks, 1)
        else:
            count = o.components_per_task
        gen = generator(self.seed, k, "coda-components")
        self.new = []
        for old in self.frozen:
            new = {}
            for name, t in old.items():
                shape = (count, *t.shape[1:])
                init = torch.rand(shape, generator=gen) * 2 - 1  # the code's uniform init
                flat = gram_schmidt(init.flatten(1), t.flatten(1).cpu() if len(t) else None)
                new[name] = _parameter(flat.view(shape), self.device)
            self.new.append(new)
        self.components.append(count)
        return [p for new in self.new for p in new.values()]

    def _components(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's components: the frozen ones and the training task's."""
        old = self.frozen[i]
        if not self.new:
            return old
        return {name: torch.cat([old[name], self.new[i][name]]) for name in old}

    def _prompts(self, query, train, tasks=None):
        prefixes, terms = {}, []
        half = self.options.prompt_length // 2
        for i, layer in enumerate(self.layers):
            c = self._components(i)
            # alpha_m = cos(q * A_m, K_m): (B, M)
            attended = nn.functional.normalize(query[:, None, :] * c["a"][None], dim=2)
            alpha = (attended * nn.functional.normalize(c["k"], dim=1)[None]).sum(2)
            prompt = torch.einsum("bm,mld->bld", alpha, c["p"])
            prefixes[layer] = (prompt[:, :half], prompt[:, half:])
            if train and self.options.ortho_weight:
                terms.append(self.options.ortho_weight * sum(
                    _ortho_penalty(c[name].flatten(1)) for name in ("p", "k", "a")))
        if train:
            self._terms = [sum(terms)] if terms else []
        return {}, prefixes

    def _end_task(self, task):
        self.frozen = [{name: t.detach() for name, t in self._components(i).items()}
                       for i in range(len(self.layers))]
        self.new = []

    def _extras(self):
        return {"prompt_layers": self.layers, "components": sum(self.components)}

    def _state(self):
        tensors = {f"layer{i}.{name}": t for i, layer in enumerate(self.frozen)
                   for name, t in layer.items()}
        return tensors, {"layers": self.layers, "components": self.components}

    def _load(self, tensors, meta):
        self.components = [int(c) for c in meta["components"]]
        self.frozen = [{name: tensors[f"layer{i}.{name}"] for name in ("p", "k", "a")}
                       for i in range(len(self.layers))]

    def _trained_parameters(self) -> int:
        d, length = self.slots.dim, self.options.prompt_length
        count = self.components[-1] if self.components else self.options.components_per_task
        return len(self.layers) * count * (length * d + 2 * d)


def _ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """mean((T T^T - I)^2): CODA-Prompt's orthogonality regulariser."""
    return ((t @ t.T - torch.eye(len(t), device=t.device)) ** 2).mean()
