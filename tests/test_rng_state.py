"""capture_rng_state / restore_rng_state: after a restore, every generator a training step uses
draws exactly what it drew right after the capture; the state survives weights_only loading."""
import logging
import random

import numpy as np
import torch
from torch import nn

from unipt_plugin.engine.rng import capture_rng_state, restore_rng_state


class _WithGenerator(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.mask_generator = torch.Generator().manual_seed(seed)


def _draws(model):
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.rand(3, generator=model.inner.mask_generator).tolist())


def test_restore_replays_every_generator(tmp_path):
    model = nn.Sequential()
    model.add_module("inner", _WithGenerator(5))
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _draws(model)  # move every generator off its seed
    np.random.randn()  # numpy's cached gaussian is part of its state too
    path = tmp_path / "state.pth"
    torch.save(capture_rng_state(model), path)
    expected = _draws(model)
    _draws(model)  # advance further
    restore_rng_state(torch.load(path, weights_only=True), model)
    assert _draws(model) == expected


def test_missing_generator_keeps_its_state_with_a_warning(caplog):
    model = nn.Sequential()
    model.add_module("inner", _WithGenerator(5))
    state = capture_rng_state(nn.Linear(2, 2))  # a model without generators
    before = model.inner.mask_generator.get_state()
    with caplog.at_level(logging.WARNING, logger="unipt_plugin.engine.rng"):
        restore_rng_state(state, model)
    assert torch.equal(model.inner.mask_generator.get_state(), before)
    assert "no state for the generator inner:mask_generator" in caplog.text
