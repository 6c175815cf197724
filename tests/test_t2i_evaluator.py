"""TextToImageEvaluator: batches in any order give the function's result, in fast-reid's format."""
import importlib
import logging
from collections import OrderedDict

import pytest
import torch

import unipt_plugin  # noqa: F401
from fastreid.evaluation.testing import flatten_results_dict, print_csv_format
from unipt_plugin.config.defaults import get_unipt_cfg
from unipt_plugin.evaluation import TextToImageEvaluator, image_to_text, retrieval_metrics


def make_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(14, 8, generator=gen)
    image = torch.randn(9, 8, generator=gen)
    image_pids = torch.tensor([3, 3, 5, 5, 5, 8, 8, 9, 11])
    text_pids = image_pids[torch.randint(0, 9, (14,), generator=gen)]
    return text, image, text_pids, image_pids


def feed(evaluator, text, image, text_pids, image_pids):
    """Mixed order: image, text, text, image, text batches (never mixed within a batch)."""
    ids = torch.zeros(1, 4, dtype=torch.long)
    batches = [("image", slice(0, 4)), ("text", slice(0, 5)), ("text", slice(5, 9)),
               ("image", slice(4, 9)), ("text", slice(9, 14))]
    for kind, sl in batches:
        if kind == "image":
            feats = image[sl]
            inputs = {"images": torch.zeros(feats.shape[0], 3, 8, 4), "targets": image_pids[sl],
                      "img_ids": torch.arange(feats.shape[0])}
        else:
            feats = text[sl]
            inputs = {"text_ids": ids.expand(feats.shape[0], 4),
                      "text_mask": torch.ones(feats.shape[0], 4, dtype=torch.long),
                      "targets": text_pids[sl]}
        evaluator.process(inputs, feats)


def test_mixed_batches_match_function_and_format():
    cfg = get_unipt_cfg()
    text, image, text_pids, image_pids = make_data()
    evaluator = TextToImageEvaluator(cfg, num_query=14)
    evaluator.reset()
    feed(evaluator, text, image, text_pids, image_pids)
    results = evaluator.evaluate()

    expected = retrieval_metrics(text, image, text_pids, image_pids, topk=cfg.TEST.T2I.TOPK)
    assert isinstance(results, OrderedDict)
    assert list(results) == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-12)
    assert results["metric"] == pytest.approx((expected["mAP"] + expected["Rank-1"]) / 2)
    assert 0.0 < results["mAP"] < 100.0


def test_image_to_text_keys_and_values():
    cfg = get_unipt_cfg()
    cfg.TEST.T2I.IMAGE_TO_TEXT = True
    text, image, text_pids, image_pids = make_data(1)
    evaluator = TextToImageEvaluator(cfg, num_query=14)
    feed(evaluator, text, image, text_pids, image_pids)
    results = evaluator.evaluate()
    expected = image_to_text(text, image, text_pids, image_pids, topk=(1, 5, 10))
    for key, value in expected.items():
        assert results[f"i2t/{key}"] == pytest.approx(value, abs=1e-12)
    assert "Rank-1" in results and "metric" in results


def test_works_with_fastreid_reporting(caplog):
    cfg = get_unipt_cfg()
    text, image, text_pids, image_pids = make_data(2)
    evaluator = TextToImageEvaluator(cfg, num_query=14)
    feed(evaluator, text, image, text_pids, image_pids)
    results = evaluator.evaluate()
    rank1 = results["Rank-1"]
    flat = flatten_results_dict({"ICFGPEDES": results})
    assert flat["ICFGPEDES/Rank-1"] == rank1
    results["dataset"] = "ICFGPEDES"  # what fast-reid's trainer adds before printing
    with caplog.at_level(logging.INFO, logger="fastreid.evaluation.testing"):
        print_csv_format(results)
    assert "ICFGPEDES" in caplog.text and "Rank-1" in caplog.text and "mINP" in caplog.text
    assert f"{rank1:.2f}" in caplog.text


def test_bad_batches_and_counts_raise():
    cfg = get_unipt_cfg()
    evaluator = TextToImageEvaluator(cfg, num_query=3)
    with pytest.raises(KeyError, match="neither 'images' nor 'text_ids'"):
        evaluator.process({"targets": torch.zeros(2)}, torch.zeros(2, 4))
    text, image, text_pids, image_pids = make_data()
    feed(evaluator, text, image, text_pids, image_pids)
    with pytest.raises(ValueError, match="expected 3 query"):
        evaluator.evaluate()
    evaluator.reset()
    evaluator.process({"images": torch.zeros(2, 3, 8, 4), "targets": torch.tensor([1, 2])},
                      torch.randn(2, 4))
    with pytest.raises(ValueError, match="no query batch"):
        evaluator.evaluate()


def test_features_stay_on_their_device_and_are_ranked_there(monkeypatch):
    """process() keeps the model's features where they are (here the meta device, which cannot
    be copied to the CPU) as float32, and evaluate() ranks them there."""
    t2i_module = importlib.import_module("unipt_plugin.evaluation.t2i_evaluator")
    seen = []

    def spy(query_feats, gallery_feats, query_pids, gallery_pids, topk, chunk_size):
        seen.append((query_feats, gallery_feats, query_pids, gallery_pids))
        return {**{f"Rank-{k}": 50.0 for k in topk}, "mAP": 40.0, "mINP": 30.0}

    monkeypatch.setattr(t2i_module, "retrieval_metrics", spy)
    cfg = get_unipt_cfg()
    evaluator = TextToImageEvaluator(cfg, num_query=3)
    meta = torch.device("meta")
    evaluator.process({"text_ids": torch.zeros(3, 4, dtype=torch.long), "targets": torch.tensor([1, 2, 1])},
                      torch.empty(3, 8, dtype=torch.float16, device=meta))
    evaluator.process({"images": torch.zeros(2, 3, 8, 4), "targets": torch.tensor([1, 2])},
                      torch.empty(2, 8, dtype=torch.bfloat16, device=meta))
    results = evaluator.evaluate()
    (q, g, qp, gp), = seen
    assert q.device == meta and g.device == meta
    assert q.dtype == g.dtype == torch.float32 and q.shape == (3, 8) and g.shape == (2, 8)
    assert qp.tolist() == [1, 2, 1] and gp.tolist() == [1, 2] and qp.dtype == torch.int64
    assert results["metric"] == 45.0


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"])
def test_device_spellings_give_identical_metrics(device):
    cfg = get_unipt_cfg()
    cfg.TEST.T2I.IMAGE_TO_TEXT = True
    text, image, text_pids, image_pids = make_data(3)
    reference = TextToImageEvaluator(cfg, num_query=14)
    feed(reference, text, image, text_pids, image_pids)
    evaluator = TextToImageEvaluator(cfg, num_query=14)
    feed(evaluator, text.to(device), image.to(device), text_pids, image_pids)
    assert evaluator.evaluate() == reference.evaluate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_features_are_ranked_on_cuda_with_the_cpu_results(monkeypatch):
    """Dyadic features (k / 4): every score is exact on any device, so CUDA and CPU rank alike
    and the metrics must be identical floats."""
    t2i_module = importlib.import_module("unipt_plugin.evaluation.t2i_evaluator")
    cfg = get_unipt_cfg()
    cfg.TEST.T2I.IMAGE_TO_TEXT = True
    cfg.TEST.T2I.CHUNK_SIZE = 64
    gen = torch.Generator().manual_seed(4)
    text = torch.randint(-8, 9, (300, 16), generator=gen) / 4
    image = torch.randint(-8, 9, (200, 16), generator=gen) / 4
    image_pids = torch.randint(0, 40, (200,), generator=gen)
    text_pids = image_pids[torch.randint(0, 200, (300,), generator=gen)]
    devices = []
    real = t2i_module.retrieval_metrics

    def recording(query_feats, *args, **kwargs):
        devices.append(query_feats.device.type)
        return real(query_feats, *args, **kwargs)

    monkeypatch.setattr(t2i_module, "retrieval_metrics", recording)
    out = {}
    for device in ("cpu", "cuda"):
        evaluator = TextToImageEvaluator(cfg, num_query=300)
        for begin in range(0, 300, 128):
            rows = slice(begin, begin + 128)
            evaluator.process({"text_ids": torch.zeros(text[rows].shape[0], 4, dtype=torch.long),
                               "targets": text_pids[rows]}, text[rows].to(device))
        for begin in range(0, 200, 128):
            rows = slice(begin, begin + 128)
            evaluator.process({"images": torch.zeros(image[rows].shape[0], 3, 8, 4),
                               "targets": image_pids[rows]}, image[rows].to(device))
        out[device] = evaluator.evaluate()
    assert devices == ["cpu", "cuda"]
    assert out["cuda"] == out["cpu"]
    assert list(out["cuda"]) == list(out["cpu"])
