"""UniPTT2I with MODEL.T2I.GATHER_NEGATIVES in two gloo processes on the CPU, each with half of a
fixed batch under DistributedDataParallel: the losses (averaged over the processes, as they are
logged) and the DDP-averaged gradients equal one process's losses and gradients on the whole
batch; without gathering each process's loss is the one of its own half alone.

The semi-hard draw is made deterministic here: each process draws its own (N, W*N) uniforms
from its own generator and one process on the whole batch draws a (W*N, W*N) matrix, so the
random choices cannot coincide. ``ranking._draw_semi_hard`` is replaced, in the reference and in
the workers, by "the hardest semi-hard negative" (the highest-scoring candidate inside the
semi-hard window). Everything else runs as in training: the gathered candidates and identities,
the semi-hard window, the positive at column rank * N + i, the hinge, the factor W and the
gradients through the gather.
"""
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.modeling.losses import ranking as ranking_module
from unipt_plugin.modeling.meta_arch import UniPTT2I

from standins import StandInText, StandInVisual, free_port

WORLD, N = 2, 12
# identity 0 has pairs in both halves, 1 too; 0 and 7 have two pairs inside one half
TARGETS = torch.tensor([0, 0, 1, 2, 3, 4, 0, 1, 5, 6, 7, 7])
VOCAB = 40


def _hardest_semi_hard(semi, sim, generator):
    return torch.where(semi, sim, torch.full_like(sim, float("-inf"))).argmax(dim=1)


def _model(gather: bool) -> UniPTT2I:
    cfg = get_unipt_cfg()
    cfg.MODEL.HEADS.NUM_CLASSES = 8
    cfg.MODEL.T2I.EMBED_DIM = 16
    cfg.MODEL.T2I.GATHER_NEGATIVES = gather
    cfg.MODEL.PGU.update(NUM_PROTOTYPES=3, DIM=16, NUM_HEADS=2, FFN_DIM=32, PART_DIM=8, DROPOUT=0.0)
    torch.manual_seed(0)
    return UniPTT2I(cfg, StandInVisual(), StandInText(VOCAB)).train()


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, VOCAB, (N, 10), generator=g)
    mask = torch.ones(N, 10, dtype=torch.long)
    for i, n in enumerate(torch.randint(5, 11, (N,), generator=g).tolist()):
        ids[i, n:], mask[i, n:] = 0, 0
    return {"images": torch.rand(N, 3, 32, 16, generator=g) * 255, "text_ids": ids, "text_mask": mask,
            "targets": TARGETS.clone()}


def _half(batch, rank):
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    return {k: v[rows] for k, v in batch.items()}


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    ranking_module._draw_semi_hard = _hardest_semi_hard
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        local = _half(_batch(), rank)
        model = nn.parallel.DistributedDataParallel(_model(gather=True))
        losses = model(local)
        sum(losses.values()).backward()  # DDP averages the gradients over the processes
        means = {}
        for k, v in losses.items():
            mean = v.detach().clone()
            dist.all_reduce(mean)
            means[k] = mean / WORLD
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters()}
        with torch.no_grad():
            no_gather = {k: v.clone() for k, v in _model(gather=False)(local).items()}
        torch.save({"means": means, "grads": grads, "no_gather": no_gather}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_ranking_equals_one_process_on_the_whole_batch(monkeypatch):
    monkeypatch.setattr(ranking_module, "_draw_semi_hard", _hardest_semi_hard)
    batch = _batch()
    single = _model(gather=True)  # W = 1 here: nothing is gathered
    losses = single(batch)
    sum(losses.values()).backward()
    assert set(losses) == {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}
    # semi-hard negatives exist, in both ranking terms: the comparison covers the ranking
    assert losses["loss_rank"].item() > 0.05 and losses["loss_pgu_rank"].item() > 0.05
    with torch.no_grad():
        halves = [_model(gather=False)(_half(batch, r)) for r in range(WORLD)]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(free_port(), tmp), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    for rank, res in enumerate(results):
        for k, v in losses.items():
            assert torch.allclose(res["means"][k], v.detach(), atol=1e-5), (k, res["means"][k], v)
        for name, p in single.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert torch.allclose(res["grads"][name], p.grad, atol=1e-5), name
        # GATHER_NEGATIVES False in the same 2-process group: each process ranks its own half only,
        # exactly as one process on that half (and so not as on the whole batch)
        for k, v in halves[rank].items():
            assert torch.allclose(res["no_gather"][k], v, atol=1e-6), k
    mean_no_gather = sum(res["no_gather"]["loss_rank"] for res in results) / WORLD
    assert not torch.allclose(mean_no_gather, losses["loss_rank"].detach(), atol=1e-3)
