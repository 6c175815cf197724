"""Memory and speed knobs of the encoders.

Gradient checkpointing (MODEL.VISUAL.GRAD_CHECKPOINTING, MODEL.TEXT.GRAD_CHECKPOINTING) for the
timm ViT, the CLIP image tower, BERT (small and the shipped MiniLM) and the CLIP text tower:
the loss and every gradient equal those without it (tiny models, no dropout / drop-path), and
it is really active: the library's flag is set and a block runs its forward twice per training
step (once in forward, once recomputed in backward) instead of once.

MODEL.COMPILE: off by default; on, the encoders are compiled in place and the state_dict keys
do not change.
"""
import os

import pytest
import torch
from fastreid.modeling.backbones import build_backbone
from torch import nn

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.modeling.meta_arch import UniPTPretrain, UniPTT2I
from unipt_plugin.modeling.text_encoders import BertTextEncoder, build_text_encoder

TOL = 1e-6


def _no_dropout(module: nn.Module) -> nn.Module:
    """Every dropout of ``module`` at p = 0 (nn.Dropout modules, and the attention-dropout
    probability transformers' BERT attention keeps as a float)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout_prob", None), float):
            m.dropout_prob = 0.0
    return module


def _step(module: nn.Module, block: nn.Module, run):
    """One training-mode forward + backward of ``run(module)`` (a scalar): (loss, gradients by
    name, calls of ``block`` during it, recomputations included)."""
    calls = []
    # a pre-hook: the non-reentrant checkpoint stops recomputing as soon as it has what backward
    # needs, so a recomputed block may never return (and a forward hook would not see it)
    handle = block.register_forward_pre_hook(lambda m, args: calls.append(1))
    module.train()
    module.zero_grad(set_to_none=True)
    loss = run(module)
    loss.backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


def _compare(plain, checkpointed, block_of, run):
    loss0, grads0, calls0 = _step(plain, block_of(plain), run)
    loss1, grads1, calls1 = _step(checkpointed, block_of(checkpointed), run)
    assert calls0 == 1 and calls1 == 2  # recomputed during backward: checkpointing is active
    assert abs(loss1.item() - loss0.item()) <= TOL
    assert grads0.keys() == grads1.keys() and len(grads0) > 0
    for name in grads0:
        assert torch.allclose(grads1[name], grads0[name], atol=TOL, rtol=0), name


def _scalar(tokens: torch.Tensor) -> torch.Tensor:
    """A loss of tokens (B, L, C) whose gradient reaches every token and the first one more."""
    return (tokens ** 2).mean() + tokens[:, 0].sum()


def _images(h=64, w=32, seed=0):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _ids(vocab, n=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 8:] = 0
    return ids, mask


def _visual_cfg(name, arch, on):
    cfg = get_unipt_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.VISUAL.ARCH = arch
    cfg.MODEL.VISUAL.DEPTH, cfg.MODEL.VISUAL.EMBED_DIM, cfg.MODEL.VISUAL.NUM_HEADS = 2, 64, 2
    cfg.MODEL.VISUAL.DROP_PATH = 0.0
    cfg.MODEL.VISUAL.GRAD_CHECKPOINTING = on
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    return cfg


def _built_pair(build):
    """The same model (same seed) without and with checkpointing."""
    torch.manual_seed(0)
    plain = build(False)
    torch.manual_seed(0)
    return plain, build(True)


# ------------------------------------------------------------------ visual backbones
def test_vit_gradient_checkpointing():
    plain, ckpt = _built_pair(lambda on: build_backbone(
        _visual_cfg("build_timm_vit_backbone", "vit_tiny_patch16_224", on)))
    assert not plain.vit.grad_checkpointing and ckpt.vit.grad_checkpointing
    x = _images()
    _compare(plain, ckpt, lambda m: m.vit.blocks[0], lambda m: _scalar(m(x)))


def test_clip_visual_gradient_checkpointing():
    plain, ckpt = _built_pair(lambda on: build_backbone(
        _visual_cfg("build_clip_visual_backbone", "UniPT-CLIP-tiny", on)))
    assert not plain.tower.transformer.grad_checkpointing and ckpt.tower.transformer.grad_checkpointing
    x = _images()
    _compare(plain, ckpt, lambda m: m.tower.transformer.resblocks[0], lambda m: _scalar(m(x)))


def test_clip_visual_without_open_clip_support_is_refused(monkeypatch):
    import open_clip.transformer

    monkeypatch.delattr(open_clip.transformer.VisionTransformer, "set_grad_checkpointing")
    with pytest.raises(ValueError, match="GRAD_CHECKPOINTING.*set it to False"):
        build_backbone(_visual_cfg("build_clip_visual_backbone", "UniPT-CLIP-tiny", True))
    build_backbone(_visual_cfg("build_clip_visual_backbone", "UniPT-CLIP-tiny", False))  # off: fine


# ------------------------------------------------------------------ text encoders
def _text_cfg(name, on, **text):
    cfg = get_unipt_cfg()
    cfg.MODEL.TEXT.NAME = name
    cfg.MODEL.TEXT.GRAD_CHECKPOINTING = on
    cfg.MODEL.TEXT.update(**text)
    cfg.INPUT.TEXT.MAX_LENGTH = 32
    return cfg


def _text_loss(ids, mask):
    return lambda m: _scalar(m(ids, mask))


def test_small_bert_gradient_checkpointing():
    plain, ckpt = _built_pair(lambda on: _no_dropout(build_text_encoder(
        _text_cfg("SmallBertTextEncoder", on, HIDDEN_SIZE=64, NUM_LAYERS=2, NUM_HEADS=2, INTERMEDIATE_SIZE=128))))
    assert not plain.bert.is_gradient_checkpointing and ckpt.bert.is_gradient_checkpointing
    ids, mask = _ids(plain.vocab_size)
    # dropout really is off: two training-mode forwards from different RNG states agree
    plain.train()
    torch.manual_seed(1)
    a = plain(ids, mask)
    torch.manual_seed(2)
    assert torch.equal(a, plain(ids, mask))
    _compare(plain, ckpt, lambda m: m.bert.encoder.layer[0], _text_loss(ids, mask))


def test_shipped_minilm_gradient_checkpointing():
    plain, ckpt = (_no_dropout(BertTextEncoder(max_length=32, grad_checkpointing=on)) for on in (False, True))
    assert ckpt.bert.is_gradient_checkpointing and len(ckpt.bert.encoder.layer) == 6
    ids, mask = _ids(plain.vocab_size, length=10)
    _compare(plain, ckpt, lambda m: m.bert.encoder.layer[3], _text_loss(ids, mask))


def test_clip_text_gradient_checkpointing():
    plain, ckpt = _built_pair(lambda on: build_text_encoder(_text_cfg("CLIPTextEncoder", on, ARCH="UniPT-CLIP-tiny")))
    assert not plain.transformer.grad_checkpointing and ckpt.transformer.grad_checkpointing
    ids, mask = _ids(plain.vocab_size)
    _compare(plain, ckpt, lambda m: m.transformer.resblocks[1], _text_loss(ids, mask))


def test_clip_text_without_open_clip_support_is_refused(monkeypatch):
    from unipt_plugin.modeling.text_encoders import clip_text

    real = clip_text.create_clip

    def without_switch(arch, **kwargs):
        clip = real(arch, **kwargs)
        del clip.transformer.grad_checkpointing
        return clip

    monkeypatch.setattr(clip_text, "create_clip", without_switch)
    with pytest.raises(ValueError, match="GRAD_CHECKPOINTING.*set it to False"):
        build_text_encoder(_text_cfg("CLIPTextEncoder", True, ARCH="UniPT-CLIP-tiny"))


# ------------------------------------------------------------------ whole model
def _tiny_t2i(on: bool) -> UniPTT2I:
    from fastreid.modeling.meta_arch import build_model

    cfg = get_unipt_cfg()
    cfg.merge_from_file("configs/Tiny/t2i.yml")
    cfg.merge_from_list(["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.PGU.DROPOUT", "0.0",
                         "MODEL.VISUAL.GRAD_CHECKPOINTING", str(on), "MODEL.TEXT.GRAD_CHECKPOINTING", str(on)])
    torch.manual_seed(0)
    return _no_dropout(build_model(cfg))


def test_t2i_losses_and_gradients_do_not_depend_on_checkpointing():
    plain, ckpt = _tiny_t2i(False), _tiny_t2i(True)
    g = torch.Generator().manual_seed(3)
    ids, mask = _ids(30522, n=4, length=12, seed=3)
    batch = {"images": torch.rand(4, 3, 64, 32, generator=g) * 255, "text_ids": ids, "text_mask": mask,
             "targets": torch.tensor([0, 0, 1, 3]), "seeds": torch.arange(4)}  # seeds: same semi-hard draws
    results = []
    for model in (plain, ckpt):
        model.train()
        losses = model(batch)
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = results
    assert l0.keys() == l1.keys() == {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}
    for k in l0:
        assert abs(l0[k].item() - l1[k].item()) <= TOL, k
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=TOL, rtol=0), name


# ------------------------------------------------------------------ MODEL.COMPILE
class _Visual(nn.Module):
    def __init__(self):
        super().__init__()
        self.out_dim = 16
        self.patch = nn.Conv2d(3, 16, 8, 8)

    def forward(self, x):
        return self.patch(x).flatten(2).transpose(1, 2)


class _Text(nn.Module):
    def __init__(self, vocab=40):
        super().__init__()
        self.out_dim, self.vocab_size = 16, vocab
        self.emb = nn.Embedding(vocab, 16)
        self.mix = nn.Linear(16, 16)

    def forward(self, ids, mask):
        return torch.tanh(self.mix(self.emb(ids))) * mask.unsqueeze(-1)


class _Tokenizer:
    special_ids, mask_id, vocab_size = [0, 1, 2, 3], 3, 40

    @staticmethod
    def word_start_mask(ids):
        return torch.ones_like(ids, dtype=torch.bool)


def _arch_cfg(compile_: bool | None):
    cfg = get_unipt_cfg()
    if compile_ is not None:
        cfg.MODEL.COMPILE = compile_
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.T2I.EMBED_DIM = cfg.MODEL.PRETRAIN.EMBED_DIM = 16
    cfg.MODEL.PGU.update(NUM_PROTOTYPES=2, DIM=16, NUM_HEADS=2, FFN_DIM=32, PART_DIM=8)
    return cfg


def _build(arch, compile_):
    torch.manual_seed(0)
    if arch == "t2i":
        return UniPTT2I(_arch_cfg(compile_), _Visual(), _Text())
    return UniPTPretrain(_arch_cfg(compile_), _Visual(), _Text(), _Tokenizer())


def _compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.mark.parametrize("arch", ["t2i", "pretrain"])
def test_compile_is_off_by_default_and_keeps_state_dict_keys(arch):
    assert get_unipt_cfg().MODEL.COMPILE is False
    default, on = _build(arch, None), _build(arch, True)
    assert not any(_compiled(m) for m in default.modules())
    assert _compiled(on.visual) and _compiled(on.text)
    assert [n for n, m in on.named_modules() if _compiled(m)] == ["visual", "text"]
    assert list(on.state_dict()) == list(default.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), default.state_dict().values()))
    # a checkpoint of the eager model loads into the compiled one, key for key
    on.load_state_dict(default.state_dict(), strict=True)


@pytest.mark.skipif(os.environ.get("UNIPT_COMPILE_TEST") != "1",
                    reason="a real torch.compile of these two tiny encoders took about 60 s on the project's 2 "
                           "shared CPU cores (over the 30 s a test may take here); UNIPT_COMPILE_TEST=1 runs it")
def test_compiled_encoders_give_the_eager_features():
    eager, compiled = _build("t2i", False).eval(), _build("t2i", True).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 16, generator=g) * 255
    ids, mask = _ids(40, n=4, length=10)
    with torch.no_grad():
        for batch in ({"images": images}, {"text_ids": ids, "text_mask": mask}):
            assert torch.allclose(compiled(batch), eager(batch), atol=1e-5)
