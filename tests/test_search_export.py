"""``tools/search.py export``: torch.export programs (.pt2) and ONNX models of both encoders.

One export of a randomly initialised tiny model (configs/Tiny/t2i.yml, as tests/test_search.py)
through the command line, shared by the tests (the ONNX translation takes seconds). Expectations
come from the eager model loaded from the same checkpoint, and from onnxruntime / torch.export's
own loaders, never from the export code's own checks.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import unipt_plugin  # noqa: F401
from unipt_plugin.data.tokenizer import build_tokenizer
from unipt_plugin.engine import setup_cfg
from unipt_plugin.search import GalleryIndex, SearchEncoder, load_model, weights_hash
from unipt_plugin.search import export as export_module
from unipt_plugin.synthetic import generate_world
from unipt_plugin.utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
ATOL = 1e-4
# largest |exported - eager| score (inner product of the features) accepted in the search test
SCORE_ATOL = 1e-4
CAPTIONS = ["a man", "a woman with a bag and a red coat", "person", "black shoes", "a child in a blue jacket",
            "an old man in a yellow pullover and red jeans walking along the street with dark sunglasses"]


def _search_tool():
    spec = importlib.util.spec_from_file_location("search_tool_export", ROOT / "tools" / "search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SEARCH = _search_tool()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(cfg, weights, export folder) of a tiny model exported once through the command line."""
    from fastreid.modeling.meta_arch import build_model

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("ckpt") / "model.pth"
    atomic_torch_save({"model": build_model(setup_cfg(CONFIG, OPTS)).state_dict()}, weights)
    cfg = setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", str(weights)])
    out = tmp_path_factory.mktemp("exported")
    rc = SEARCH.main(["export", "--config-file", CONFIG, "--weights", str(weights), "--out", str(out), *OPTS])
    assert rc == 0
    return cfg, str(weights), out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic world's 80 images (uint8 batch, as search's transform gives) and 160 captions."""
    root = tmp_path_factory.mktemp("world")
    generate_world(str(root), num_labeled_ids=40, images_per_id=2, num_pool_images=0, size=(64, 32), seed=1,
                   show_progress=False)
    records = json.loads((root / "CUHK-PEDES" / "reid_raw.json").read_text())
    paths = [str(root / "CUHK-PEDES" / "imgs" / r["file_path"]) for r in records]
    captions = [c for r in records for c in r["captions"]]
    return paths, captions


@pytest.fixture(scope="module")
def eager(exported):
    """(model, tokenizer): the eager model loaded from the exported checkpoint."""
    cfg = exported[0]
    return load_model(cfg), build_tokenizer(cfg)


@pytest.fixture(scope="module")
def sessions(exported):
    """onnxruntime CPU sessions of the exported .onnx files: {"image", "text"}."""
    out = exported[2]
    return {m: ort.InferenceSession(str(out / f"{m}_encoder.onnx"), providers=["CPUExecutionProvider"])
            for m in ("image", "text")}


@pytest.fixture(scope="module")
def programs(exported):
    """The exported .pt2 files loaded back: {"image", "text"} -> torch.export.ExportedProgram."""
    out = exported[2]
    return {m: torch.export.load(str(out / f"{m}_encoder.pt2")) for m in ("image", "text")}


@pytest.fixture(scope="module")
def modules(programs):
    """The loaded programs as callables (``ExportedProgram.module()``): {"image", "text"}."""
    return {m: p.module() for m, p in programs.items()}


def _images(cfg, n: int, seed: int) -> torch.Tensor:
    """(n, 3, H, W) uint8 noise images."""
    h, w = cfg.INPUT.SIZE_TEST
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_onnx_encoders_match_eager_under_onnxruntime(exported, eager, sessions):
    cfg, _, out = exported
    model, tok = eager
    # the dynamic axes are in the graphs: symbolic batch (and length), fixed image size
    image_in = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in onnx.load(str(out / "image_encoder.onnx")).graph.input]
    text_in = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
               for i in onnx.load(str(out / "text_encoder.onnx")).graph.input]
    assert image_in == [["batch", 3, *cfg.INPUT.SIZE_TEST]]
    assert text_in == [["batch", "length"], ["batch", "length"]]
    # batch sizes 5 and 1 (the export example had 2)
    for n, seed in ((5, 0), (1, 1)):
        images = _images(cfg, n, seed)
        with torch.no_grad():
            want = model({"images": images}).numpy()
        got = sessions["image"].run(["features"], {"images": images.float().numpy()})[0]
        assert got.shape == want.shape == (n, cfg.MODEL.T2I.EMBED_DIM + cfg.MODEL.PGU.NUM_PROTOTYPES * cfg.MODEL.PGU.PART_DIM)
        assert _max_diff(got, want) <= ATOL
    # six captions padded to their longest (< MAX_LENGTH), two padded to MAX_LENGTH, one of 3 tokens
    lengths = set()
    for texts, pad in ((CAPTIONS, None), (CAPTIONS[:2], cfg.INPUT.TEXT.MAX_LENGTH), (["man"], None)):
        t = tok(texts)
        ids, mask = t["input_ids"], t["attention_mask"]
        if pad is not None:
            ids = torch.nn.functional.pad(ids, (0, pad - ids.shape[1]))
            mask = torch.nn.functional.pad(mask, (0, pad - mask.shape[1]))
        lengths.add(ids.shape[1])
        with torch.no_grad():
            want = model({"text_ids": ids, "text_mask": mask}).numpy()
        got = sessions["text"].run(["features"], {"text_ids": ids.numpy(), "text_mask": mask.numpy()})[0]
        assert got.shape == want.shape
        assert _max_diff(got, want) <= ATOL
    assert len(lengths) == 3 and cfg.INPUT.TEXT.MAX_LENGTH in lengths


def test_torch_export_programs_match_eager_and_refuse_over_long_text(exported, eager, modules):
    cfg = exported[0]
    model, tok = eager
    image, text = modules["image"], modules["text"]
    for n, seed in ((4, 2), (1, 3)):
        images = _images(cfg, n, seed)
        with torch.no_grad():
            torch.testing.assert_close(image(images.float()), model({"images": images}), rtol=0, atol=ATOL)
    for texts in (CAPTIONS, CAPTIONS[3:4]):
        t = tok(texts)
        with torch.no_grad():
            torch.testing.assert_close(text(t["input_ids"], t["attention_mask"]),
                                       model({"text_ids": t["input_ids"], "text_mask": t["attention_mask"]}),
                                       rtol=0, atol=ATOL)
    too_long = torch.ones(1, cfg.INPUT.TEXT.MAX_LENGTH + 1, dtype=torch.long)
    with pytest.raises(AssertionError, match=rf"Guard failed: text_ids.size\(\)\[1\] <= {cfg.INPUT.TEXT.MAX_LENGTH}"):
        text(too_long, too_long)


def _ranking_mismatches(eager_scores: np.ndarray, other_scores: np.ndarray, k: int, tol: float) -> list[str]:
    """Where ``other``'s top-``k`` (per row of the (Q, N) score matrices, best first, ties by
    index as faiss breaks them) differs from ``eager``'s beyond what a score error of ``tol / 2``
    allows: eager's ranking is cut into tie groups wherever two consecutive eager scores differ
    by more than ``tol``; position ``i`` of ``other``'s top-k must hold an entry of the tie group
    of eager's position ``i``. Between groups the order is compared exactly; inside one, any
    order passes (and an entry of eager's rank k + 1 may take rank k when the two are tied)."""
    out = []
    for q, (e, o) in enumerate(zip(eager_scores, other_scores)):
        e_order = np.lexsort((np.arange(len(e)), -e))
        o_order = np.lexsort((np.arange(len(o)), -o))
        gaps = -np.diff(e[e_order])
        group = np.concatenate([[0], np.cumsum(gaps > tol)])  # tie group of each eager rank
        group_of = np.empty(len(e), int)
        group_of[e_order] = group
        if not np.array_equal(group_of[o_order[:k]], group[:k]):
            out.append(f"query {q}: eager top-{k} {e_order[:k].tolist()} (tie groups {group[:k].tolist()}), "
                       f"exported {o_order[:k].tolist()} (groups {group_of[o_order[:k]].tolist()})")
    return out


def test_search_on_the_synthetic_world_is_identical_with_exported_encoders(exported, eager, sessions, modules,
                                                                           world):
    """Top-10 of each of the world's 160 captions over its 80 images: eager == ONNX == .pt2,
    up to near ties.

    The random model's scores lie close together: consecutive top-10 scores can be ~1e-6 apart,
    the order of onnxruntime's own differences, so an exact comparison of whole rankings would
    fail on a correct export. Every score of each exported encoder must be within SCORE_ATOL of
    the eager one (the faiss scores the rankings come from), and the rankings are compared
    exactly wherever consecutive eager scores differ by more than the tolerance 2 x that
    format's largest score difference (two entries further apart than that cannot swap); inside
    a run of scores closer together than it, any order passes (``_ranking_mismatches``). A
    wrong encoder still fails: its scores move by more than SCORE_ATOL, and its rankings differ
    (checked at the end with the image features of another entry, whose scores are wrong by
    more than the ranking tolerance allows).
    """
    cfg = exported[0]
    paths, captions = world
    model, tok = eager
    encoder = SearchEncoder(model, cfg, batch_size=64)
    transform = encoder.transform
    from unipt_plugin.data.transforms import read_image

    images = torch.stack([transform(read_image(p)) for p in paths])
    assert images.dtype == torch.uint8
    eager_img = encoder.encode_images(paths).features
    eager_txt = encoder.encode_texts(captions).features
    t = tok(captions)
    onnx_img = sessions["image"].run(["features"], {"images": images.float().numpy()})[0]
    onnx_txt = sessions["text"].run(["features"], {"text_ids": t["input_ids"].numpy(),
                                                   "text_mask": t["attention_mask"].numpy()})[0]
    with torch.no_grad():
        pt2_img = modules["image"](images.float()).numpy()
        pt2_txt = modules["text"](t["input_ids"], t["attention_mask"]).numpy()

    def all_scores(img, txt):
        """(Q, N) scores of every caption against every image, as the search index computes them."""
        gallery = GalleryIndex(dim=img.shape[1], config_hash="", weights_hash="")
        gallery.add(paths, img)
        scores, ids = gallery.search(txt, len(paths))
        out = np.full(scores.shape, np.nan, np.float64)
        np.put_along_axis(out, ids, scores, axis=1)
        assert not np.isnan(out).any()
        return out

    k = 10
    want = all_scores(eager_img, eager_txt)
    for name, (img, txt) in {"onnx": (onnx_img, onnx_txt), "torch_export": (pt2_img, pt2_txt)}.items():
        assert _max_diff(img, eager_img) <= ATOL and _max_diff(txt, eager_txt) <= ATOL, name
        got = all_scores(img, txt)
        err = _max_diff(got, want)
        assert err <= SCORE_ATOL, (name, err)
        assert not _ranking_mismatches(want, got, k, 2 * err), (name, _ranking_mismatches(want, got, k, 2 * err)[:3])
    # control: the comparison fails a wrong image encoder (each image given its neighbour's features)
    wrong = all_scores(np.roll(eager_img, 1, axis=0), eager_txt)
    assert _max_diff(wrong, want) > SCORE_ATOL
    assert len(_ranking_mismatches(want, wrong, k, 2 * SCORE_ATOL)) > len(captions) // 2


def test_export_json_records_inputs_hashes_and_agreement(exported, eager):
    cfg, weights, out = exported
    meta = json.loads((out / "export.json").read_text())
    model = eager[0]
    assert meta["weights_hash"] == weights_hash(model.state_dict())
    assert set(meta["formats"]) == {"torch_export", "onnx"}
    assert meta["formats"]["onnx"]["opset"] == onnx.load(str(out / "image_encoder.onnx")).opset_import[0].version
    for entry in meta["formats"].values():
        assert 0 <= entry["check"]["max_abs_diff_image"] <= ATOL and 0 <= entry["check"]["max_abs_diff_text"] <= ATOL
    names = ["image_encoder.onnx", "image_encoder.pt2", "text_encoder.onnx", "text_encoder.pt2"]
    assert sorted(meta["files_sha256"]) == names
    for name in names:
        assert meta["files_sha256"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert meta["image_input"]["shape"] == ["batch", 3, *cfg.INPUT.SIZE_TEST]
    assert meta["text_input"]["length_range"] == [2, cfg.INPUT.TEXT.MAX_LENGTH]
    assert meta["text_input"]["tokenizer"] == cfg.INPUT.TEXT.TOKENIZER
    with torch.no_grad():
        dim = model({"images": _images(cfg, 1, 0)}).shape[1]
    assert meta["feature_dim"] == meta["output"]["shape"][1] == dim
    # no TorchScript any more, and no staging folder left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["export.json"])


def test_disagreeing_export_is_refused_and_writes_nothing(exported, eager, programs, modules, tmp_path,
                                                          monkeypatch):
    """An exported encoder off by 1e-3 (the programs loaded back, their outputs shifted)."""
    cfg = exported[0]
    model = eager[0]
    monkeypatch.setattr(export_module, "export_programs", lambda *a, **k: programs)
    monkeypatch.setattr(export_module, "_pt2_runner",
                        lambda path: (lambda *xs: modules[Path(path).name.split("_")[0]](*xs) + 1e-3))
    target = tmp_path / "refused"
    with pytest.raises(export_module.ExportMismatchError, match="torch_export .* > 0.0001"):
        export_module.export_encoders(model, cfg, target, vocab_size=build_tokenizer(cfg).vocab_size,
                                      formats=["torch_export"])
    assert list(target.iterdir()) == []


def test_bad_export_arguments_are_refused(exported, eager, tmp_path, capsys):
    cfg, weights, _ = exported
    with pytest.raises(ValueError, match="torchscript.*expected one or more of torch_export, onnx"):
        export_module.export_encoders(eager[0], cfg, tmp_path, vocab_size=100, formats=["torchscript"])
    rc = SEARCH.main(["export", "--config-file", CONFIG, "--weights", weights, "--out", str(tmp_path),
                      "--atol", "0", *OPTS])
    assert rc == 2 and "--atol 0.0: expected a tolerance > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        SEARCH.build_parser().parse_args(["export", "--config-file", CONFIG, "--out", "x", "--formats", "torchscript"])
