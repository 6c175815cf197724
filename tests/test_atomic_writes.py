"""Interrupted writes leave the previous output intact: a process killed in the middle of a
write, and a checkpoint save that fails half-way (the last checkpoint and its tag survive)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from unipt_plugin.engine import UniPTCheckpointer
from unipt_plugin.utils import io as io_module


def test_sigkill_in_the_middle_of_a_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "luperson_t.json"
    path.write_text('["previous"]')
    child = textwrap.dedent(f"""
        import os, signal
        from unipt_plugin.utils.io import atomic_open
        with atomic_open({str(path)!r}, "w") as f:
            f.write('["new", ' * 100000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.read_text() == '["previous"]'
    leftovers = [n for n in os.listdir(tmp_path) if n != "luperson_t.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".luperson_t.json.") and leftovers[0].endswith(".tmp")
    assert os.path.getsize(tmp_path / leftovers[0]) > 100000  # the kill really came mid-write


def test_failed_checkpoint_save_keeps_the_last_checkpoint_and_its_tag(tmp_path, monkeypatch):
    model = nn.Linear(4, 3)
    ckpt = UniPTCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000", epoch=0)
    before = (tmp_path / "model_0000.pth").read_bytes()
    saved_weight = model.weight.detach().clone()

    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt("stopped in the middle of the save")

    monkeypatch.setattr(io_module.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000", epoch=0)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0001", epoch=1)
    monkeypatch.setattr(io_module.torch, "save", real_save)

    assert (tmp_path / "model_0000.pth").read_bytes() == before
    assert not (tmp_path / "model_0001.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000.pth"]
    fresh = nn.Linear(4, 3)
    UniPTCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(fresh.weight, saved_weight)
