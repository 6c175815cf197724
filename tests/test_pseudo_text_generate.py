"""End to end: tiny random open_clip model, generated images, shards, resume, report, weights."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unipt_plugin.data.attribute_spans import NOT_RECORDED, decode_spans
from unipt_plugin.pseudo_text.generate import sidecar_paths
from unipt_plugin.pseudo_text.pipeline import build_parser, main, run_merge, run_one_shard
from unipt_plugin.pseudo_text.vocabulary import load_vocabulary

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
GOOD = [f"cam{i % 2}/p{i}.jpg" for i in range(8)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    (root / "pt-tiny-clip.json").write_text(json.dumps(TINY))
    images = root / "images"
    rng = np.random.default_rng(0)
    for rel in GOOD:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(images / rel)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "list.txt").write_text("\n".join(GOOD + ["corrupt.jpg", "missing.jpg"]) + "\n")
    return root


def argv(data, out, *extra):
    return ["--list", str(data / "list.txt"), "--image-root", str(data / "images"), "--output", str(out),
            "--model-config", str(data / "pt-tiny-clip.json"), "--weights", "", "--random-init-ok",
            "--num-workers", "0", "--batch-size", "2", "--chunk-size", "2", "--captions-per-image", "2",
            "--no-progress", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def uninterrupted(data):
    out = data / "full" / "annotations.json"
    for shard in (0, 1):
        torch.manual_seed(0)
        main(argv(data, out, "--shard", str(shard), "--num-shards", "2"))
    main(argv(data, out, "--num-shards", "2", "--merge", "--report-dir", str(data / "full" / "report")))
    return out


def test_output_format(data, uninterrupted):
    from unipt_plugin.data.attribute_spans import vocabulary_phrases

    ann = json.loads(uninterrupted.read_text())
    assert [e["file_path"] for e in ann] == sorted(GOOD)
    phrases = {p.lower() for p in vocabulary_phrases(load_vocabulary())}
    for e in ann:
        assert set(e) == {"file_path", "captions", "attribute_spans"}
        assert len(e["captions"]) == 2 and len(set(e["captions"])) == 2
        assert all(isinstance(c, str) and c.endswith(".") and c[0].isupper() for c in e["captions"])
        # one span list per caption: sorted, disjoint [start, end] of vocabulary phrases, the six
        # required attributes' at least
        assert len(e["attribute_spans"]) == 2
        for caption, spans in zip(e["captions"], e["attribute_spans"]):
            assert len(spans) >= 6 and all(a < b <= c < d for (a, b), (c, d) in zip(spans, spans[1:]))
            assert all(caption[a:b].lower() in phrases for a, b in spans), (caption, spans)
    sidecar, failed = sidecar_paths(uninterrupted)
    side = json.loads(sidecar.read_text())
    vocab = load_vocabulary()
    assert [e["file_path"] for e in side["images"]] == sorted(GOOD)
    for e in side["images"]:
        assert set(e["attributes"]) == set(vocab.names)
        for name, chosen in e["attributes"].items():
            assert chosen["id"] in vocab[name].class_ids
            assert isinstance(chosen["score"], float)
        assert len(e["templates"]) == 2
    assert side["settings"]["threshold"] == 0.9 and side["settings"]["num_images"] == 10
    # Corrupt and missing images are listed with the reason, not fatal.
    bad = {f["file_path"]: f["error"] for f in json.loads(failed.read_text())}
    assert set(bad) == {"corrupt.jpg", "missing.jpg"}
    assert "missing.jpg" in bad["missing.jpg"] and "corrupt.jpg" in bad["corrupt.jpg"]


def test_report(data, uninterrupted):
    rep = data / "full" / "report"
    for png in ("optional_attributes.png", "required_attributes.png"):
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((rep / "report.json").read_text())
    ann = json.loads(uninterrupted.read_text())
    side = json.loads(sidecar_paths(uninterrupted)[0].read_text())
    assert summary["num_images"] == len(ann) == 8 and summary["num_failed"] == 2
    assert summary["num_distinct_captions"] == len({c for e in ann for c in e["captions"]})
    gender_counts = {}
    for e in side["images"]:
        gid = e["attributes"]["gender"]["id"]
        gender_counts[gid] = gender_counts.get(gid, 0) + 1
    assert summary["attribute_counts"]["gender"] == gender_counts
    assert sum(summary["template_usage_top"][i][1] for i in range(len(summary["template_usage_top"]))) <= 16
    assert "## Failed images" in (rep / "report.md").read_text()


def test_interrupted_then_resumed_is_identical(data, uninterrupted):
    out = data / "resumed" / "annotations.json"
    args = build_parser().parse_args(argv(data, out, "--num-shards", "2"))
    torch.manual_seed(0)
    first = run_one_shard(args, 0, 2, "cpu", stop_after_chunks=1)  # killed inside shard 0
    assert first["new_chunks"] == 1 and first["chunks"] == 3
    with pytest.raises(RuntimeError, match="not finished"):
        run_merge(args)
    chunk0 = out.parent / "annotations.json.parts" / "shard-00000-of-00002" / "chunk-000000.json"
    stamp = chunk0.stat().st_mtime_ns
    torch.manual_seed(0)
    again = run_one_shard(args, 0, 2, "cpu")  # resumed: skips the finished chunk
    assert again["skipped_chunks"] == 1 and again["new_chunks"] == 2
    assert chunk0.stat().st_mtime_ns == stamp
    torch.manual_seed(0)
    run_one_shard(args, 1, 2, "cpu")  # shard 1 later
    assert run_one_shard(args, 1, 2, "cpu")["new_chunks"] == 0
    run_merge(args)
    assert out.read_bytes() == uninterrupted.read_bytes()
    assert sidecar_paths(out)[0].read_bytes() == sidecar_paths(uninterrupted)[0].read_bytes()
    # Different settings refuse to resume into the same work folder.
    other = build_parser().parse_args(argv(data, out, "--num-shards", "2", "--seed", "5"))
    with pytest.raises(RuntimeError, match="seed"):
        run_one_shard(other, 0, 2, "cpu")


def test_openai_style_torchscript_weights(data):
    """A TorchScript archive (the format of OpenAI's ViT-B-16.pt) loads offline, QuickGELU on."""
    import open_clip

    from unipt_plugin.pseudo_text.clip_model import load_frozen_clip

    open_clip.add_model_config(data / "pt-tiny-clip.json")  # the reference: open_clip's own factory
    torch.manual_seed(1)
    ref = open_clip.create_model("pt-tiny-clip", force_quick_gelu=True).eval()
    image, text = torch.randn(2, 3, 64, 64), open_clip.get_tokenizer("pt-tiny-clip")(["a man", "a woman"])
    path = data / "tiny-openai.pt"
    torch.jit.save(torch.jit.trace(ref, (image, text), check_trace=False), str(path))
    model, _ = load_frozen_clip(model_config=str(data / "pt-tiny-clip.json"), weights=str(path))
    with torch.no_grad():
        assert torch.allclose(model.encode_image(image), ref.encode_image(image), atol=1e-5)
        assert torch.allclose(model.encode_text(text), ref.encode_text(text), atol=1e-5)
    with pytest.raises(ValueError, match="random-init-ok"):
        load_frozen_clip(model_config=str(data / "pt-tiny-clip.json"), weights="")


def test_output_loads_through_luperson_t(data, uninterrupted, tmp_path):
    from unipt_plugin.config import get_unipt_cfg
    from unipt_plugin.data.datasets import LUPersonT

    cfg = get_unipt_cfg()
    root = tmp_path / "datasets"
    (root / "LUPerson-T").mkdir(parents=True)
    node = cfg.DATASETS.LUPERSON_T
    (root / "LUPerson-T" / node.IMAGE_DIR).symlink_to(data / "images")
    (root / "LUPerson-T" / node.ANNOTATION).write_bytes(uninterrupted.read_bytes())
    ds = LUPersonT(root=str(root), cfg=cfg)
    ann = json.loads(uninterrupted.read_text())
    assert ds.num_train_images == 8 and ds.num_classes == 8
    assert sorted(item[1] for item in ds.train) == sorted(c for e in ann for c in e["captions"])
    assert ds.train_attribute_spans is None  # read only for IAP
    # the new field round-trips: with IAP on, every item carries its caption's spans
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.PRETRAIN.IAP_WEIGHT = "UniPTPretrain", 1.0
    with_spans = LUPersonT(root=str(root), cfg=cfg)
    recorded = {c: [tuple(s) for s in spans] for e in ann for c, spans in zip(e["captions"], e["attribute_spans"])}
    assert with_spans.num_recorded_captions == len(with_spans.train) == 16
    for item, (encoded,) in zip(with_spans.train, with_spans.train_attribute_spans):
        assert decode_spans(encoded) == recorded[item[1]]


def test_luperson_t_attribute_spans_old_files_and_bad_fields(tmp_path):
    from unipt_plugin.data.datasets import LUPersonT
    from unipt_plugin.data.datasets.base import DatasetFormatError

    folder = tmp_path / "LUPerson-T"
    (folder / "imgs").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 16)).save(folder / "imgs" / name)

    def load(entries, spans=True):
        (folder / "luperson_t.json").write_text(json.dumps(entries))
        return LUPersonT(root=str(tmp_path), attribute_spans=spans)

    # an older file: no field anywhere; every caption "not recorded" (IAP matches the vocabulary)
    old = load([{"file_path": "a.png", "captions": ["A man.", "A woman."]}])
    assert [s for (s,) in old.train_attribute_spans] == [NOT_RECORDED] * 2 and old.num_recorded_captions == 0
    # leading spaces are stripped with the caption, an empty and a repeated caption are skipped,
    # an image listed again keeps its first entry's spans and its merged caption has none
    ds = load([{"file_path": "a.png", "captions": ["  A red cap.", " ", "  A red cap.", "A man."],
                "attribute_spans": [[[4, 7], [8, 11]], [], [[4, 7]], [[2, 5]]]},
               {"file_path": "b.png", "captions": ["No spans here."]},
               {"file_path": "a.png", "captions": ["A boy."], "attribute_spans": [[[2, 5]]]}])
    got = {item[1]: decode_spans(s) for item, (s,) in zip(ds.train, ds.train_attribute_spans)}
    assert got == {"A red cap.": [(2, 5), (6, 9)], "A man.": [(2, 5)], "No spans here.": None, "A boy.": None}
    assert ds.num_recorded_captions == 2
    assert load([{"file_path": "a.png", "captions": ["A man."], "attribute_spans": [[[0, 9]]]}],
                spans=False).train_attribute_spans is None  # not read without IAP
    for spans, match in (([[[0, 9]]], r"field 'attribute_spans\[0\]' is \[0, 9\]; expected \[start, end\] integers "
                                       r"with 0 <= start < end <= 6"),
                         ([[[2, 5]], []], r"field 'attribute_spans' is .*; expected a list of 1 span lists"),
                         (["2:5"], r"field 'attribute_spans\[0\]' is '2:5'; expected a list of \[start, end\]")):
        with pytest.raises(DatasetFormatError, match=r"entry 0 of .*luperson_t.json: " + match):
            load([{"file_path": "a.png", "captions": ["A man."], "attribute_spans": spans}])


def test_two_cpu_processes_through_the_launcher(data, uninterrupted, tmp_path):
    # tools/generate_pseudo_texts.py --num-gpus 2 --device cpu: two gloo processes (the plugin's
    # launch), one shard each, then the merge. The random-init models differ per process, so
    # the captions are not compared; the images covered and the failures are.
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "annotations.json"
    proc = subprocess.run([sys.executable, os.path.join(root, "tools", "generate_pseudo_texts.py"),
                           *argv(data, out, "--num-gpus", "2")], capture_output=True, text=True, timeout=600,
                          cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "rank 0: shard 0/2" in proc.stdout and "rank 1: shard 1/2" in proc.stdout
    got = json.loads(out.read_text())
    want = json.loads(uninterrupted.read_text())
    assert sorted(x["file_path"] for x in got) == sorted(x["file_path"] for x in want)
    assert all(len(x["captions"]) == 2 for x in got)
