"""Two gloo processes, each with its contiguous share of the queries and of the gallery (the real
ModalityBatchSampler split, shares of different sizes): TextToImageEvaluator gathers the features
with torch.distributed.all_gather and every process returns exactly the single-process results."""
import datetime
import importlib.util
import os
import sys
import tempfile
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from standins import free_port

WORLD = 2
NUM_QUERY, NUM_GALLERY, BATCH = 23, 17, 4  # shares 11 / 12 queries and 8 / 9 images
TOPK, CHUNK = [1, 2, 5], 5
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def _load_evaluation():
    """The plugin's evaluation package on its own: the spawned workers skip importing the model
    registries (seconds). compat.py first, which makes fast-reid importable."""
    spec = importlib.util.spec_from_file_location("_unipt_compat", os.path.join(_ROOT, "unipt_plugin", "compat.py"))
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    pkg_dir = os.path.join(_ROOT, "unipt_plugin", "evaluation")
    spec = importlib.util.spec_from_file_location("_unipt_evaluation", os.path.join(pkg_dir, "__init__.py"),
                                                  submodule_search_locations=[pkg_dir])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["_unipt_evaluation"] = pkg
    spec.loader.exec_module(pkg)
    return pkg


def _data():
    """Integer features: many exact score ties, so the gallery order (tie rule) matters."""
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(-1, 2, (NUM_QUERY, 3), generator=gen).float()
    image = torch.randint(-1, 2, (NUM_GALLERY, 3), generator=gen).float()
    image_pids = torch.randint(0, 5, (NUM_GALLERY,), generator=gen)
    text_pids = torch.randint(0, 6, (NUM_QUERY,), generator=gen)  # id 5: no positive
    return text, image, text_pids, image_pids


def _cfg(image_to_text: bool):
    t2i = types.SimpleNamespace(TOPK=list(TOPK), CHUNK_SIZE=CHUNK, IMAGE_TO_TEXT=image_to_text)
    return types.SimpleNamespace(TEST=types.SimpleNamespace(T2I=t2i))


def _feed(evaluator, batches, data):
    """Test-loader batches (dataset indices: queries 0..Q-1, then the gallery) -> process()."""
    text, image, text_pids, image_pids = data
    for batch in batches:
        idx = torch.tensor(batch)
        if batch[0] < NUM_QUERY:
            inputs = {"text_ids": torch.zeros(len(batch), 4, dtype=torch.long),
                      "text_mask": torch.ones(len(batch), 4, dtype=torch.long), "targets": text_pids[idx]}
            evaluator.process(inputs, text[idx])
        else:
            idx = idx - NUM_QUERY
            evaluator.process({"images": torch.zeros(len(batch), 3, 8, 4), "targets": image_pids[idx]}, image[idx])


def _worker(rank, port, out_dir, batches, image_to_text):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        evaluation = _load_evaluation()
        data = _data()
        evaluator = evaluation.TextToImageEvaluator(_cfg(image_to_text), num_query=NUM_QUERY)
        evaluator.reset()
        _feed(evaluator, batches[rank], data)
        results = evaluator.evaluate()
        # The gather helper alone: this rank's query rows -> all rows in rank order.
        mine = torch.tensor([i for b in batches[rank] for i in b if i < NUM_QUERY])
        sizes = [sum(i < NUM_QUERY for b in batches[r] for i in b) for r in range(WORLD)]
        gathered = evaluation.all_gather_rows(data[0][mine], sizes)
        torch.save({"results": dict(results), "keys": list(results), "gathered": gathered},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("image_to_text", [False, True])
def test_two_processes_equal_one_process_on_every_rank(image_to_text):
    import unipt_plugin  # noqa: F401
    from unipt_plugin.config.defaults import get_unipt_cfg
    from unipt_plugin.data.common import ModalityBatchSampler
    from unipt_plugin.evaluation import TextToImageEvaluator

    data = _data()
    batches = [list(ModalityBatchSampler(NUM_QUERY, NUM_GALLERY, BATCH, rank=r, world_size=WORLD))
               for r in range(WORLD)]
    shares = [[sum(i < NUM_QUERY for b in bs for i in b), sum(i >= NUM_QUERY for b in bs for i in b)]
              for bs in batches]
    assert shares == [[11, 8], [12, 9]]  # uneven shares, what the padding must handle

    # Reference: one process with the real config, every batch in loader order.
    cfg = get_unipt_cfg()
    cfg.TEST.T2I.TOPK, cfg.TEST.T2I.CHUNK_SIZE, cfg.TEST.T2I.IMAGE_TO_TEXT = list(TOPK), CHUNK, image_to_text
    single = TextToImageEvaluator(cfg, num_query=NUM_QUERY)
    _feed(single, list(ModalityBatchSampler(NUM_QUERY, NUM_GALLERY, BATCH)), data)
    expected = single.evaluate()
    # The test can fail on order: the gallery concatenated in the wrong rank order differs.
    swapped = TextToImageEvaluator(cfg, num_query=NUM_QUERY)
    _feed(swapped, [b for b in batches[0] + batches[1] if b[0] < NUM_QUERY], data)
    _feed(swapped, [b for b in batches[1] + batches[0] if b[0] >= NUM_QUERY], data)
    assert swapped.evaluate() != expected

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(free_port(), tmp, batches, image_to_text), nprocs=WORLD, join=True)
        outs = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    for out in outs:
        assert out["keys"] == list(expected)  # every rank gets the full results, same order
        assert out["results"] == dict(expected)  # exactly (floats compared with ==)
        assert torch.equal(out["gathered"], data[0])  # rank order == single-process order
    assert ("i2t/mAP" in expected) == image_to_text
