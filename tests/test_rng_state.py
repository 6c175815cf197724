"""capture_rng_state / restore_rng_state: after a restore, every global generator a training step
uses draws exactly what it drew right after the capture; the state survives weights_only
loading; the "generators" entry of earlier checkpoints is ignored with an info log."""
import logging
import random

import numpy as np
import torch

from unipt_plugin.engine.rng import capture_rng_state, restore_rng_state


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_restore_replays_every_generator(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _draws()  # move every generator off its seed
    np.random.randn()  # numpy's cached gaussian is part of its state too
    path = tmp_path / "state.pth"
    state = capture_rng_state()
    assert set(state) == {"torch", "cuda", "numpy", "python"}  # no model generators any more
    torch.save(state, path)
    expected = _draws()
    _draws()  # advance further
    restore_rng_state(torch.load(path, weights_only=True))
    assert _draws() == expected


def test_old_checkpoint_generators_are_ignored_with_an_info_log(caplog, tmp_path):
    # a checkpoint of an earlier version: the models' own generators saved under "generators"
    torch.manual_seed(4), np.random.seed(5), random.seed(6)
    state = capture_rng_state()
    state["generators"] = {"mlm:mask_generator": torch.Generator().manual_seed(1).get_state()}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    expected = _draws()
    with caplog.at_level(logging.INFO, logger="unipt_plugin.engine.rng"):
        restore_rng_state(torch.load(path, weights_only=True))
    assert _draws() == expected  # the global generators are restored all the same
    assert "model generators (mlm:mask_generator) of an earlier version: ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unipt_plugin.engine.rng"):
        restore_rng_state(capture_rng_state())
    assert "ignored" not in caplog.text
