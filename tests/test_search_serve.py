"""`tools/search.py serve`: the page, the JSON API, its limits, image serving by entry id only.

A randomly initialised tiny model (configs/Tiny/t2i.yml) and a handful of generated images, as
in tests/test_search.py. Expected rankings come from ``pipeline.search_texts`` with a separately
loaded model and from the model's own features (brute-force inner products); expected image
bytes from the files themselves.
"""
from __future__ import annotations

import builtins
import http.client
import importlib.util
import io
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import unipt_plugin  # noqa: F401
from unipt_plugin.search import GalleryIndex, SearchEncoder, index_folder, load_model, search_texts
from unipt_plugin.search import server as server_module
from unipt_plugin.search.server import SearchService, create_app, is_loopback_host, running_server
from unipt_plugin.utils import atomic_torch_save
from standins import random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
COLOURS = [((220, 30, 30), (20, 20, 200)), ((30, 200, 40), (240, 240, 240)), ((10, 10, 10), (200, 180, 20)),
           ((250, 250, 250), (90, 40, 10)), ((120, 0, 160), (0, 160, 160)), ((200, 120, 60), (60, 60, 60))]
NAMES = ["a.png", "b.jpg", "sub/c.png", "sub/d.bmp", "e.tif", "f.webp"]
SECRET = "top secret: must never be served"


def _search_tool():
    spec = importlib.util.spec_from_file_location("search_tool_serve", ROOT / "tools" / "search.py")
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
def world(tmp_path_factory):
    """(cfg, weights, index dir, index files) of a tiny random model and an index of six images;
    a secret file lies next to the images (it must never be served)."""
    root = tmp_path_factory.mktemp("serve")
    weights = root / "model.pth"
    cfg = random_checkpoint(CONFIG, OPTS, weights)
    photos = root / "photos"
    for i, name in enumerate(NAMES):
        _write_image(photos / name, *COLOURS[i], seed=i)
    (root / "secret.txt").write_text(SECRET)
    (photos / "secret.txt").write_text(SECRET)
    index_dir = root / "idx"
    model = load_model(cfg)
    index_folder(SearchEncoder(model, cfg, num_threads=1), cfg, photos, index_dir)
    files = GalleryIndex.load(index_dir).files
    assert len(files) == len(NAMES)
    return cfg, str(weights), index_dir, files


@pytest.fixture(scope="module")
def service(world):
    cfg, _, index_dir, _ = world
    encoder = SearchEncoder(load_model(cfg), cfg, num_threads=1)
    return SearchService(encoder, GalleryIndex.load(index_dir), index_dir, max_query_chars=60, max_topk=5,
                         default_topk=3)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


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


def test_page_is_self_contained_and_carries_the_limits(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for needle in ('id="q"', 'id="k"', 'id="go"', 'id="results"', 'maxlength="60"', 'max="5"', 'value="3"',
                   "6 indexed entries"):
        assert needle in page, needle
    # nothing from the network: no absolute or protocol-relative URL anywhere in the page
    assert not re.search(r"(https?:)?//[a-z0-9]", page.replace("http://www.w3.org", ""), re.I), \
        re.search(r"(https?:)?//[a-z0-9].{0,40}", page, re.I)
    assert not re.search(r"<(link|iframe|object|embed)\b", page) and "<script src" not in page
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "img-src 'self'" in csp
    # the inline script is allowed by its hash, so the browser runs exactly this script
    import base64
    import hashlib

    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_api_ranking_equals_search_texts_and_brute_force(world, client):
    cfg, weights, index_dir, files = world
    texts = ["a man in a red shirt and blue trousers", "a person wearing white"]
    ref_encoder = SearchEncoder(load_model(cfg, weights), cfg, num_threads=1)  # loaded separately
    expected = search_texts(ref_encoder, GalleryIndex.load(index_dir), texts, 5)
    img, txt = _brute_force(cfg, weights, files, texts)
    for text, exp, scores in zip(texts, expected, txt @ img.T):
        r = client.get("/api/search", params={"q": text, "k": 5})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["query"] == text and data["k"] == 5 and data["num_entries"] == len(files)
        assert [h["path"] for h in data["hits"]] == [h.path for h in exp.hits]
        assert [h["rank"] for h in data["hits"]] == [1, 2, 3, 4, 5]
        order = np.argsort(-scores, kind="stable")[:5]
        assert [h["id"] for h in data["hits"]] == order.tolist()
        np.testing.assert_allclose([h["score"] for h in data["hits"]], scores[order], rtol=1e-4, atol=1e-5)
        for h in data["hits"]:
            assert files[h["id"]] == h["path"] and h["image_url"] == f"/image/{h['id']}"
            assert h["source_url"] is None and h["box"] is None  # plain crops: no source frame
    # the page's default k when none is given
    assert len(client.get("/api/search", params={"q": "a man"}).json()["hits"]) == 3


def test_queries_use_the_loaded_model_in_eval_and_inference_mode(world, service, client, monkeypatch):
    calls = []
    handle = service.encoder.model.register_forward_hook(
        lambda m, inp, out: calls.append((m.training, torch.is_inference_mode_enabled())))
    loads = []
    monkeypatch.setattr(server_module, "SearchEncoder", lambda *a, **k: loads.append(1))
    monkeypatch.setattr("unipt_plugin.search.encoder.load_model", lambda *a, **k: loads.append(1))
    try:
        for q in ("a man", "a woman with a bag", "someone in black"):
            assert client.get("/api/search", params={"q": q, "k": 2}).status_code == 200
    finally:
        handle.remove()
    assert calls == [(False, True)] * 3 and not loads  # one text forward per query, no reload


@pytest.mark.parametrize("params, status, message", [
    ({"q": "x" * 61}, 422, "at most 60"),
    ({"q": "a man", "k": 6}, 422, "1 to 5"),
    ({"q": "a man", "k": 0}, 422, "1 to 5"),
    ({"q": "a man", "k": -3}, 422, "1 to 5"),
    ({"q": "a man", "k": "ten"}, 422, "whole number"),
    ({"q": "a man", "k": "2.5"}, 422, "whole number"),
    ({"q": "   "}, 400, "empty query"),
    ({}, 400, "empty query"),
])
def test_query_length_and_k_are_capped_with_json_errors(client, params, status, message):
    r = client.get("/api/search", params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and message in body["error"], body


def test_limits_accept_the_boundary_values(client):
    r = client.get("/api/search", params={"q": "y" * 60, "k": 5})
    assert r.status_code == 200 and len(r.json()["hits"]) == 5
    assert client.get("/api/search", params={"q": "a man", "k": 1}).json()["hits"][0]["rank"] == 1


def test_image_endpoint_sends_the_indexed_files_bytes(world, client):
    _, _, _, files = world
    for i, path in enumerate(files):
        r = client.get(f"/image/{i}")
        assert r.status_code == 200, (path, r.text)
        if path.endswith(".tif"):  # browsers cannot show TIFF: decoded, sent as PNG, same pixels
            assert r.headers["content-type"] == "image/png"
            got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
            np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")))
        else:
            assert r.content == Path(path).read_bytes()
            ext = Path(path).suffix
            assert r.headers["content-type"] == {".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp",
                                                 ".webp": "image/webp"}[ext]
    for bad in (len(files), 10 ** 30):
        r = client.get(f"/image/{bad}")
        assert r.status_code == 404 and "no index entry" in r.json()["error"]
    r = client.get("/source/0")  # an image indexed whole has no source frame
    assert r.status_code == 404 and "no source frame" in r.json()["error"]


TRAVERSALS = [
    "/image/../../etc/passwd",
    "/image/..%2f..%2f..%2fetc%2fpasswd",
    "/image/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/image/%2E%2E/secret.txt",
    "/image/..%5c..%5csecret.txt",
    "//etc/passwd",
    "/image//etc/passwd",
    "/image/%2Fetc%2Fpasswd",
    "/image/0/../../secret.txt",
    "/image/0%2f..%2f..%2fsecret.txt",
    "/image/0/..%2f..%2fsecret.txt",
    "/source/..%2fsecret.txt",
    "/source/%2fetc%2fpasswd",
    "/image/-1",
    "/image/0x1",
    "/image/1e2",
    "/image/secret.txt",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
]


def test_path_like_requests_are_refused_without_touching_the_file_system(world, service, monkeypatch):
    """Raw request targets (not normalised by any client) sent over a socket to the real server;
    every file-system call during them is recorded."""
    _, _, index_dir, files = world
    secret_abs = str(index_dir.parent / "secret.txt")
    targets = TRAVERSALS + [f"/image/{secret_abs}", f"/image/{secret_abs.replace('/', '%2f')}",
                            f"/source/{secret_abs}", f"/image{secret_abs}"]
    seen: list[str] = []

    def spy(fn):
        def wrapper(path, *a, **k):
            seen.append(os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else repr(path))
            return fn(path, *a, **k)
        return wrapper

    with running_server(create_app(service)) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        for name in ("stat", "lstat", "open", "scandir", "listdir"):
            monkeypatch.setattr(os, name, spy(getattr(os, name)))
        monkeypatch.setattr(builtins, "open", spy(builtins.open))
        monkeypatch.setattr(os.path, "isfile", spy(os.path.isfile))
        for target in targets:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.putrequest("GET", target, skip_accept_encoding=True)  # sent exactly as written
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status in (400, 404), (target, resp.status, body[:200])
            assert SECRET.encode() not in body and b"root:" not in body
            if resp.status == 404:
                assert "error" in json.loads(body), target
        refused_accesses = [p for p in seen if "secret" in p or "passwd" in p]
        # control: a real entry is read through the same spies (so the check above can fail)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/image/0")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == Path(files[0]).read_bytes()
        conn.close()
        monkeypatch.undo()
    assert not refused_accesses, refused_accesses
    assert files[0] in seen


@pytest.fixture(scope="module")
def scenes(world, tmp_path_factory):
    """An index of people cut from a synthetic scene photo (1200x600, larger than SOURCE_MAX_SIDE)
    and a short synthetic video, with their true boxes (``boxes:`` detector on the MOT gt files):
    (service, index, photo SceneSet, video SceneSet)."""
    from unipt_plugin.search.pipeline import SceneOptions
    from unipt_plugin.synthetic import render_scene_images, render_scene_video
    from unipt_plugin.synthetic.attributes import sample_identity

    cfg = world[0]
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(5)
    people = [sample_identity(rng) for _ in range(3)]
    photo = render_scene_images(root / "photo", people, num_images=1, size=(600, 1200), people_per_image=(2, 3),
                                person_height=(220, 380), seed=1)
    video = render_scene_video(root / "video", people, num_frames=8, fps=4, size=(240, 320), seed=2)
    encoder = SearchEncoder(load_model(cfg), cfg, num_threads=1)
    index_dir = root / "idx"
    for scene_set in (photo, video):
        gt = Path(scene_set.root) / "gt" / "gt.txt"
        index_folder(encoder, cfg, Path(scene_set.files[0]).parent, index_dir,
                     options=SceneOptions(detector=f"boxes:{gt}", fps=2))
    gallery = GalleryIndex.load(index_dir)
    return SearchService(encoder, gallery, index_dir, max_topk=100), gallery, photo, video


def _red_outline(jpeg: bytes) -> tuple[np.ndarray, np.ndarray]:
    got = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # BGR
    return got, (got[..., 2] > 170) & (got[..., 1] < 90) & (got[..., 0] < 90)


def test_scene_entries_show_their_source_frame_with_the_box_drawn(scenes):
    """Each hit cut from a scene carries the true box and time, and /source/<id> is the source
    photo (downscaled to SOURCE_MAX_SIDE) or the video frame, with a red outline at the box."""
    service, gallery, photo, video = scenes
    with TestClient(create_app(service)) as c:
        data = c.get("/api/search", params={"q": "a woman walking", "k": len(gallery)}).json()
        assert sorted(h["id"] for h in data["hits"]) == list(range(len(gallery)))
        photo_boxes = {(r.x, r.y, r.w, r.h) for r in photo.rows}  # the MOT gt rows (independent)
        video_rows = {}
        for r in video.rows:
            video_rows.setdefault(r.frame - 1, set()).add((r.x, r.y, r.w, r.h))  # 0-based frames
        seen = {"photo": 0, "video": 0}
        for h in data["hits"]:
            assert h["source_url"] == f"/source/{h['id']}" and h["det_score"] is not None
            r = c.get(h["source_url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            got, red = _red_outline(r.content)
            if h["source"] == photo.files[0]:
                seen["photo"] += 1
                assert tuple(h["box"]) in {tuple(round(v) for v in b) for b in photo_boxes}
                assert h["time_s"] is None and h["frame"] is None
                ref = cv2.imread(photo.files[0])
                scale = server_module.SOURCE_MAX_SIDE / 1200
            else:
                seen["video"] += 1
                assert h["source"] == video.files[0]
                assert tuple(h["box"]) in {tuple(round(v) for v in b) for b in video_rows[h["frame"]]}
                assert h["time_s"] == pytest.approx(h["frame"] / 4)
                cap = cv2.VideoCapture(video.files[0])
                cap.set(cv2.CAP_PROP_POS_FRAMES, h["frame"])
                ok, ref = cap.read()
                cap.release()
                assert ok
                scale = 1.0
            ref = cv2.resize(ref, got.shape[1::-1], interpolation=cv2.INTER_AREA) if scale != 1 else ref
            assert got.shape[:2] == (round(ref.shape[0]), round(ref.shape[1]))
            x, y, w, hh = (v * scale for v in h["box"])
            # the outline: red on the box's left edge, at mid-height; the rest is the frame itself
            assert red[int(y + hh / 2), max(0, int(round(x))):int(round(x)) + 3].any(), h
            diff = np.abs(got.astype(int) - ref.astype(int)).mean(axis=2)
            assert np.median(diff[~red]) < 6, h
        assert seen["photo"] == len(photo.rows) and seen["video"] >= 2
        # the crop an entry shows is its file under <index>/crops, sent byte for byte
        i = data["hits"][0]["id"]
        assert gallery.files[i].startswith(str(Path(service.index_dir) / "crops"))
        assert c.get(f"/image/{i}").content == Path(gallery.files[i]).read_bytes()


def test_exif_rotated_source_photo_is_served_upright_with_the_box_on_the_person(world, tmp_path):
    """A photo stored landscape (200 x 120) with EXIF orientation 6 (shown rotated 90 degrees
    clockwise: upright 120 x 200) and a green person whose box, in upright pixels, comes from a
    MOT file: /source/<id> is the upright frame (the transposed size, the same pixels as
    PIL's own ``exif_transpose``), the red outline lies on the person's box, the person's green
    fills it, and it is the image the PNG grid / HTML page draw (``render.source_with_box``)."""
    from PIL import ImageOps

    from unipt_plugin.search.pipeline import SceneOptions
    from unipt_plugin.search.render import Hit, source_with_box

    cfg = world[0]
    up_w, up_h, (bx, by, bw, bh) = 120, 200, (30, 40, 50, 130)
    upright = np.zeros((up_h, up_w, 3), np.uint8)
    upright[:] = (90, 110, 170)  # a blue-grey street
    upright[by:by + bh, bx:bx + bw] = (20, 210, 40)  # the person, exactly their box
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 90 degrees anticlockwise: what the camera stored
    assert stored.shape == (up_w, up_h, 3)
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(photos / "rotated.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(photos / "rotated.jpg") as im:  # PIL's own reading: upright, as designed above
        assert im.size == (up_h, up_w)
        pil_upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert pil_upright.shape == (up_h, up_w, 3)
    assert np.abs(pil_upright.astype(int) - upright.astype(int)).mean() < 4
    gt = tmp_path / "gt.txt"
    gt.write_text(f"1,1,{bx},{by},{bw},{bh},1,-1,-1,-1\n")
    index_dir = tmp_path / "idx"
    encoder = SearchEncoder(load_model(cfg), cfg, num_threads=1)
    index_folder(encoder, cfg, photos, index_dir, options=SceneOptions(detector=f"boxes:{gt}"))
    gallery = GalleryIndex.load(index_dir)
    assert len(gallery) == 1 and gallery.entries[0]["box"] == [bx, by, bw, bh]

    with TestClient(create_app(SearchService(encoder, gallery, index_dir))) as c:
        hit = c.get("/api/search", params={"q": "a person in green", "k": 1}).json()["hits"][0]
        assert hit["box"] == [bx, by, bw, bh] and hit["source"] == str(photos / "rotated.jpg")
        r = c.get(hit["source_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        crop = np.asarray(Image.open(io.BytesIO(c.get(hit["image_url"]).content)).convert("RGB")).astype(int)
    got, red = _red_outline(r.content)
    assert got.shape[:2] == (up_h, up_w)  # upright: the stored size transposed
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - bx) <= 1 and abs(ys.min() - by) <= 1
    assert abs(xs.max() - (bx + bw - 1)) <= 1 and abs(ys.max() - (by + bh - 1)) <= 1
    rgb = got[..., ::-1].astype(int)
    t = 6  # inside the outline: the person's pixels; outside: the street
    inner = rgb[by + t:by + bh - t, bx + t:bx + bw - t].reshape(-1, 3).mean(axis=0)
    assert inner[1] > 180 and inner[0] < 60 and inner[2] < 80, inner
    outside = np.ones(red.shape, bool)
    outside[max(0, by - t):by + bh + t, max(0, bx - t):bx + bw + t] = False
    np.testing.assert_allclose(rgb[outside].mean(axis=0), (90, 110, 170), atol=6)
    # the crop that was encoded is the person, cut upright (taller than wide)
    assert crop.shape[:2] == (bh, bw) and crop[..., 1].mean() > 180 and crop[..., 0].mean() < 60
    # the grid / HTML page draw the same frame with the same box
    drawn = source_with_box(Hit(path="", score=0.0, rank=1, source=hit["source"], box=tuple(hit["box"])),
                            server_module.SOURCE_MAX_SIDE)
    assert drawn.shape == got.shape
    diff = np.abs(drawn.astype(int) - got.astype(int)).max(axis=2)
    assert np.median(diff) <= 2 and diff.mean() < 6  # up to the served JPEG's loss (quality 88)


def test_serve_command_loads_once_checks_the_index_and_warns_off_loopback(world, tmp_path, monkeypatch, capsys):
    cfg, weights, index_dir, files = world
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))
    base = ["serve", "--config-file", CONFIG, "--weights", weights, "--index", str(index_dir)]
    assert SEARCH.main(base + ["--max-topk", "4", "--topk", "2", *OPTS]) == 0
    out = capsys.readouterr()
    app, kw = started.pop()
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8000 and "WARNING" not in out.err
    assert f"serving {len(files)} entries" in out.out
    with TestClient(app) as c:
        assert len(c.get("/api/search", params={"q": "a man"}).json()["hits"]) == 2
        assert c.get("/api/search", params={"q": "a man", "k": 5}).status_code == 422

    assert SEARCH.main(base + ["--host", "0.0.0.0", "--port", "8123", *OPTS]) == 0
    out = capsys.readouterr()
    assert started.pop()[1] == {"host": "0.0.0.0", "port": 8123, "log_level": "warning"}
    assert "WARNING" in out.err and "anyone" in out.err

    # an index of other weights is refused before anything listens
    state = torch.load(weights, weights_only=True)["model"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.01
    other = tmp_path / "other.pth"
    atomic_torch_save({"model": state}, other)
    rc = SEARCH.main(["serve", "--config-file", CONFIG, "--weights", str(other), "--index", str(index_dir), *OPTS])
    err = capsys.readouterr().err
    assert rc == 2 and "weights hash" in err and str(index_dir) in err
    # bad limits are refused naming the flag
    assert SEARCH.main(base + ["--max-topk", "3", "--topk", "5", *OPTS]) == 2
    assert "--topk" in capsys.readouterr().err
    assert not started


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.5", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback
