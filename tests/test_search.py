"""Search tools: index / query round trip, incremental indexing, refusals, bad input, rendering
(export: tests/test_search_export.py).

A randomly initialised tiny model (configs/Tiny/t2i.yml) and a handful of generated images;
expectations come from the model's own features computed directly (brute force), not through
the search code.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import unipt_plugin  # noqa: F401
from unipt_plugin.engine import setup_cfg
from unipt_plugin.search import GalleryIndex, SearchEncoder, index_folder, load_model
from unipt_plugin.search import index as index_module
from unipt_plugin.utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
# Solid two-colour images: (top RGB, bottom RGB), one per file, distinct per image.
COLOURS = [((220, 30, 30), (20, 20, 200)), ((30, 200, 40), (240, 240, 240)), ((10, 10, 10), (200, 180, 20)),
           ((250, 250, 250), (90, 40, 10)), ((120, 0, 160), (0, 160, 160)), ((200, 120, 60), (60, 60, 60))]


def _search_tool():
    spec = importlib.util.spec_from_file_location("search_tool", ROOT / "tools" / "search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SEARCH = _search_tool()


def _write_image(path: Path, top: tuple, bottom: tuple, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = np.zeros((64, 32, 3), np.uint8)
    arr[:32], arr[32:] = top, bottom
    arr = np.clip(arr.astype(int) + rng.integers(-8, 9, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cfg, weights path) of a randomly initialised tiny model saved as a checkpoint."""
    from fastreid.modeling.meta_arch import build_model

    torch.manual_seed(0)
    cfg = setup_cfg(CONFIG, OPTS)
    model = build_model(cfg)
    weights = tmp_path_factory.mktemp("ckpt") / "model.pth"
    atomic_torch_save({"model": model.state_dict()}, weights)
    cfg = setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", str(weights)])
    return cfg, str(weights)


@pytest.fixture()
def gallery_dir(tmp_path):
    """Four images (png, jpg, nested folder), a corrupt .jpg and a non-image file."""
    d = tmp_path / "photos"
    names = ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.bmp"]
    for i, name in enumerate(names):
        _write_image(d / name, *COLOURS[i], seed=i)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


def _brute_force(cfg, weights, paths, texts):
    """Image and text features straight from the model (no search code): (N, D), (Q, D)."""
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.data.tokenizer import build_tokenizer
    from unipt_plugin.data.transforms import build_image_transform
    from unipt_plugin.engine import UniPTCheckpointer

    model = build_model(cfg)
    UniPTCheckpointer(model).load(weights)
    model.eval()
    tf = build_image_transform(cfg, is_train=False)
    images = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    tok = build_tokenizer(cfg)(list(texts))
    with torch.no_grad():
        img = model({"images": images}).numpy()
        txt = model({"text_ids": tok["input_ids"], "text_mask": tok["attention_mask"]}).numpy()
    return img, txt


def _run(argv, capsys):
    rc = SEARCH.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_index_query_round_trip_matches_brute_force(tiny, gallery_dir, tmp_path, capsys):
    cfg, weights = tiny
    index_dir = tmp_path / "idx"
    rc, out, _ = _run(["index", "--config-file", CONFIG, "--weights", weights, "--images", gallery_dir,
                       "--index", index_dir, "--batch-size", 3, "--no-progress", *OPTS], capsys)
    assert rc == 0, out
    # unreadable image skipped and listed (stdout and manifest); the .txt is not an image at all
    assert "skipped 1 file(s)" in out and "broken.jpg" in out
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert [Path(s["path"]).name for s in manifest["skipped"]] == ["broken.jpg"]
    assert len(manifest["files"]) == 4 and not any(f.endswith(".txt") for f in manifest["files"])

    texts = ["a man in a red shirt and blue trousers", "a person wearing white"]
    out_json = tmp_path / "res.json"
    rc, out, err = _run(["query", "--config-file", CONFIG, "--weights", weights, "--index", index_dir,
                         *[a for t in texts for a in ("--text", t)], "--topk", 4, "--json", out_json, *OPTS], capsys)
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    img, txt = _brute_force(cfg, weights, manifest["files"], texts)
    scores = txt @ img.T
    for q, r in enumerate(res):
        assert r["query"] == texts[q]
        order = np.argsort(-scores[q], kind="stable")
        assert r["results"][0]["path"] == manifest["files"][order[0]]
        np.testing.assert_allclose([h["score"] for h in r["results"]], scores[q][order], rtol=1e-4, atol=1e-5)
        assert manifest["files"][order[0]] in out  # the text output lists it too


def test_incremental_index_encodes_only_new_files(tiny, gallery_dir, tmp_path):
    cfg, weights = tiny
    model = load_model(cfg)
    seen = []  # images per forward pass, counted on the model itself
    model.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0]["images"])) if "images" in inp[0] else None)
    enc = SearchEncoder(model, cfg, batch_size=2, num_threads=1)
    index_dir = tmp_path / "idx"
    r1 = index_folder(enc, cfg, gallery_dir, index_dir)
    assert (r1.encoded, r1.total, sum(seen)) == (4, 4, 4)
    before = GalleryIndex.load(index_dir)

    _write_image(gallery_dir / "new1.png", *COLOURS[4], seed=10)
    _write_image(gallery_dir / "sub" / "new2.webp", *COLOURS[5], seed=11)
    seen.clear()
    r2 = index_folder(enc, cfg, gallery_dir, index_dir)
    assert (r2.encoded, r2.total, sum(seen)) == (2, 6, 2)
    after = GalleryIndex.load(index_dir)
    assert after.files[:4] == before.files
    assert sorted(Path(p).name for p in after.files[4:]) == ["new1.png", "new2.webp"]
    np.testing.assert_array_equal(after.features[:4], before.features)

    seen.clear()
    r3 = index_folder(enc, cfg, gallery_dir, index_dir)
    assert (r3.encoded, r3.total, sum(seen)) == (0, 6, 0)
    # the stored features are the model's own
    img, _ = _brute_force(cfg, weights, after.files, ["x"])
    np.testing.assert_allclose(after.features, img, rtol=1e-4, atol=1e-5)


def test_index_of_another_model_or_config_is_refused(tiny, gallery_dir, tmp_path, capsys):
    cfg, weights = tiny
    index_dir = tmp_path / "idx"
    base = ["--config-file", CONFIG, "--weights", weights]
    assert _run(["index", *base, "--images", gallery_dir, "--index", index_dir, "--no-progress", *OPTS],
                capsys)[0] == 0
    manifest = json.loads((index_dir / "manifest.json").read_text())

    # a config key that changes the features: refused, naming both hashes and the index
    rc, _, err = _run(["query", *base, "--index", index_dir, "--text", "a man", *OPTS,
                       "MODEL.T2I.TEST_SCORE", "global"], capsys)
    assert rc == 2
    assert manifest["config_hash"] in err and str(index_dir) in err
    other = re.search(r"model config hash ([0-9a-f]{64})", err)
    assert other and other.group(1) != manifest["config_hash"]

    # other weights: refused on the weights hash
    state = torch.load(weights, weights_only=True)["model"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.01
    other_weights = tmp_path / "other.pth"
    atomic_torch_save({"model": state}, other_weights)
    rc, _, err = _run(["query", "--config-file", CONFIG, "--weights", other_weights, "--index", index_dir,
                       "--text", "a man", *OPTS], capsys)
    assert rc == 2 and "weights hash" in err and manifest["weights_hash"] in err

    # keys that cannot change the features (output folder, solver) do not matter
    rc, out, err = _run(["query", *base, "--index", index_dir, "--text", "a man", *OPTS,
                         "OUTPUT_DIR", str(tmp_path / "elsewhere"), "SOLVER.BASE_LR", "0.5"], capsys)
    assert rc == 0, err


def test_config_hash_ignores_training_only_loss_keys_but_not_feature_keys(tiny):
    """Loss weights and temperatures, PLIP's losses and pre-training task settings leave the
    config hash as it is; a key that changes the features (test size, test score, pooling) changes
    it. Independently of the hash code: the same weights loaded into a model built with those
    loss keys changed give bit-identical eval features."""
    from unipt_plugin.data.tokenizer import build_tokenizer
    from unipt_plugin.search import config_hash
    from unipt_plugin.search.fingerprint import IGNORED_MODEL_KEYS

    cfg, weights = tiny
    base = config_hash(cfg)
    for key in IGNORED_MODEL_KEYS:  # every entry names a key (or sub-tree) of the config: no typos
        node = cfg
        for part in key.split("."):
            assert part in node, f"{key}: no such config key"
            node = node[part]
    losses = ["MODEL.T2I.CMPM_WEIGHT", "0.5", "MODEL.T2I.IVLC_WEIGHT", "0.3", "MODEL.T2I.IVLC_TEMPERATURE", "0.07",
              "MODEL.T2I.CMPM_EPS", "1e-6", "MODEL.T2I.CMPM_TARGET_NORM", "l2", "MODEL.T2I.RANK_HARDEST_FALLBACK",
              "True", "MODEL.T2I.ID_WEIGHT", "0.5", "MODEL.T2I.RANK_MARGIN", "0.3"]
    loss_cfg = setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", weights] + losses)
    assert config_hash(loss_cfg) == base
    for key, value in (("MODEL.T2I.CMPC_WEIGHT", 1.0), ("MODEL.PRETRAIN.CONTRASTIVE_WEIGHT", 0.0),
                       ("MODEL.PRETRAIN.IVLC_WEIGHT", 1.0), ("MODEL.PRETRAIN.IAP_WEIGHT", 1.0),
                       ("MODEL.PRETRAIN.IAP.LAYERS", 3), ("MODEL.PRETRAIN.IAP.PHRASE_PROB", 0.5),
                       ("MODEL.PRETRAIN.TIC_WEIGHT", 1.0), ("MODEL.PRETRAIN.TIC.LOSS_BETA", 0.3),
                       ("MODEL.PRETRAIN.TIC.SCALE", 2), ("MODEL.T2I.LINEAR_PROBE", True),
                       ("MODEL.VISUAL.DROPOUT", 0.2), ("MODEL.TEXT.DROPOUT", 0.2)):
        changed = cfg.clone()
        changed.defrost()
        *parents, leaf = key.split(".")
        node = changed
        for part in parents:
            node = node[part]
        node[leaf] = value
        assert config_hash(changed) == base, key
    for key, value in (("INPUT.SIZE_TEST", "[32, 16]"), ("MODEL.T2I.TEST_SCORE", "global"),
                       ("MODEL.T2I.POOL", "cls"), ("MODEL.PGU.NUM_PROTOTYPES", "2"), ("INPUT.TEXT.MAX_LENGTH", "16")):
        assert config_hash(setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", weights, key, value])) != base, key

    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, *cfg.INPUT.SIZE_TEST), generator=rng, dtype=torch.uint8)
    tok = build_tokenizer(cfg)(["a man in a red coat", "a woman with a black bag and blue jeans"])
    batch = {"text_ids": tok["input_ids"], "text_mask": tok["attention_mask"]}
    feats = []
    for c in (cfg, loss_cfg):
        model = load_model(c)
        with torch.no_grad():
            feats.append((model({"images": images}), model(batch)))
    assert torch.equal(feats[0][0], feats[1][0]) and torch.equal(feats[0][1], feats[1][1])


def test_over_long_query_is_truncated_with_a_warning(tiny, caplog):
    cfg, weights = tiny
    enc = SearchEncoder(load_model(cfg), cfg)
    long_q = " ".join(["a woman wearing a long red coat and black boots"] * 10)
    short_q = "a man in a blue shirt"
    with caplog.at_level(logging.WARNING, logger="unipt_plugin.search.encoder"):
        res = enc.encode_texts([short_q, long_q])
    assert res.truncated == [False, True]
    assert res.num_tokens[1] > cfg.INPUT.TEXT.MAX_LENGTH >= res.num_tokens[0]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "unipt_plugin.search.encoder"]
    assert len(warnings) == 1 and "truncated" in warnings[0] and str(cfg.INPUT.TEXT.MAX_LENGTH) in warnings[0]
    # the truncated query's feature is that of its first MAX_LENGTH tokens (the model's own)
    _, ref = _brute_force_text(cfg, weights, [short_q, long_q])
    np.testing.assert_allclose(res.features, ref, rtol=1e-4, atol=1e-5)


def _brute_force_text(cfg, weights, texts):
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.data.tokenizer import build_tokenizer
    from unipt_plugin.engine import UniPTCheckpointer

    model = build_model(cfg)
    UniPTCheckpointer(model).load(weights)
    model.eval()
    tok = build_tokenizer(cfg)(list(texts))
    assert tok["input_ids"].shape[1] == cfg.INPUT.TEXT.MAX_LENGTH
    with torch.no_grad():
        return tok, model({"text_ids": tok["input_ids"], "text_mask": tok["attention_mask"]}).numpy()


@pytest.mark.parametrize("fail_at", ["faiss", "manifest"])
def test_interrupted_indexing_leaves_previous_index_intact(tiny, gallery_dir, tmp_path, monkeypatch, fail_at):
    cfg, _ = tiny
    enc = SearchEncoder(load_model(cfg), cfg, num_threads=1)
    index_dir = tmp_path / "idx"
    index_folder(enc, cfg, gallery_dir, index_dir)
    before = GalleryIndex.load(index_dir)
    listing = sorted(os.listdir(index_dir))
    _write_image(gallery_dir / "new.png", *COLOURS[4], seed=12)

    if fail_at == "faiss":
        def broken_write(index, f):  # half the bytes, then the process "dies"
            data = index_module.faiss.serialize_index(index).tobytes()
            f.write(data[: len(data) // 2])
            raise KeyboardInterrupt("simulated interruption")
        monkeypatch.setattr(index_module, "_write_faiss", broken_write)
    else:
        def broken_json(path, obj):
            with index_module.atomic_open(path, "w") as f:
                f.write(json.dumps(obj)[:50])
                raise KeyboardInterrupt("simulated interruption")
        monkeypatch.setattr(index_module, "_write_manifest", broken_json)
    with pytest.raises(KeyboardInterrupt):
        index_folder(enc, cfg, gallery_dir, index_dir)
    monkeypatch.undo()

    assert sorted(os.listdir(index_dir)) == listing  # no partial or orphaned file
    after = GalleryIndex.load(index_dir)
    assert after.files == before.files and len(after) == 4
    np.testing.assert_array_equal(after.features, before.features)
    s, i = after.search(before.features[:1], 1)
    assert i[0, 0] == 0 and abs(s[0, 0] - float(before.features[0] @ before.features[0])) < 1e-5
    # and the next run completes the job
    assert index_folder(enc, cfg, gallery_dir, index_dir).total == 5


def test_grid_png_and_html_are_written(tiny, gallery_dir, tmp_path, capsys):
    cfg, weights = tiny
    index_dir = tmp_path / "idx"
    assert _run(["index", "--config-file", CONFIG, "--weights", weights, "--images", gallery_dir,
                 "--index", index_dir, "--no-progress", *OPTS], capsys)[0] == 0
    grid, page, js = tmp_path / "grid.png", tmp_path / "page.html", tmp_path / "r.json"
    texts = ["a <b>bold</b> man & friend", "a woman"]
    rc, _, err = _run(["query", "--config-file", CONFIG, "--weights", weights, "--index", index_dir,
                       *[a for t in texts for a in ("--text", t)], "--topk", 3, "--grid", grid, "--html", page, "--json", js, *OPTS], capsys)
    assert rc == 0, err
    res = json.loads(js.read_text())

    png = cv2.imread(str(grid))
    assert png is not None and png.shape[0] == 2 * (192 + 30 + 16)  # one row per query
    # the first thumbnail of row 0 shows the top-1 image: its top half's colour
    top1 = res[0]["results"][0]["path"]
    expected_top = np.asarray(Image.open(top1).convert("RGB"))[:28].reshape(-1, 3).mean(0)[::-1]  # BGR
    thumb = png[8:8 + 192, 260:260 + 96]
    nonpad = thumb[(thumb != 235).any(axis=2)]
    assert nonpad.size and np.abs(thumb[20:80, 20:76].reshape(-1, 3).mean(0) - expected_top).max() < 20

    html = page.read_text()
    assert "a &lt;b&gt;bold&lt;/b&gt; man &amp; friend" in html and "<b>bold" not in html
    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 6  # 2 queries x top-3, all embedded (self-contained)
    assert "src=\"http" not in html and "file://" not in html
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))).convert("RGB"))
    ref = np.asarray(Image.open(top1).convert("RGB"))
    assert first.shape == ref.shape and np.abs(first.astype(int) - ref).mean() < 10


@pytest.mark.parametrize("kind,params", [("ivf", {"nlist": 4, "nprobe": 4}), ("hnsw", {"hnsw_m": 8})])
def test_approximate_kinds_agree_with_exact_when_exhaustive(tmp_path, kind, params):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((400, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    queries = feats[:20] + 0.1 * rng.standard_normal((20, 16)).astype(np.float32)
    files = [f"img{i}.png" for i in range(400)]
    gi = GalleryIndex(dim=16, config_hash="c", weights_hash="w", kind=kind, params=params)
    gi.add(files, feats)
    gi.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx", "c", "w")
    assert loaded.kind == kind
    _, ids = loaded.search(queries, 5)
    exact = np.argsort(-(queries @ feats.T), axis=1, kind="stable")[:, :5]
    assert (ids[:, 0] == exact[:, 0]).all()
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exact)]) >= 0.95


def test_query_a_registered_datasets_test_gallery(tiny, tmp_path, capsys):
    """--gallery-from-dataset: hits are the dataset's test images, ranked as brute force ranks them."""
    cfg, weights = tiny
    root = tmp_path / "datasets"
    entries, test_paths = [], []
    for i, (split, pid) in enumerate([("train", 1), ("train", 2), ("test", 3), ("test", 3), ("test", 4),
                                      ("test", 5)]):
        rel = f"cam/{i:04d}.png"
        _write_image(root / "CUHK-PEDES" / "imgs" / rel, *COLOURS[i], seed=20 + i)
        entries.append({"split": split, "captions": [f"a person number {pid} in colourful clothes"],
                        "file_path": rel, "id": pid})
        if split == "test":
            test_paths.append(str(root / "CUHK-PEDES" / "imgs" / rel))
    (root / "CUHK-PEDES" / "reid_raw.json").write_text(json.dumps(entries))

    js = tmp_path / "r.json"
    rc, out, err = _run(["query", "--config-file", CONFIG, "--weights", weights, "--gallery-from-dataset",
                         "CUHKPEDES", "--text", "a man in red", "--topk", 4, "--json", js, *OPTS,
                         "DATASETS.ROOT", root, "TEST.IMS_PER_BATCH", 3], capsys)
    assert rc == 0, err
    hits = json.loads(js.read_text())[0]["results"]
    assert sorted(os.path.realpath(h["path"]) for h in hits) == sorted(os.path.realpath(p) for p in test_paths)
    img, txt = _brute_force(cfg, weights, test_paths, ["a man in red"])
    order = np.argsort(-(txt @ img.T)[0], kind="stable")
    assert [os.path.realpath(h["path"]) for h in hits] == [os.path.realpath(test_paths[j]) for j in order]


def test_grid_frames_correct_and_wrong_hits(tmp_path):
    """A hit marked correct gets a green frame, a wrong one a red frame, an unknown one none."""
    import cv2
    import numpy as np

    from unipt_plugin.search.render import Hit, QueryResult, render_grid_png

    img = tmp_path / "grey.png"
    cv2.imwrite(str(img), np.full((64, 32, 3), 128, np.uint8))
    res = [QueryResult("a man", [Hit(str(img), 0.9, 1, True), Hit(str(img), 0.8, 2, False),
                                 Hit(str(img), 0.7, 3, None)])]
    canvas = render_grid_png(res, tmp_path / "g.png", thumb_height=64, thumb_width=32)
    pad, text_w = 8, 260
    corners = [canvas[pad + 1, text_w + j * (32 + pad) + 1] for j in range(3)]  # BGR, inside each frame
    assert tuple(corners[0]) == (40, 170, 40)
    assert tuple(corners[1]) == (40, 40, 220)
    assert tuple(corners[2]) not in {(40, 170, 40), (40, 40, 220)}


def test_search_top10_rate_equals_the_evaluators_rank10_on_the_synthetic_world(tmp_path):
    """Queries made from the synthetic world's test captions find their person in the top 10
    as often as the evaluator's Rank-10 says, for the same checkpoint."""
    import torch
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.engine import UniPTTrainer, setup_cfg
    from unipt_plugin.search.encoder import SearchEncoder, load_model
    from unipt_plugin.search.pipeline import dataset_gallery, search_texts
    from unipt_plugin.synthetic import generate_world
    from unipt_plugin.utils import atomic_torch_save

    data = tmp_path / "world"
    generate_world(str(data), num_labeled_ids=40, images_per_id=2, num_pool_images=0, size=(64, 32),
                   seed=1, show_progress=False)
    cfg = setup_cfg("configs/Tiny/t2i.yml", ["DATASETS.ROOT", str(data), "MODEL.HEADS.NUM_CLASSES", "0"])
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pth"
    atomic_torch_save({"model": build_model(cfg).state_dict()}, ckpt)

    model = load_model(cfg, str(ckpt))
    rank10 = UniPTTrainer.test(cfg, model)["Rank-10"]

    encoder = SearchEncoder(model, cfg)
    gallery = dataset_gallery(encoder, cfg, "CUHKPEDES")
    dataset = DATASET_REGISTRY.get("CUHKPEDES")(root=str(data), cfg=cfg)
    pid_of = {str(p): int(pid) for p, pid, *_ in dataset.gallery}
    results = search_texts(encoder, gallery, [c for c, _ in dataset.query], topk=10)
    found = [any(pid_of[h.path] == int(pid) for h in r.hits) for r, (_, pid) in zip(results, dataset.query)]
    assert len(found) == len(dataset.query) > 0
    assert 100.0 * sum(found) / len(found) == pytest.approx(rank10, abs=1e-6)
