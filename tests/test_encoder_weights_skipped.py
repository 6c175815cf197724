"""``--eval-only`` (and search) build the model with the encoders' architecture only: the
encoder weight files are not read before the checkpoint that holds every parameter."""
import os

import pytest
import torch

from unipt_plugin.engine import setup_cfg
from unipt_plugin.modeling.text_encoders import build_text_encoder
from unipt_plugin.modeling.weight_loading import encoder_weights_enabled, encoder_weights_skipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "Tiny", "t2i.yml")


def test_missing_encoder_files_are_not_read_when_skipped(tmp_path):
    from fastreid.modeling.meta_arch import build_model

    missing = str(tmp_path / "absent.pth")
    cfg = setup_cfg(TINY, ["MODEL.VISUAL.WEIGHTS", missing, "MODEL.TEXT.WEIGHTS", missing, "MODEL.HEADS.NUM_CLASSES", "4"])
    with pytest.raises(FileNotFoundError):
        build_model(cfg)
    with encoder_weights_skipped():
        assert not encoder_weights_enabled()
        model = build_model(cfg)
    assert encoder_weights_enabled()
    assert type(model).__name__ == "UniPTT2I"


def test_bert_keeps_the_shipped_architecture_without_its_weights():
    cfg = setup_cfg(TINY, ["MODEL.TEXT.NAME", "BertTextEncoder"])
    pretrained = build_text_encoder(cfg)
    with encoder_weights_skipped():
        bare = build_text_encoder(cfg)
    a, b = pretrained.state_dict(), bare.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    word = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(a[word], b[word])  # random values: the weights file was not read
