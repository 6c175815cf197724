"""Two gloo processes on the CPU, each with half of a fixed batch: the gathered contrastive loss
and the DDP-averaged gradients equal one process's loss and gradients on the whole batch."""
import importlib.util
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from standins import free_port

# The spawned workers re-import this module; loading the loss file on its own (it imports only
# torch) keeps them from importing fast-reid and the whole plugin, which takes seconds.
_SPEC = importlib.util.spec_from_file_location(
    "_unipt_contrastive", os.path.join(os.path.dirname(__file__), os.pardir, "unipt_plugin", "modeling",
                                       "losses", "contrastive.py"))
_contrastive = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_contrastive)
contrastive_loss = _contrastive.contrastive_loss

N_PER_RANK, IN_DIM, OUT_DIM, WORLD = 4, 6, 5, 2


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * N_PER_RANK, IN_DIM, generator=g), torch.randn(2 * N_PER_RANK, IN_DIM, generator=g)


def _model():
    torch.manual_seed(1)
    model = nn.ModuleDict({"img": nn.Linear(IN_DIM, OUT_DIM), "txt": nn.Linear(IN_DIM, OUT_DIM)})
    model.logit_scale = nn.Parameter(torch.tensor(1.5))
    return model


class _Both(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x_img, x_txt):
        return self.m["img"](x_img), self.m["txt"](x_txt), self.m.logit_scale


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x_img, x_txt = _data()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        model = nn.parallel.DistributedDataParallel(_Both(_model()))
        img, txt, scale = model(x_img[rows], x_txt[rows])
        loss = contrastive_loss(img, txt, scale, gather=True)
        loss.backward()  # DDP averages the gradients over the 2 processes
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD
        # without gathering, each process only sees its own negatives (must differ)
        local = contrastive_loss(img.detach(), txt.detach(), scale.detach(), gather=False)
        grads = {n: p.grad.clone() for n, p in model.module.m.named_parameters()}
        torch.save({"loss": mean_loss, "local": local, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_single_process():
    x_img, x_txt = _data()
    single = _model()
    loss = contrastive_loss(single["img"](x_img), single["txt"](x_txt), single.logit_scale)
    loss.backward()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(free_port(), tmp), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    for res in results:
        assert torch.allclose(res["loss"], loss.detach(), atol=1e-6)
        assert not torch.allclose(res["local"], loss.detach(), atol=1e-3)
        for name, p in single.named_parameters():
            assert torch.allclose(res["grads"][name], p.grad, atol=1e-6), name


class _ReferenceAllGather(torch.autograd.Function):
    """The hand-written gather this project used before torch.distributed.nn.functional.all_gather:
    all_gather forward; backward all-reduces (sums) the gradient and keeps this process's slice."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.rank, ctx.n = dist.get_rank(), tensor.shape[0]
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def _gather_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        g = torch.Generator().manual_seed(10 + rank)
        x = torch.randn(N_PER_RANK, 3, generator=g)
        w = torch.randn(2 * N_PER_RANK, 3, generator=torch.Generator().manual_seed(99))  # same on both ranks
        out = {}
        for name, fn in (("library", _contrastive.all_gather_with_grad), ("reference", _ReferenceAllGather.apply)):
            leaf = x.clone().requires_grad_(True)
            gathered = fn(leaf * (rank + 1))
            ((gathered * w).sum() * (rank + 2)).backward()  # a different loss on each rank
            out[name] = (gathered.detach(), leaf.grad.clone())
        ids = _contrastive.all_gather_with_grad(torch.arange(N_PER_RANK) + 100 * rank)  # integer, no grad
        out["ids"] = ids
        torch.save(out, os.path.join(out_dir, f"gather{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_library_gather_equals_the_hand_written_one():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gather_worker, args=(free_port(), tmp), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(tmp, f"gather{r}.pt")) for r in range(WORLD)]
    for rank, res in enumerate(results):
        assert torch.equal(res["library"][0], res["reference"][0])
        assert torch.equal(res["library"][1], res["reference"][1])
        # the gradient of x on rank r: sum over ranks k of (k + 2) * w[rows of r] * (r + 1)
        expected = sum(k + 2 for k in range(WORLD)) * (rank + 1) * torch.randn(
            2 * N_PER_RANK, 3, generator=torch.Generator().manual_seed(99))[rank * N_PER_RANK:(rank + 1) * N_PER_RANK]
        assert torch.allclose(res["library"][1], expected, atol=1e-6)
        assert res["ids"].tolist() == list(range(N_PER_RANK)) + [100 + i for i in range(N_PER_RANK)]
