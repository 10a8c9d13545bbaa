"""The prompt family (l2p, dualprompt, coda-prompt, hide-prompt) and the one prompt/prefix mechanism under it
(``proteus.prompting``), on the tiny random ViT and a tiny random BERT.

Key-query matching is tested on queries made separable on purpose: the tiny *random* ViT gives
every input nearly the same [CLS] direction (cosine ~1 between tasks), which no key can tell
apart, so the run's frozen-feature cache is filled with per-task query directions (orthogonal
task directions plus small noise) before learning. Everything else about the learners (prompted
forward on real images, training loop, head) runs as in a real run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_bert, tiny_config_dict, tiny_text_config_dict

from proteus.assemble import assemble, build_learner
from proteus.backbones import BACKBONES
from proteus.config import validate
from proteus.data import stack
from proteus.learners import LEARNERS
from proteus.prompting import PromptError, PromptSlots

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT_LEARNERS = ["l2p", "dualprompt", "coda-prompt", "hide-prompt"]
FAST = {"epochs": 1, "batch_size": 16}


def _run(tmp_path, name: str, layers: int = 5, **learner):
    raw = tiny_config_dict(tmp_path / "runs", name=name,
                           backbone={"name": "tiny-vit", "image_size": 16, "num_layers": layers},
                           learner={"name": name, **learner})
    return assemble(validate(raw))


def _separable_queries(run, scale: float = 0.1) -> None:
    """Fill the run's frozen-feature cache: task t's samples get query direction e_t + noise."""
    d = run.learner.backbone.embed_dim
    gen = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(d, d, generator=gen))[0].T
    cache = run.ctx.caches.setdefault("frozen", {})
    for task in run.scenario.tasks:
        for part in (task.train, task.test):
            for sid in part.ids.tolist():
                noise = scale * torch.randn(d, generator=gen)
                cache[sid] = (directions[task.index] + noise).numpy().astype(np.float32)


def _layer_outputs(backbone, x, slots=None, **prompts) -> list[torch.Tensor]:
    """Each encoder layer's output hidden states (without the prompt positions)."""
    outs: list[torch.Tensor] = []
    layers = backbone.encoder_layers()
    scope = slots.active(**prompts) if slots else torch.no_grad()
    with torch.no_grad(), scope:
        # registered after the slots' hooks: they see the sequence with the prompts taken out
        handles = [layer.register_forward_hook(
            lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).clone()))
            for layer in layers]
        try:
            backbone(x)
        finally:
            for h in handles:
                h.remove()
    return outs


# -- the mechanism -------------------------------------------------------------------------------
def test_prefixes_and_tokens_land_in_their_layers_only():
    backbone = BACKBONES.build("tiny-vit", {"num_layers": 4})
    slots = PromptSlots(backbone)
    x = torch.randn(3, 3, 16, 16)
    frozen = _layer_outputs(backbone, x)
    d = slots.dim
    # per-sample key/value prefixes in layer 2
    prefixed = _layer_outputs(backbone, x, slots,
                              prefixes={2: (torch.randn(3, 4, d), torch.randn(3, 4, d))})
    # shared prompt tokens at the input of layer 1
    tokened = _layer_outputs(backbone, x, slots, tokens={1: torch.randn(5, d)})
    for i in range(4):
        for got, first in ((prefixed, 2), (tokened, 1)):
            if i < first:
                torch.testing.assert_close(got[i], frozen[i], rtol=0, atol=0)
            else:
                assert (got[i] - frozen[i]).abs().max() > 1e-4, (first, i)
    assert slots.prompt_outputs.shape == (3, 5, d)  # the prompt positions after the last layer
    # outside the block the backbone is the pre-trained network, bit for bit
    for got, want in zip(_layer_outputs(backbone, x), frozen):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_prompts_get_gradients_and_sdpa_equals_eager():
    backbone = BACKBONES.build("tiny-vit", {"num_layers": 2})
    slots = PromptSlots(backbone)
    x = torch.randn(2, 3, 16, 16)
    tokens = torch.randn(2, 3, slots.dim, requires_grad=True)
    key = torch.randn(4, slots.dim, requires_grad=True)
    out = {}
    for impl in ("sdpa", "eager"):
        backbone.model.config._attn_implementation = impl
        with slots.active(tokens={0: tokens}, prefixes={1: (key, key)}):
            out[impl] = backbone(x)
    backbone.model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(out["sdpa"], out["eager"], rtol=1e-5, atol=1e-5)
    (out["sdpa"] ** 2).sum().backward()  # (a LayerNorm output's plain sum is constant)
    assert tokens.grad.abs().sum() > 0 and key.grad.abs().sum() > 0


def test_text_backbone_masks_padding_and_opens_it_for_prompts(tmp_path):
    """Tiny BERT: the same text padded to two lengths embeds identically with prompt tokens and
    prefixes (padding stays masked, prompts are attended), under sdpa and eager attention."""
    from proteus.backbones.hf import HFText, HFTextOptions

    bert = tiny_bert(tmp_path / "bert")
    short = HFText(HFTextOptions(model=str(bert), local_files_only=True, max_length=16))
    long = HFText(HFTextOptions(model=str(bert), local_files_only=True, max_length=40))
    texts = ["abc", "abcdefg hij"]
    gen = torch.Generator().manual_seed(0)
    tokens = {0: torch.randn(2, 3, 32, generator=gen)}
    prefixes = {1: (torch.randn(4, 32, generator=gen), torch.randn(4, 32, generator=gen))}
    for impl in ("sdpa", "eager"):
        got = []
        for backbone in (short, long):
            backbone.model.config._attn_implementation = impl
            inputs = backbone.preprocess(texts)
            assert inputs["attention_mask"].sum(1).min() < inputs["attention_mask"].shape[1]
            with torch.no_grad(), PromptSlots(backbone).active(tokens, prefixes):
                got.append(backbone(inputs))
        torch.testing.assert_close(got[0], got[1], rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            assert (got[0] - short(short.preprocess(texts))).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["l2p", "dualprompt"])
def test_text_learners_run_on_tiny_bert(tmp_path, name):
    bert = tiny_bert(tmp_path / "bert")
    run = assemble(validate(tiny_text_config_dict(tmp_path / "runs", bert,
                                                  learner={"name": name, **FAST})))
    for task in run.scenario.tasks:
        run.learner.learn_task(task, run.ctx)
    test = stack([t.test for t in run.scenario.tasks])
    assert run.learner.scores(test, run.ctx).shape == (len(test), 4)


def test_cnn_backbone_is_refused_by_name():
    backbone = BACKBONES.build("efficientnet-lite0", {"image_size": 32, "pretrained": False})
    for name in PROMPT_LEARNERS:
        options = LEARNERS.parse_options(name, {}, "learner")
        with pytest.raises(PromptError, match="hf-vision, hf-text, minilm, tiny-vit"):
            LEARNERS.create(name, options, backbone=backbone)


# -- the learners' defining properties -------------------------------------------------------------
def test_dualprompt_keys_pick_each_tasks_e_prompt(tmp_path):
    run = _run(tmp_path, "dualprompt", epochs=5, batch_size=16, lr=0.1, scale_lr=False)
    _separable_queries(run)
    learner = run.learner
    for task in run.scenario.tasks:
        learner.learn_task(task, run.ctx)
    assert len(learner.e) == len(run.scenario.tasks)
    test = stack([t.test for t in run.scenario.tasks])
    truth = np.concatenate([np.full(len(t.test), t.index) for t in run.scenario.tasks])
    pred = learner.predict(test, run.ctx)
    assert (pred.tasks == truth).mean() >= 0.95
    # the E-prompt really conditions the prediction: another task's prompt changes the logits
    wrong = (truth + 1) % len(run.scenario.tasks)
    assert not torch.allclose(learner._logits(test, run.ctx, truth),
                              learner._logits(test, run.ctx, wrong))


def test_l2p_queries_select_the_prompts_their_task_trained(tmp_path):
    run = _run(tmp_path, "l2p", epochs=5, batch_size=16, lr=0.1, scale_lr=False, top_k=1)
    _separable_queries(run)
    learner, trained = run.learner, []
    for task in run.scenario.tasks:
        before = learner.prompts.detach().clone()
        learner.learn_task(task, run.ctx)
        changed = (learner.prompts.detach() - before).abs().amax(dim=(1, 2)) > 0
        trained.append(set(changed.nonzero().flatten().tolist()))
    assert len(set().union(*trained)) > 1  # different tasks trained different prompts
    for task in run.scenario.tasks:
        idx, sim = learner.select(torch.as_tensor(run.ctx.features(task.test)))
        hits = np.mean([int(i) in trained[task.index] for i in idx[:, 0]])
        assert hits >= 0.95, (task.index, trained, idx[:, 0].tolist())
        assert sim.gather(1, idx).mean() > 0.5  # the keys were pulled to their queries


def test_coda_components_orthogonal_new_against_old(tmp_path):
    run = _run(tmp_path, "coda-prompt", layers=2, pool_size=6, **FAST)  # 2 per task (3 tasks)
    learner = run.learner
    tasks = run.scenario.tasks
    learner.learn_task(tasks[0], run.ctx)  # task 0's components trained, now frozen
    learner._begin_task(tasks[1], run.ctx)
    for i in range(len(learner.layers)):
        for name in ("p", "k", "a"):
            old = learner.frozen[i][name].flatten(1)
            new = learner.new[i][name].detach().flatten(1)
            assert len(old) == len(new) == 2
            torch.testing.assert_close(new @ new.T, torch.eye(2), atol=1e-5, rtol=0)
            assert (new @ old.T).abs().max() < 1e-5, name
    # a first task's components: orthonormal among themselves at init
    fresh = build_learner(run.config.learner, learner.backbone, seed=3)
    fresh._begin_task(tasks[0], run.ctx)
    k = fresh.new[0]["k"].detach()
    torch.testing.assert_close(k @ k.T, torch.eye(len(k)), atol=1e-5, rtol=0)


def test_coda_prompt_is_an_attention_weighted_sum(tmp_path):
    run = _run(tmp_path, "coda-prompt", layers=2, pool_size=6, **FAST)
    learner = run.learner
    learner.learn_task(run.scenario.tasks[0], run.ctx)
    q = torch.randn(4, learner.slots.dim)
    _, prefixes = learner._prompts(q, train=False)
    c = learner.frozen[0]
    alpha = torch.nn.functional.cosine_similarity(q[:, None] * c["a"][None], c["k"][None], dim=2)
    want = torch.einsum("bm,mld->bld", alpha, c["p"])
    half = learner.options.prompt_length // 2
    torch.testing.assert_close(prefixes[0][0], want[:, :half])
    torch.testing.assert_close(prefixes[0][1], want[:, half:])
    assert sorted(prefixes) == [0, 1]  # layers 0-4 clipped to the 2-layer backbone


def test_hide_prompt_infers_tasks_and_aligns_every_head_row(tmp_path):
    run = _run(tmp_path, "hide-prompt", layers=3, ca_epochs=5, **FAST)
    _separable_queries(run)  # the frozen embedding TII's class Gaussians are fitted on
    learner, tasks = run.learner, run.scenario.tasks
    learner.learn_task(tasks[0], run.ctx)
    first_rows = learner.head_w.clone()
    learner.learn_task(tasks[1], run.ctx)
    old = tasks[0].classes
    # TAP: alignment on pseudo-features of every class retrains the old task's rows too (the
    # task's own cross-entropy never touches them)
    assert (learner.head_w[old] - first_rows[old]).abs().max() > 1e-4
    assert learner.tap.seen.sum() == learner.tii.seen.sum() == len(old) + len(tasks[1].classes)
    test = stack([t.test for t in tasks[:2]])
    truth = np.concatenate([np.full(len(t.test), t.index) for t in tasks[:2]])
    pred = learner.predict(test, run.ctx)
    assert (pred.tasks == truth).mean() >= 0.95  # TII on the class Gaussians
    # the inferred task's prompt is the one used: with the true task given, the same classes
    given = learner._logits(test, run.ctx, truth).argmax(1).numpy()
    same = pred.tasks == truth
    np.testing.assert_array_equal(pred.classes[same], given[same])


@pytest.mark.parametrize("name", PROMPT_LEARNERS)
def test_state_round_trip_predicts_the_same(tmp_path, name):
    run = _run(tmp_path, name, layers=3, **FAST)
    for task in run.scenario.tasks[:2]:
        run.learner.learn_task(task, run.ctx)
    test = stack([t.test for t in run.scenario.tasks])
    tensors, meta = run.learner.state()
    loaded = build_learner(run.config.learner, run.learner.backbone, seed=run.config.seed)
    loaded.load_state({k: v.clone() for k, v in tensors.items()}, meta)
    np.testing.assert_array_equal(loaded.scores(test, run.ctx), run.learner.scores(test, run.ctx))
    # the embedding a head-swap reads is the one the head reads
    want = run.learner.embedding(test, run.ctx) @ run.learner.head_w.numpy().T
    np.testing.assert_allclose(run.learner.scores(test, run.ctx),
                               want + run.learner.head_b.numpy(), rtol=1e-5, atol=1e-5)
    a, b = run.learner.predict(test, run.ctx), loaded.predict(test, run.ctx)
    np.testing.assert_array_equal(a.classes, b.classes)
    if a.tasks is not None:
        np.testing.assert_array_equal(a.tasks, b.tasks)
