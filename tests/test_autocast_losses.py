"""Losses under autocast: computed inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` they
equal the same losses computed outside on the same inputs, and every matrix product inside them
(the similarity matrices) is float32 (recorded by a TorchDispatchMode, which sees the ops after
autocast has cast them). bfloat16 autocast on the CPU takes the same path as float16 autocast
on a GPU.

Tolerance: with autocast switched off inside the losses, the same float32 kernels run on the
same float32 values inside and outside, so the results agree to rounding noise at most; 1e-6
absolute is far below what a bfloat16 similarity matrix costs (8-bit mantissa: cosines off by
up to 2^-9 ~ 2e-3 each, losses off by ~1e-3).
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from unipt_plugin.modeling.losses import (IGNORE_INDEX, contrastive_loss, identity_loss, mlm_loss,
                                          part_identity_loss, ranking_loss)

_MATMULS = {"aten.mm.default", "aten.bmm.default", "aten.addmm.default", "aten.baddbmm.default",
            "aten.matmul.default", "aten.dot.default", "aten.mv.default"}
TOL = 1e-6


class MatmulRecorder(TorchDispatchMode):
    """Records (op name, output dtype, output shape) of every matrix product run inside it."""

    def __init__(self):
        super().__init__()
        self.products = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) in _MATMULS:
            self.products.append((str(func), out.dtype, tuple(out.shape)))
        return out


def _pairs(n=16, d=16, seed=0):
    """Image embeddings and matched, noisy text embeddings, bfloat16-representable values."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g)
    txt = img + 1.5 * torch.randn(n, d, generator=g)
    return img.bfloat16().float(), txt.bfloat16().float()


def _targets(n=16):
    return torch.arange(n) // 2  # two pairs per identity


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _as(dtype, grad):
    """A float32 gradient as a leaf of ``dtype`` receives it (rounded to that dtype), in float32."""
    return grad.to(dtype).float()


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_contrastive_under_autocast_is_the_float32_loss(in_dtype):
    img0, txt0 = _pairs()
    # float32 reference outside autocast
    img_r, txt_r = _leaves(img0, txt0)
    ref = contrastive_loss(img_r, txt_r, 2.5)
    ref.backward()
    # the same values (as float32 or as the bfloat16 an encoder gives under autocast) inside
    img_a, txt_a = _leaves(img0.to(in_dtype), txt0.to(in_dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), MatmulRecorder() as rec:
        got = contrastive_loss(img_a, txt_a, 2.5)
    got.backward()
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= TOL
    assert torch.allclose(img_a.grad.float(), _as(in_dtype, img_r.grad), atol=TOL, rtol=0)
    assert torch.allclose(txt_a.grad.float(), _as(in_dtype, txt_r.grad), atol=TOL, rtol=0)
    # the two (N, N) similarity matrices were products, both float32
    assert [shape for _, _, shape in rec.products].count((16, 16)) == 2, rec.products
    assert all(dtype == torch.float32 for _, dtype, _ in rec.products), rec.products


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_ranking_under_autocast_is_the_float32_loss(in_dtype):
    img0, txt0 = _pairs()
    targets = _targets()
    img_r, txt_r = _leaves(img0, txt0)
    ref = ranking_loss(img_r, txt_r, targets, 0.2, torch.Generator().manual_seed(3))
    ref.backward()
    assert ref.item() > 1.0  # semi-hard negatives were found and drawn: the comparison means something
    img_a, txt_a = _leaves(img0.to(in_dtype), txt0.to(in_dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), MatmulRecorder() as rec:
        got = ranking_loss(img_a, txt_a, targets, 0.2, torch.Generator().manual_seed(3))
    got.backward()
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= TOL
    assert torch.allclose(img_a.grad.float(), _as(in_dtype, img_r.grad), atol=TOL, rtol=0)
    assert torch.allclose(txt_a.grad.float(), _as(in_dtype, txt_r.grad), atol=TOL, rtol=0)
    assert (16, 16) in [shape for _, _, shape in rec.products], rec.products
    assert all(dtype == torch.float32 for _, dtype, _ in rec.products), rec.products


def test_identity_and_mlm_losses_under_autocast_are_the_float32_losses():
    g = torch.Generator().manual_seed(1)
    # classifier outputs are bfloat16 under autocast: feed the same bfloat16 logits in and out
    li, lt = torch.randn(6, 5, generator=g).bfloat16(), torch.randn(6, 5, generator=g).bfloat16()
    pi, pt = torch.randn(6, 3, 5, generator=g).bfloat16(), torch.randn(6, 3, 5, generator=g).bfloat16()
    y = torch.tensor([0, 1, 4, 2, 2, 3])
    mlm_logits = torch.randn(2, 7, 11, generator=g).bfloat16()
    labels = torch.full((2, 7), IGNORE_INDEX)
    labels[0, 2], labels[1, 0], labels[1, 5] = 3, 10, 0

    def all_losses():
        return [identity_loss(li, lt, y), part_identity_loss(pi, pt, y), mlm_loss(mlm_logits, labels)]

    outside = all_losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = all_losses()
    for a, b in zip(inside, outside):
        assert a.dtype == torch.float32 and abs(a.item() - b.item()) <= TOL
    # independent value of the identity loss: float32 cross-entropies of the same logits
    expected = F.cross_entropy(li.float(), y) + F.cross_entropy(lt.float(), y)
    assert abs(inside[0].item() - expected.item()) <= TOL
