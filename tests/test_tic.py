"""PLIP's TIC (text-guided image colourisation) in pre-training: the visual encoder's input is gray
(BT.601, against PIL and torchvision), the target is the image's chroma (against PIL's YCbCr),
the loss against F.smooth_l1_loss, TIC alone trains the visual encoder, TIC.SAMPLES, the refusals,
and the demo's colourise / figure: the colourisations of one image differ only through the text."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import rgb_to_grayscale

from standins import StandInText, StandInVisual
from unipt_plugin.modeling.losses.tic import chroma_target
from unipt_plugin.modeling.plip_tasks import gray_image, luma, rgb_to_chroma, ycbcr_to_rgb
from unipt_plugin.modeling.plip_tasks.colourise import colourise, write_colourisation_figure

VOCAB = 60


class GridVisual(StandInVisual):
    """The stand-in visual encoder (8x8 patches of 32x16 images) with its 4x2 patch grid."""

    grid_size = (4, 2)


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 16), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------- colour space
def test_gray_view_is_bt601_luma_in_every_channel():
    images = _images()
    gray = gray_image(images)
    assert gray.shape == images.shape and torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    for img, g in zip(images, gray):
        pil = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L"), dtype=np.float32)
        assert np.abs(g[0].numpy() - pil).max() <= 0.5 + 1e-3  # PIL rounds the same weights
    # torchvision's grayscale (0.2989 for red instead of 0.299) on the float image
    tv = rgb_to_grayscale(images.float(), num_output_channels=3)
    assert (tv - gray).abs().max() <= 0.0001 * 255 + 1e-3


def test_chroma_target_is_the_block_averaged_ycbcr_chroma():
    images = _images(2, seed=1)
    target = chroma_target(images, 4)
    assert target.shape == (2, 2, 8, 4)
    for img, t in zip(images, target):
        ycbcr = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("YCbCr"), dtype=np.float64)
        chroma = ycbcr[..., 1:].reshape(8, 4, 4, 4, 2).mean(axis=(1, 3))  # 4x4 blocks
        expected = (chroma - 128.0) / 128.0
        # PIL's fixed-point conversion truncates each pixel's chroma to an integer: within one level
        assert np.abs(t.permute(1, 2, 0).numpy() - expected).max() <= 1.0 / 128
    # the chroma and the luma give the colour back
    x = images.float()
    assert (ycbcr_to_rgb(luma(x), rgb_to_chroma(x)) - x).abs().max() < 1e-3
    with pytest.raises(ValueError, match=r"MODEL.PRETRAIN.TIC.SCALE = 3 must be >= 1 and divide the input size 32x16"):
        chroma_target(images, 3)


# ----------------------------------------------------------------------------- the model
def _model(**opts):
    from unipt_plugin.config import get_unipt_cfg
    from unipt_plugin.modeling.meta_arch import UniPTPretrain

    cfg = get_unipt_cfg()
    cfg.MODEL.PRETRAIN.EMBED_DIM = 16
    cfg.MODEL.PRETRAIN.MLM_WEIGHT = 0.0
    cfg.INPUT.SIZE_TRAIN = [32, 16]
    cfg.MODEL.PRETRAIN.TIC.WIDTH = 16
    cfg.MODEL.PRETRAIN.TIC.HEADS = 2
    cfg.MODEL.PRETRAIN.TIC_WEIGHT = 1.0
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    torch.manual_seed(0)
    return UniPTPretrain(cfg, GridVisual(), StandInText(VOCAB))


def _batch(n=4):
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(n, 7, dtype=torch.long)
    mask[0, 5:] = 0
    return {"images": _images(n, seed=3), "text_ids": torch.randint(4, VOCAB, (n, 7), generator=g), "text_mask": mask}


def _capture_visual_inputs(model):
    seen = []
    model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    return seen


def test_tic_feeds_the_gray_view_and_its_loss_is_smooth_l1_to_the_chroma():
    model = _model(**{"MODEL.PRETRAIN.TIC_WEIGHT": 0.5, "MODEL.PRETRAIN.TIC.LOSS_BETA": 0.2}).train()
    seen = _capture_visual_inputs(model)
    batch = _batch()
    losses = model(batch)
    assert set(losses) == {"loss_con", "loss_tic"}
    assert len(seen) == 2  # the colour forward (contrastive) and the gray one (TIC)
    colour, gray = (x * model.normalizer.pixel_std + model.normalizer.pixel_mean for x in seen)
    assert torch.allclose(colour, batch["images"].float(), atol=1e-3)
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-3) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-3)
    pil = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(i.permute(1, 2, 0).numpy()).convert("L"),
                                                   dtype=np.float32)) for i in batch["images"]])
    assert (gray[:, 0] - pil).abs().max() <= 0.5 + 1e-2
    with torch.no_grad():
        pred = model.tic_chroma(batch["images"], model.text(batch["text_ids"], batch["text_mask"]), batch["text_mask"])
    assert pred.shape == (4, 2, 8, 4) and pred.abs().max() <= 1
    expected = F.smooth_l1_loss(pred, chroma_target(batch["images"], 4), beta=0.2)
    assert torch.allclose(losses["loss_tic"], 0.5 * expected, atol=1e-6)


def test_tic_alone_trains_the_visual_and_text_encoders():
    model = _model(**{"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 0.0}).train()
    assert not model.image_proj.weight.requires_grad
    losses = model(_batch())
    assert set(losses) == {"loss_tic"}
    losses["loss_tic"].backward()
    assert model.visual.patch.weight.grad.abs().sum() > 0 and model.text.emb.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tic_samples_limits_the_gray_forward():
    model = _model(**{"MODEL.PRETRAIN.TIC.SAMPLES": 2}).train()
    seen = _capture_visual_inputs(model)
    model(_batch(4))
    assert [x.shape[0] for x in seen] == [4, 2]


@pytest.mark.parametrize("opts, match", [
    ({"MODEL.PRETRAIN.TIC.SCALE": 5}, r"MODEL.PRETRAIN.TIC.SCALE = 5 must be >= 1 and divide the input size 32x16"),
    ({"MODEL.PRETRAIN.TIC.LOSS_BETA": 0.0}, r"MODEL.PRETRAIN.TIC.LOSS_BETA must be > 0"),
    ({"MODEL.PRETRAIN.TIC.SAMPLES": -1}, r"MODEL.PRETRAIN.TIC.SAMPLES must be >= 0"),
    ({"MODEL.PRETRAIN.TIC_WEIGHT": -0.1}, r"MODEL.PRETRAIN.TIC_WEIGHT must be >= 0"),
])
def test_bad_tic_options_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        _model(**opts)


def test_tic_needs_the_visual_grid():
    from unipt_plugin.config import get_unipt_cfg
    from unipt_plugin.modeling.meta_arch import UniPTPretrain

    cfg = get_unipt_cfg()
    cfg.MODEL.PRETRAIN.MLM_WEIGHT, cfg.MODEL.PRETRAIN.TIC_WEIGHT, cfg.INPUT.SIZE_TRAIN = 0.0, 1.0, [32, 16]
    with pytest.raises(ValueError, match=r"StandInVisual has no grid_size"):
        UniPTPretrain(cfg, StandInVisual(), StandInText(VOCAB))


# ----------------------------------------------------------------------------- the demo's colourisation
class WordTokenizer:
    """Captions -> ids: one id per word (a fixed table), start 1 and end 2, padded with 0."""

    words = {"a": 4, "man": 5, "in": 6, "red": 7, "blue": 8, "shirt": 9}

    def __call__(self, captions):
        rows = [[1] + [self.words[w] for w in c.lower().split()] + [2] for c in captions]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask}


def test_colourise_differs_between_captions_only_through_the_text(tmp_path):
    model = _model().train()
    image = _images(1, seed=7)[0]
    captions = ["a man in red shirt", "a man in blue shirt", "a man in red shirt"]
    out = colourise(model, image, captions, WordTokenizer())
    assert model.training  # restored
    assert len(out) == 3 and all(o.shape == (32, 16, 3) and o.dtype == np.uint8 for o in out)
    assert np.array_equal(out[0], out[2]) and not np.array_equal(out[0], out[1])
    # every result keeps the image's own luma where no channel was clipped: only the chroma differs
    y = luma(image[None].float())[0, 0].numpy()
    for o in out:
        inside = ((o > 0) & (o < 255)).all(axis=-1)
        got = luma(torch.from_numpy(o).permute(2, 0, 1)[None].float())[0, 0].numpy()
        assert inside.mean() > 0.5 and np.abs(got - y)[inside].max() <= 0.5 + 1e-3
    # a text encoder blind to the ids: the captions no longer matter
    model.text.forward = lambda ids, mask, f=model.text.forward: f(torch.full_like(ids, 4), mask)
    blind = colourise(model, image, captions[:2], WordTokenizer())
    assert np.array_equal(blind[0], blind[1])
    png = tmp_path / "tic.png"
    write_colourisation_figure(png, image, captions[:2], out[:2])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no tic_decoder"):
        colourise(_model(**{"MODEL.PRETRAIN.TIC_WEIGHT": 0.0}), image, captions, WordTokenizer())


def test_demo_colour_variants_change_one_garment_colour_word():
    from unipt_plugin.synthetic.demo_report import colour_variants

    caption = "A man with black short hair wears a plain blue shirt and gray jeans."
    out = colour_variants(caption, 2)
    assert out[0] == caption and len(out) == 3
    for variant, colour in zip(out[1:], ("red", "green")):  # hair colour skipped, "blue" replaced
        assert variant == caption.replace("plain blue shirt", f"plain {colour} shirt")
    with pytest.raises(ValueError, match="names no colour"):
        colour_variants("a person walking", 2)
