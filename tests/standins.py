"""Small pieces several tests share: stand-in encoders for the meta-architectures and a free
localhost port for spawned gloo process groups."""
import socket

import torch
from torch import nn


class StandInVisual(nn.Module):
    """Patchify 32x16 images with 8x8 patches -> (B, 1 + 8, 16), class token first."""

    def __init__(self):
        super().__init__()
        self.out_dim = 16
        self.patch = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16) * 0.02)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), t], 1)


class StandInText(nn.Module):
    """Embedding + a masked-mean context term: ids (B, L) of a ``vocab_size`` vocabulary -> (B, L, 16)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.out_dim, self.vocab_size = 16, vocab_size
        self.emb = nn.Embedding(vocab_size, 16)
        self.mix = nn.Linear(32, 16)

    def forward(self, ids, mask):
        e = self.emb(ids)
        m = mask.unsqueeze(-1).float()
        ctx = (e * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return torch.tanh(self.mix(torch.cat([e, ctx.expand_as(e)], -1)))


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for ``init_process_group``'s init_method)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_checkpoint(config: str, opts: list, path, seed: int = 0):
    """A randomly initialised model of ``config`` + ``opts`` (torch seed ``seed``) saved at
    ``path`` as a checkpoint; returns the cfg with MODEL.WEIGHTS set to it."""
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.engine import setup_cfg
    from unipt_plugin.utils.io import atomic_torch_save

    torch.manual_seed(seed)
    atomic_torch_save({"model": build_model(setup_cfg(config, opts)).state_dict()}, path)
    return setup_cfg(config, list(opts) + ["MODEL.WEIGHTS", str(path)])
