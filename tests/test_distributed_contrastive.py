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
