"""PGU: shapes, one parameter set for both modalities, masked padding, normalisation, and the
forward against an independent re-implementation of the pre-norm cross-attention decoder."""
import math

import pytest
import torch
import torch.nn.functional as F

from unipt_plugin.modeling.pgu import PGU


def _pgu(**kw):
    torch.manual_seed(0)
    args = dict(image_dim=12, text_dim=20, dim=16, num_prototypes=3, num_layers=2, num_heads=4,
                ffn_dim=24, dropout=0.1, part_dim=8)
    args.update(kw)
    return PGU(**args).eval()


def _reference(pgu, tokens, modality, mask=None):
    """Hand-written forward: proj -> per layer [LN(q), LN(kv) with the same LN, multi-head
    attention, residual; LN2, Linear-ReLU-Linear, residual] -> per-prototype projection."""
    proj = pgu.input_proj[modality]
    x = tokens @ proj.weight.t() + proj.bias
    b, l, d = x.shape
    q = pgu.prototypes.unsqueeze(0).expand(b, -1, -1)
    for layer in pgu.layers:
        ln = layer.norm
        nq = F.layer_norm(q, (d,), ln.weight, ln.bias, ln.eps)
        nk = F.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)
        w, bias = layer.attn.in_proj_weight, layer.attn.in_proj_bias
        qq, kk, vv = nq @ w[:d].t() + bias[:d], nk @ w[d:2 * d].t() + bias[d:2 * d], nk @ w[2 * d:].t() + bias[2 * d:]
        h = layer.attn.num_heads
        split = lambda t: t.reshape(b, -1, h, d // h).transpose(1, 2)
        scores = split(qq) @ split(kk).transpose(-1, -2) / math.sqrt(d // h)
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        out = (scores.softmax(-1) @ split(vv)).transpose(1, 2).reshape(b, -1, d)
        q = q + out @ layer.attn.out_proj.weight.t() + layer.attn.out_proj.bias
        n2 = layer.norm_ffn
        f1, f2 = layer.ffn[0], layer.ffn[3]
        hidden = torch.relu(F.layer_norm(q, (d,), n2.weight, n2.bias, n2.eps) @ f1.weight.t() + f1.bias)
        q = q + hidden @ f2.weight.t() + f2.bias
    parts = torch.stack([q[:, p] @ pgu.part_proj[p].t() for p in range(q.shape[1])], dim=1)
    return parts, F.normalize(parts.flatten(1), dim=-1)


def test_shapes_normalisation_and_reference_forward():
    pgu = _pgu()
    img = torch.randn(2, 7, 12)
    parts, feat = pgu(img, "image")
    assert parts.shape == (2, 3, 8) and feat.shape == (2, 24) and pgu.out_dim == 24
    assert torch.allclose(feat.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(feat, F.normalize(parts.flatten(1), dim=-1), atol=1e-6)
    ref_parts, ref_feat = _reference(pgu, img, "image")
    assert torch.allclose(parts, ref_parts, atol=1e-5) and torch.allclose(feat, ref_feat, atol=1e-6)
    txt = torch.randn(2, 5, 20)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.allclose(pgu(txt, "text", mask)[0], _reference(pgu, txt, "text", mask)[0], atol=1e-5)


def test_one_parameter_set_serves_both_modalities():
    pgu = _pgu()
    names = [n for n, _ in pgu.named_parameters()]
    # only the input projections are per modality
    assert [n for n in names if "image" in n] == ["input_proj.image.weight", "input_proj.image.bias"]
    assert [n for n in names if "text" in n] == ["input_proj.text.weight", "input_proj.text.bias"]
    shared = {n for n in names if not n.startswith("input_proj.")}
    for modality, tokens in (("image", torch.randn(2, 7, 12)), ("text", torch.randn(2, 5, 20))):
        pgu.zero_grad()
        pgu(tokens, modality)[0].sum().backward()
        got = {n for n, p in pgu.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert shared <= got  # prototypes, every decoder layer and the part projections


def test_padding_changes_nothing_when_masked():
    pgu = _pgu()
    txt = torch.randn(3, 9, 20)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1, 7:] = 0
    other = txt.clone()
    other[mask == 0] = torch.randn(int((mask == 0).sum()), 20) * 100
    a, b = pgu(txt, "text", mask), pgu(other, "text", mask)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-6)
    # and equal to the unpadded sequence on its own
    alone = pgu(txt[:1, :4], "text")[0]
    assert torch.allclose(a[0][:1], alone, atol=1e-5)
    # without the mask the padding does matter (the test can fail)
    assert not torch.allclose(pgu(txt, "text")[0], pgu(other, "text")[0], atol=1e-3)


def test_prototypes_do_not_attend_to_each_other():
    pgu = _pgu()
    img = torch.randn(2, 7, 12)
    before = pgu(img, "image")[0]
    with torch.no_grad():
        pgu.prototypes[0] += 1.0
    after = pgu(img, "image")[0]
    assert not torch.allclose(before[:, 0], after[:, 0])
    assert torch.allclose(before[:, 1:], after[:, 1:], atol=1e-6)  # no self-attention


def test_bad_inputs_raise_clear_errors():
    pgu = _pgu()
    with pytest.raises(ValueError, match="modality"):
        pgu(torch.randn(1, 3, 12), "audio")
    with pytest.raises(ValueError, match="divisible"):
        PGU(12, 20, dim=18, num_heads=4)


def test_residual_stream_stays_float32_under_autocast():
    # bfloat16 autocast on the CPU takes the path of float16 autocast on a GPU: the decoder's
    # matmuls run in bfloat16, but the queries carried from layer to layer (the residual
    # stream) must stay float32, and so must the returned feature.
    pgu = _pgu(dropout=0.0)
    seen = []
    for layer in pgu.layers:
        layer.register_forward_pre_hook(lambda m, args: seen.append(("in", args[0].dtype)))
        layer.register_forward_hook(lambda m, args, out: seen.append(("out", out.dtype)))
    img = torch.randn(2, 7, 12)
    txt, mask = torch.randn(2, 5, 20), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref_img, ref_txt = pgu(img, "image"), pgu(txt, "text", mask)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts, feat = pgu(img, "image")
        _, feat_txt = pgu(txt, "text", mask)
    assert len(seen) == 2 * 2 * len(pgu.layers)  # in and out of every layer, both modalities
    assert all(dtype == torch.float32 for _, dtype in seen), seen
    assert feat.dtype == torch.float32 and feat_txt.dtype == torch.float32
    # the bfloat16 matmuls cost a little precision, not the result (outputs of norm 1)
    assert torch.allclose(feat, ref_img[1], atol=2e-2) and torch.allclose(feat_txt, ref_txt[1], atol=2e-2)
    assert torch.allclose(parts.float(), ref_img[0], atol=5e-2, rtol=2e-2)


def test_built_from_cfg_equals_built_from_plain_arguments():
    from unipt_plugin.config import get_unipt_cfg

    cfg = get_unipt_cfg()
    p = cfg.MODEL.PGU
    p.DIM, p.NUM_PROTOTYPES, p.NUM_LAYERS, p.NUM_HEADS, p.FFN_DIM, p.DROPOUT, p.PART_DIM = 16, 3, 2, 4, 24, 0.1, 8
    torch.manual_seed(0)
    from_cfg = PGU(cfg, image_dim=12, text_dim=20).eval()
    plain = _pgu()  # the same sizes as plain arguments, same seed
    sa, sb = from_cfg.state_dict(), plain.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert from_cfg.layers[0].attn.dropout == 0.1 and from_cfg.out_dim == 24
    img = torch.randn(2, 7, 12)
    assert all(torch.equal(a, b) for a, b in zip(from_cfg(img, "image"), plain(img, "image")))
    # positional token widths and an overriding keyword work as with fast-reid's other modules
    assert PGU(cfg, 12, 20).num_prototypes == 3 and PGU(cfg, 12, 20, num_prototypes=5).num_prototypes == 5
    torch.manual_seed(1)
    assert not torch.equal(PGU(cfg, image_dim=12, text_dim=20).prototypes, plain.prototypes)
