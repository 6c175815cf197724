"""uint8 image batches and dynamic text padding (INPUT.TEXT.PADDING "longest") change nothing the
models compute.

* uint8: the loaders' uint8 batches, normalised on the model's device, give exactly (torch.equal)
  the features and losses of the float32 0-255 batches the loaders made before, built here by
  hand the old way (PIL resize, then ``np.asarray(..., float32)``).
* padding: the tiny models of configs/Tiny (real ViT + small BERT + PGU) give the same features
  (global, PGU, TEST_SCORE sum) and training losses, within 1e-5, for captions padded to the
  batch's longest (rounded up to 8) and to MAX_LENGTH; so do the text encoders on their real
  tokens (BERT's attention mask, CLIP's causal mask), the search encoder and the evaluation.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from raw_fixtures import make_cuhk_pedes
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data import build_t2i_test_loader, build_t2i_train_loader
from unipt_plugin.data.tokenizer import build_tokenizer
from unipt_plugin.data.transforms import build_image_transform, read_image

# Captions of very different lengths (a batch's longest sets the dynamic width).
CAPTIONS = [
    "a man.",
    "a woman in a red coat.",
    "the young man wears a black jacket, blue jeans and white shoes, and carries a grey backpack.",
    "a girl with long hair.",
    "an old man with glasses walks slowly; he wears a brown hat, a striped shirt and dark trousers.",
    "a person holding a phone.",
    "she has a yellow umbrella.",
    "a teenage boy in shorts.",
]


def _cfg(kind: str, padding: str, **opts):
    cfg = get_unipt_cfg()
    cfg.merge_from_file(f"configs/Tiny/{kind}.yml")
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.PGU.DROPOUT = 0.0
    cfg.INPUT.TEXT.PADDING = padding
    if kind == "pretrain":
        cfg.MODEL.PRETRAIN.POOL_MASK_PADDING = True  # what "longest" requires
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


def _model(cfg):
    from fastreid.modeling.meta_arch import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def _text_batches(kind="t2i", texts=CAPTIONS, **opts):
    dyn = build_tokenizer(_cfg(kind, "longest", **opts))(texts)
    fix = build_tokenizer(_cfg(kind, "max_length", **opts))(texts)
    return ({"text_ids": dyn["input_ids"], "text_mask": dyn["attention_mask"]},
            {"text_ids": fix["input_ids"], "text_mask": fix["attention_mask"]})


def _old_float_transform(cfg, is_train_flip: bool = False):
    """The float32 pipeline of earlier versions, written out: PIL resize (+ flip), then float32 0-255."""
    h, w = (int(v) for v in cfg.INPUT.SIZE_TEST)
    steps = [T.Resize((h, w), interpolation=InterpolationMode.BICUBIC)]
    if is_train_flip:
        steps.append(T.RandomHorizontalFlip(p=1.0))
    resize = T.Compose(steps)
    def old(img):
        arr = np.asarray(resize(img), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return old


def _images(n=4, size=(90, 45), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------------- uint8 images
def test_uint8_transform_equals_the_old_float_pipeline():
    cfg = _cfg("t2i", "longest", **{"INPUT.FLIP.PROB": 1.0})
    imgs = _images()
    new_test = torch.stack([build_image_transform(cfg, is_train=False)(im) for im in imgs])
    new_train = torch.stack([build_image_transform(cfg, is_train=True)(im) for im in imgs])  # flip p = 1
    old_test = torch.stack([_old_float_transform(cfg)(im) for im in imgs])
    old_train = torch.stack([_old_float_transform(cfg, True)(im) for im in imgs])
    assert new_test.dtype == new_train.dtype == torch.uint8 and new_test.shape == (4, 3, 64, 32)
    assert old_test.dtype == torch.float32
    assert torch.equal(old_test, old_test.round())  # the old floats were integers already (resize on PIL)
    assert torch.equal(new_test.float(), old_test) and torch.equal(new_train.float(), old_train)
    assert not torch.equal(new_test, new_train)  # the flip happened: the comparison can tell


@pytest.mark.parametrize("kind", ["t2i", "pretrain"])
def test_uint8_batches_give_exactly_the_float_features_and_losses(kind):
    cfg = _cfg(kind, "longest")
    model = _model(cfg)
    imgs = _images(8, seed=1)
    new = torch.stack([build_image_transform(cfg, is_train=False)(im) for im in imgs])
    old = torch.stack([_old_float_transform(cfg)(im) for im in imgs])
    normed = model.normalizer(new)
    assert normed.dtype == torch.float32 and torch.equal(normed, (old - 127.5) / 127.5)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model({"images": new}), model({"images": old}))
    text, _ = _text_batches(kind)
    model.train()
    losses = {}
    for name, images in (("uint8", new), ("float", old)):
        batch = {"images": images, **text, "targets": torch.arange(8) // 2, "img_ids": torch.arange(8)}
        if kind == "pretrain":  # the MLM masks the training collator adds
            from unipt_plugin.data.mlm_masking import build_mlm_masking
            batch["mlm_ids"], batch["mlm_labels"] = build_mlm_masking(cfg, build_tokenizer(cfg))(
                batch["text_ids"], batch["text_mask"], torch.arange(8))
        gens = [g for g in (getattr(model, "rank_generator", None), getattr(model, "mask_generator", None)) if g]
        states = [g.get_state() for g in gens]
        torch.manual_seed(5)  # dropout draws
        losses[name] = {k: v.detach() for k, v in model(batch).items()}
        for g, s in zip(gens, states):
            g.set_state(s)
    assert losses["uint8"].keys() == losses["float"].keys() and losses["uint8"]
    for k in losses["uint8"]:
        assert torch.equal(losses["uint8"][k], losses["float"][k]), k


def test_test_loader_uint8_batches_through_the_model(tmp_path):
    root = str(tmp_path)
    make_cuhk_pedes(root, num_ids=3, images_per_id=2, captions_per_image=2, size=(80, 40))
    cfg = _cfg("t2i", "longest", **{"DATASETS.ROOT": root, "TEST.IMS_PER_BATCH": 4})
    loader, _ = build_t2i_test_loader(cfg, "CUHKPEDES")
    model = _model(cfg).eval()
    old_tf = _old_float_transform(cfg)
    path_of = {img_id: p for p, _, img_id in loader.dataset.gallery}
    seen = 0
    with torch.no_grad():
        for batch in loader:
            if "images" not in batch:
                continue
            assert batch["images"].dtype == torch.uint8
            old = torch.stack([old_tf(read_image(path_of[int(i)])) for i in batch["img_ids"]])
            assert torch.equal(batch["images"].float(), old)
            assert torch.equal(model(batch), model({"images": old}))
            seen += len(old)
    assert seen == len(loader.dataset.gallery) == 6


def test_train_loader_batches_are_uint8_and_4x_smaller(tmp_path):
    root = str(tmp_path)
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2, size=(80, 40))
    cfg = _cfg("t2i", "longest", **{"DATASETS.ROOT": root, "SOLVER.IMS_PER_BATCH": 4})
    batch = next(iter(build_t2i_train_loader(cfg)))
    images = batch["images"]
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 64, 32)
    assert images.element_size() * images.nelement() * 4 == images.float().element_size() * images.nelement()


def test_search_encoder_uint8_equals_float():
    from unipt_plugin.search import SearchEncoder

    cfg = _cfg("t2i", "longest")
    enc = SearchEncoder(_model(cfg).eval(), cfg)
    imgs = _images(3, seed=2)
    new = torch.stack([enc.transform(im) for im in imgs])
    old = torch.stack([_old_float_transform(cfg)(im) for im in imgs])
    assert new.dtype == torch.uint8
    np.testing.assert_array_equal(enc.encode_image_tensor(new), enc.encode_image_tensor(old))


# ---------------------------------------------------------------------- dynamic padding
def test_dynamic_batches_are_narrower():
    dyn, fix = _text_batches()
    longest = int(fix["text_mask"].sum(1).max())
    assert fix["text_ids"].shape == (8, 32)
    assert dyn["text_ids"].shape == (8, -(-longest // 8) * 8) and dyn["text_ids"].shape[1] < 32
    # by hand: "a man." = [CLS] a man . [SEP] = 5 -> 8; "a woman in a red coat." = 9 -> 16
    assert _text_batches(texts=CAPTIONS[:1])[0]["text_ids"].shape == (1, 8)
    assert _text_batches(texts=CAPTIONS[:2])[0]["text_ids"].shape == (2, 16)


@pytest.mark.parametrize("score", ["global", "pgu", "sum"])
def test_t2i_text_features_do_not_depend_on_padding(score):
    model = _model(_cfg("t2i", "longest", **{"MODEL.T2I.TEST_SCORE": score})).eval()
    with torch.no_grad():
        for texts in (CAPTIONS, CAPTIONS[:2], CAPTIONS[2:3]):
            dyn, fix = _text_batches(texts=texts)
            assert dyn["text_ids"].shape[1] < fix["text_ids"].shape[1]
            a, b = model(dyn), model(fix)
            assert a.shape == b.shape == (len(texts), {"global": 64, "pgu": 96, "sum": 160}[score])
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_t2i_pooling_over_padding_would_depend_on_it():
    # The reason "longest" is refused with POOL_MASK_PADDING False: the same captions then give
    # other features at another width (the check above can fail).
    cfg = _cfg("t2i", "max_length", **{"MODEL.T2I.POOL_MASK_PADDING": False, "MODEL.T2I.TEST_SCORE": "global"})
    model = _model(cfg).eval()
    dyn, fix = _text_batches()
    with torch.no_grad():
        assert (model(dyn) - model(fix)).abs().max() > 1e-3


def test_pretrain_text_features_do_not_depend_on_padding():
    model = _model(_cfg("pretrain", "longest")).eval()
    dyn, fix = _text_batches("pretrain")
    with torch.no_grad():
        torch.testing.assert_close(model(dyn), model(fix), rtol=0, atol=1e-5)


def _losses(model, text, images, targets):
    gens = [g for g in (getattr(model, "rank_generator", None),) if g is not None]
    states = [g.get_state() for g in gens]
    torch.manual_seed(3)
    out = {k: v.detach() for k, v in model({"images": images, **text, "targets": targets,
                                            "img_ids": torch.arange(len(targets))}).items()}
    for g, s in zip(gens, states):
        g.set_state(s)
    return out


@pytest.mark.parametrize("kind", ["t2i", "pretrain"])
def test_training_losses_do_not_depend_on_padding(kind):
    # Dropout off in the text encoder (its masks are drawn per position, so their draws depend
    # on the width); PGU dropout 0 (_cfg). Pre-training without MLM: the MLM masking draws one
    # number per position of the (B, L) batch, so its masks too depend on the width.
    opts = {"MODEL.PRETRAIN.MLM_WEIGHT": 0.0} if kind == "pretrain" else {}
    model = _model(_cfg(kind, "longest", **opts))
    model.train()
    model.text.eval()
    dyn, fix = _text_batches(kind, **opts)
    tf = build_image_transform(_cfg(kind, "longest"), is_train=False)
    images = torch.stack([tf(im) for im in _images(8, seed=3)])
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    a, b = _losses(model, dyn, images, targets), _losses(model, fix, images, targets)
    expected = {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"} if kind == "t2i" else {"loss_con"}
    assert set(a) == set(b) == expected
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def test_text_encoders_real_tokens_do_not_depend_on_padding():
    from unipt_plugin.modeling.text_encoders import CLIPTextEncoder, SmallBertTextEncoder

    torch.manual_seed(0)
    encoders = {"bert": SmallBertTextEncoder(64, 2, 2, 128, max_length=32).eval(),
                "clip": CLIPTextEncoder("UniPT-CLIP-tiny", max_length=32).eval()}
    for name, enc in encoders.items():
        cfg = _cfg("t2i", "longest", **{"INPUT.TEXT.TOKENIZER": name})
        dyn = build_tokenizer(cfg)(CAPTIONS)
        cfg.INPUT.TEXT.PADDING = "max_length"
        fix = build_tokenizer(cfg)(CAPTIONS)
        width = dyn["input_ids"].shape[1]
        assert width < 32
        with torch.no_grad():
            a = enc(dyn["input_ids"], dyn["attention_mask"])
            b = enc(fix["input_ids"], fix["attention_mask"])[:, :width]
        real = dyn["attention_mask"].bool()
        torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-5, msg=name)


def test_search_encoder_pads_dynamically_with_the_same_features():
    from unipt_plugin.search import SearchEncoder

    cfg_dyn, cfg_fix = _cfg("t2i", "longest"), _cfg("t2i", "max_length")
    model = _model(cfg_dyn).eval()
    dyn, fix = SearchEncoder(model, cfg_dyn), SearchEncoder(model, cfg_fix)
    assert dyn.tokenizer.padding == "longest" and fix.tokenizer.padding == "max_length"
    np.testing.assert_allclose(dyn.encode_texts(CAPTIONS).features, fix.encode_texts(CAPTIONS).features,
                               rtol=0, atol=1e-5)


def test_evaluation_with_dynamic_padding_matches_fixed(tmp_path):
    from unipt_plugin.evaluation import TextToImageEvaluator

    root = str(tmp_path)
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2, size=(64, 32))
    results, feats = {}, {}
    for padding in ("longest", "max_length"):
        cfg = _cfg("t2i", padding, **{"DATASETS.ROOT": root, "TEST.IMS_PER_BATCH": 5})
        loader, num_query = build_t2i_test_loader(cfg, "CUHKPEDES")
        model = _model(cfg).eval()
        evaluator = TextToImageEvaluator(cfg, num_query)
        text = []
        with torch.no_grad():
            for batch in loader:
                out = model(batch)
                evaluator.process(batch, out)
                if "text_ids" in batch:
                    text.append(out)
                    longest = int(batch["text_mask"].sum(1).max())
                    expected = 32 if padding == "max_length" else -(-longest // 8) * 8  # rounded up to 8
                    assert batch["text_ids"].shape[1] == expected
        results[padding], feats[padding] = evaluator.evaluate(), torch.cat(text)
    torch.testing.assert_close(feats["longest"], feats["max_length"], rtol=0, atol=1e-5)
    assert results["longest"].keys() == results["max_length"].keys()
    for k in results["longest"]:
        assert results["longest"][k] == pytest.approx(results["max_length"][k], abs=1e-6), k


# ---------------------------------------------------------------------- refusal through the loaders
def test_loader_builders_refuse_longest_padding_when_pooling_over_padding(tmp_path):
    root = str(tmp_path)
    make_cuhk_pedes(root, num_ids=2, images_per_id=2, captions_per_image=1, size=(64, 32))
    cfg = get_unipt_cfg()
    cfg.merge_from_file("configs/Tiny/pretrain.yml")  # inherits the paper's POOL_MASK_PADDING False
    cfg.DATASETS.ROOT = root
    cfg.DATASETS.NAMES = ("CUHKPEDES",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    assert cfg.INPUT.TEXT.PADDING == "max_length"  # as the config sets it: accepted
    assert next(iter(build_t2i_train_loader(cfg)))["text_ids"].shape[1] == 32
    cfg.INPUT.TEXT.PADDING = "longest"
    for build in (build_t2i_train_loader, lambda c: build_t2i_test_loader(c, "CUHKPEDES")):
        with pytest.raises(ValueError,
                           match=r"INPUT.TEXT.PADDING = 'longest'.*MODEL.PRETRAIN.POOL_MASK_PADDING = False"):
            build(cfg)


# ---------------------------------------------------------------------- the benchmark's arithmetic
def test_benchmark_padding_counts(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_padding", "tools/benchmark_padding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # by hand: batch 1 = 2 x "a man." (5 tokens -> width 8), batch 2 = "a man." + a 12-token
    # caption (width 16); fixed width 100. Tokens: dynamic 2*8 + 2*16 = 48, fixed 4*100 = 400,
    # real 5 + 5 + 5 + 12 = 27; attention scores: dynamic 2*64 + 2*256 = 640, fixed 4 * 10000.
    r = bench.count_tokens(["a man.", "a man.", "a man.", "a man in a red coat and black shoes."], 2, 100, 8)
    assert (r["batches"], r["dynamic"], r["fixed"], r["real"]) == (2, 48, 400, 27)
    assert r["ratio"] == pytest.approx(400 / 48) and r["attn_ratio"] == pytest.approx(40000 / 640)
    assert r["mean_width_dynamic"] == 12
    assert bench.main(["--batches", "2", "--batch-size", "4"]) == 0
    assert "ratio fixed / dynamic" in capsys.readouterr().out
