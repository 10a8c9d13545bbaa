"""The one prompt/prefix mechanism: prompt tokens and attention prefixes on a transformer backbone.

Prompt methods condition a frozen transformer on a few learned vectors, in one of two ways:

* **prompt tuning** (L2P, VPT): ``P`` prompt tokens are inserted into the hidden sequence at the
  input of an encoder layer, right after the first ([CLS]) token, so ``hidden[:, 0]`` stays the
  [CLS] token. They run through every later layer like the other tokens. Tokens given again at a
  later layer replace the carried ones (VPT-deep).
* **prefix tuning** (DualPrompt, CODA-Prompt): ``P`` learned keys and ``P`` learned values are
  prepended to the keys and values of a layer's self-attention, in the projected (per-head) space,
  as the authors' code does (``k = cat([key_prefix, k])``, not passed through the key projection).
  Only the attention of that layer sees them; the sequence keeps its length.

Both are per-sample capable: a prompt is ``(P, D)`` (shared by the batch) or ``(B, P, D)`` (one
per sample, the batch's own selection from a pool). :class:`PromptSlots` installs them for the
duration of a ``with slots.active(...)`` block only; outside it the backbone is the pre-trained
network, bit for bit, so frozen features and the fingerprint are untouched.

How it attaches, with no copy of the model (transformers >= 5, whose attention modules call
``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ...)``):

* prompt tokens: a forward pre-hook on each encoder layer from the first prompted one inserts the
  carried prompt tokens (and widens that layer's 4-D attention mask), and a forward hook takes
  them out again, so between layers (and to the backbone's own pooling and padding mask) the
  sequence has its original length, whether the backbone runs whole or by stages. After the last
  layer :attr:`PromptSlots.prompt_outputs` holds the prompt positions' outputs (L2P's "prompt"
  head reads their mean).
* prefixes: while active, each prefixed attention module reads a copy of the config whose
  attention implementation is ``"proteus-prefix"``, a function registered once with
  transformers that prepends the module's prefixes to the keys/values, widens the mask (padding
  masks from BERT-family text encoders included: prefixes are never masked) and calls the
  implementation the model was using (sdpa, eager, ...).

Only Hugging Face transformer backbones (``hf-vision``, ``hf-text``, ``minilm``, ``tiny-vit``)
have tokens; any other backbone is refused with :class:`PromptError`.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .registry import ConfigError

#: the backbones whose layers take prompts (named in every refusal)
PROMPTABLE_BACKBONES = ("hf-vision", "hf-text", "minilm", "tiny-vit")
PREFIX_ATTENTION = "proteus-prefix"


class PromptError(ConfigError):
    """A prompt method on a backbone without transformer layers, or a prompt of the wrong shape."""


@dataclass
class _Layer:
    block: nn.Module  # the encoder layer (a pre-hook/hook pair carries prompt tokens through it)
    attention: nn.Module  # the module that calls the attention function (gets the prefixes)


class PromptSlots:
    """The prompt/prefix slots of one backbone's encoder layers.

    ``PromptSlots(backbone)`` finds the layers (``backbone.encoder_layers()``) and their
    attention modules; ``with slots.active(tokens={0: p}, prefixes={2: (pk, pv)}):`` runs the
    backbone with them. ``num_layers`` and ``dim`` say what fits.
    """

    def __init__(self, backbone: nn.Module):
        layers = getattr(backbone, "encoder_layers", None)
        blocks = layers() if callable(layers) else None
        if not blocks:
            raise PromptError(
                f"prompt methods need a transformer backbone with token sequences; "
                f"{type(backbone).__name__} has none. Use one of: "
                f"{', '.join(PROMPTABLE_BACKBONES)}")
        self.backbone = backbone
        self.layers = [_Layer(block, _attention_of(block)) for block in blocks]
        config = self.layers[0].attention.config
        self.dim = int(config.hidden_size)
        self.num_heads = int(config.num_attention_heads)
        self.head_dim = self.dim // self.num_heads
        #: outputs of the prompt-token positions after the last layer, (B, P, D); None when the
        #: last pass had no prompt tokens
        self.prompt_outputs: torch.Tensor | None = None
        _register_prefix_attention()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def clip_layers(self, layers: list[int]) -> list[int]:
        """``layers`` that exist in this backbone (the papers' indices assume a 12-layer ViT)."""
        return [i for i in layers if 0 <= i < self.num_layers]

    @contextlib.contextmanager
    def active(self, tokens: dict[int, torch.Tensor] | None = None,
               prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> Iterator[PromptSlots]:
        """Run the backbone with prompt ``tokens[l]`` inserted at the input of layer ``l`` and
        key/value ``prefixes[l]`` in layer ``l``'s self-attention, each ``(P, D)`` or
        ``(B, P, D)``."""
        tokens, prefixes = tokens or {}, prefixes or {}
        for index in [*tokens, *prefixes]:
            if not 0 <= index < self.num_layers:
                raise PromptError(f"layer {index} does not exist: the backbone has "
                                  f"{self.num_layers} layers")
        for t in [*tokens.values(), *(x for kv in prefixes.values() for x in kv)]:
            if t.shape[-1] != self.dim or t.ndim not in (2, 3):
                raise PromptError(f"prompts must be (P, {self.dim}) or (B, P, {self.dim}), got "
                                  f"{tuple(t.shape)}")
        handles, swapped = [], []
        self.prompt_outputs = None
        carry = _Carry()
        try:
            if tokens:
                first = min(tokens)
                for index in range(first, self.num_layers):
                    block = self.layers[index].block
                    handles.append(block.register_forward_pre_hook(
                        carry.pre_hook(tokens.get(index)), with_kwargs=True))
                    handles.append(block.register_forward_hook(carry.hook))
            for index, (key, value) in prefixes.items():
                module = self.layers[index].attention
                config = copy.copy(module.config)
                base = module.config._attn_implementation or "eager"
                config._attn_implementation = PREFIX_ATTENTION
                module._proteus_prefix = (key, value, base)
                swapped.append((module, module.config))
                module.config = config
            yield self
            self.prompt_outputs = carry.tokens
        finally:
            for handle in handles:
                handle.remove()
            for module, config in swapped:
                module.config = config
                del module._proteus_prefix


class _Carry:
    """Carries the prompt tokens from a layer's output to the next layer's input."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None

    def pre_hook(self, new: torch.Tensor | None):
        def hook(module, args, kwargs):
            if new is not None:
                self.tokens = new
            if self.tokens is None:
                return None
            args, kwargs = list(args), dict(kwargs)
            hidden = args[0] if args else kwargs["hidden_states"]
            prompts = _batched(self.tokens, hidden.shape[0]).to(hidden.dtype)
            hidden = torch.cat([hidden[:, :1], prompts, hidden[:, 1:]], dim=1)
            if args:
                args[0] = hidden
            else:
                kwargs["hidden_states"] = hidden
            in_args = len(args) > 1
            mask = args[1] if in_args else kwargs.get("attention_mask")
            if mask is not None:
                mask = _insert_tokens_in_mask(mask, prompts.shape[1])
                if in_args:
                    args[1] = mask
                else:
                    kwargs["attention_mask"] = mask
            return tuple(args), kwargs

        return hook

    def hook(self, module, args, output):
        if self.tokens is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        n = self.tokens.shape[-2]
        self.tokens = hidden[:, 1:1 + n]
        hidden = torch.cat([hidden[:, :1], hidden[:, 1 + n:]], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _batched(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.ndim == 2:
        return t.unsqueeze(0).expand(batch, -1, -1)
    if t.shape[0] != batch:
        raise PromptError(f"per-sample prompts for {t.shape[0]} samples, batch of {batch}")
    return t


def _open(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A mask block that lets everything attend (True for boolean masks, 0 for additive ones)."""
    if mask.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool, device=mask.device)
    return torch.zeros(shape, dtype=mask.dtype, device=mask.device)


def _insert_tokens_in_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Widen a 4-D mask ``(B, 1, Lq, Lk)`` for ``n`` tokens inserted after the first: every query
    may attend to them, and they attend as the first ([CLS]) token does (to every real token)."""
    if mask.ndim != 4:
        raise PromptError(f"expected a 4-D attention mask, got shape {tuple(mask.shape)}")
    keys = _open(mask, (*mask.shape[:-1], n))
    mask = torch.cat([mask[..., :1], keys, mask[..., 1:]], dim=-1)
    if mask.shape[-2] == 1:  # broadcast over queries
        return mask
    rows = mask[..., :1, :].expand(*mask.shape[:-2], n, mask.shape[-1])
    return torch.cat([mask[..., :1, :], rows, mask[..., 1:, :]], dim=-2)


def _prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
    """The attention function of a prefixed module: its key/value prefixes ``(B|1, P, D)`` are
    split into heads and prepended, the mask opened for them, then the model's own
    implementation runs."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    key_prefix, value_prefix, base = module._proteus_prefix
    batch, heads, _, head_dim = key.shape

    def heads_of(p: torch.Tensor) -> torch.Tensor:
        p = _batched(p, batch).to(key.dtype)
        return p.reshape(batch, p.shape[1], heads, head_dim).transpose(1, 2)

    key = torch.cat([heads_of(key_prefix), key], dim=2)
    value = torch.cat([heads_of(value_prefix), value], dim=2)
    if attention_mask is not None:
        n = key.shape[2] - attention_mask.shape[-1]
        attention_mask = torch.cat([_open(attention_mask, (*attention_mask.shape[:-1], n)),
                                    attention_mask], dim=-1)
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if base == "eager" and eager is None:
        raise PromptError(f"{type(module).__name__}: no eager attention function to call")
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(base, eager)
    return attend(module, query, key, value, attention_mask, **kwargs)


def _register_prefix_attention() -> None:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if PREFIX_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(PREFIX_ATTENTION, _prefix_attention)


def _attention_of(block: nn.Module) -> nn.Module:
    """The submodule of an encoder layer that calls the attention function: the first one with a
    config and key/value projections (``k_proj`` in ViT/CLIP, ``key`` in BERT)."""
    for _, module in block.named_modules():
        if hasattr(module, "config") and (hasattr(module, "k_proj") or hasattr(module, "key")):
            return module
    raise PromptError(f"{type(block).__name__}: no self-attention module found for prefixes")


# -- the prompt parameterisations the methods share -------------------------------------------
def uniform_parameter(shape: tuple[int, ...], seed: int, low: float = -1.0,
                      high: float = 1.0) -> nn.Parameter:
    """Uniform(low, high) initialisation from ``seed`` (L2P/DualPrompt's ``uniform`` init for
    prompts and keys), global RNG untouched."""
    gen = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.rand(shape, generator=gen) * (high - low) + low)


def cosine_match(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query row (B, D) to every key (M, D): (B, M)."""
    return nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(keys, dim=-1).T


def gram_schmidt(new: torch.Tensor, old: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of ``new`` made orthonormal to each other and to the rows of ``old`` (CODA-Prompt's
    initialisation of a task's components against the frozen ones, section 3.3).

    Rows are orthogonalised in order; a row for which no direction is left (more rows than the
    dimension) is kept as its own unit vector, unorthogonalised: orthogonality is impossible there.
    """
    # an orthonormal basis of the old rows' span (trained rows are no longer orthogonal)
    basis = _orthonormalise([], old.double()) if old is not None and len(old) else []
    done = len(basis)
    basis = _orthonormalise(basis, new.double(), keep_all=True)
    return torch.stack(basis[done:]).to(new.dtype)


def _orthonormalise(basis: list[torch.Tensor], rows: torch.Tensor,
                    keep_all: bool = False) -> list[torch.Tensor]:
    """Modified Gram-Schmidt of ``rows`` against ``basis`` (orthonormal), appended in order; a
    row with no direction left is dropped, or with ``keep_all`` kept as its own unit vector."""
    basis = list(basis)
    for row in rows:
        v = row.clone()
        for b in basis:
            v = v - (v @ b) * b
        if v.norm() <= 1e-6 * row.norm().clamp_min(1e-12):
            if not keep_all:
                continue
            v = row  # the space is exhausted: orthogonality is impossible
        basis.append(v / v.norm().clamp_min(1e-12))
    return basis
