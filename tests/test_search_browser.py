"""The search page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The real server (uvicorn, in a thread, on a free local port) serves an index of people cut
from synthetic street scenes (their true boxes, ``boxes:`` detector); the test types a
description, submits, waits for the grid and checks that the hits shown, first one included,
are the ones a brute-force inner product of the model's own features ranks first, each with its
crop and its source scene (box drawn). When the environment variable ``UNIPT_SCREENSHOT`` names a file, a screenshot of
the page is saved there (docs/images/search_page.png was made this way).

Chromium or Playwright missing is a failure, not a skip: ``make browser`` installs chromium
(``make install`` the Python packages).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unipt_plugin  # noqa: F401
from unipt_plugin.search import GalleryIndex, SearchEncoder, index_folder, load_model
from unipt_plugin.search.server import SearchService, create_app, running_server
from unipt_plugin.search.pipeline import SceneOptions
from unipt_plugin.synthetic import render_scene_images
from unipt_plugin.synthetic.attributes import sample_identity
from unipt_plugin.utils import atomic_open
from standins import random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
TOPK = 4
# Each browser step (start, load, search, images) may take this long before the test fails; an
# idle machine needs well under a second per step, a machine shared with trainings far more.
BROWSER_TIMEOUT_MS = 180_000


def launch_chromium(playwright):
    """Headless Debian chromium through Playwright; pytest.fail (never skip) when it is missing."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("the browser test needs Debian's chromium on PATH; `make browser` installs it "
                    "(apt-get install chromium)")
    return playwright.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"],
                                      timeout=BROWSER_TIMEOUT_MS)


def search_in_browser(url: str, query: str, k: int, screenshot: str | None = None,
                      viewport: tuple[int, int] = (1280, 720)) -> dict:
    """Open ``url`` in headless Chromium, type ``query``, set k, submit, wait for the grid.

    Returns ``{"ids": entry ids shown (grid order), "ranks", "captions", "crops_loaded": bool per
    hit, "status", "requests": every URL the page fetched, "console_errors"}``; writes a
    screenshot (PNG) to ``screenshot`` when given.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Python's playwright (requirements.txt; `make install`) and "
                    "Debian's chromium (`make browser` installs it)")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(BROWSER_TIMEOUT_MS)  # generous: CI machines may be busy
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/", wait_until="load")
            page.locator("#q").press_sequentially(query)
            page.fill("#k", str(k))
            page.click("#go")
            page.wait_for_selector("#results[data-query] .hit")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')].every(i => i.complete)")
            hits = page.locator("#results .hit")
            out = {
                "ids": [int(v) for v in hits.evaluate_all("els => els.map(e => e.dataset.id)")],
                "ranks": [int(v) for v in hits.evaluate_all("els => els.map(e => e.dataset.rank)")],
                "captions": hits.locator("figcaption").all_inner_texts(),
                "crops_loaded": hits.locator("img.crop").evaluate_all(
                    "els => els.map(i => i.complete && i.naturalWidth > 0)"),
                "sources": hits.evaluate_all(
                    "els => els.map(e => { const i = e.querySelector('img.source');"
                    " return i ? [i.getAttribute('src'), i.complete && i.naturalWidth > 0] : null; })"),
                "status": page.inner_text("#status"),
                "location": page.evaluate("location.search"),
                "requests": requests,
                "console_errors": errors,
            }
            if screenshot:
                png = page.screenshot(full_page=True)
                with atomic_open(screenshot, "wb") as f:
                    f.write(png)
            return out
        finally:
            browser.close()


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """A tiny random model and an index of the people in three synthetic street scenes:
    (cfg, weights, index dir, index files, entries, caption per MOT id, SceneSet)."""
    root = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(3)
    scenes = render_scene_images(root / "street", [sample_identity(rng) for _ in range(6)], num_images=3,
                                 size=(360, 640), people_per_image=(2, 3), person_height=(150, 260), seed=3)
    weights = root / "model.pth"
    cfg = random_checkpoint(CONFIG, OPTS, weights)
    index_dir = root / "idx"
    gt = Path(scenes.root) / "gt" / "gt.txt"
    index_folder(SearchEncoder(load_model(cfg), cfg, num_threads=1), cfg, Path(scenes.files[0]).parent, index_dir,
                 options=SceneOptions(detector=f"boxes:{gt}"))
    gallery = GalleryIndex.load(index_dir)
    assert len(gallery) == len(scenes.rows) >= 6
    return cfg, str(weights), index_dir, gallery.files, gallery.entries, scenes


def _expected_order(cfg, weights, entries, text):
    """Gallery rows by brute-force inner product of the model's own features (no search code) of
    each person cut from their scene at their box (what indexing encodes, before the crop is saved
    as JPEG)."""
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.data.tokenizer import build_tokenizer
    from unipt_plugin.data.transforms import build_image_transform
    from unipt_plugin.engine import UniPTCheckpointer

    model = build_model(cfg)
    UniPTCheckpointer(model).load(weights)
    model.eval()
    tf = build_image_transform(cfg, is_train=False)
    crops = []
    for e in entries:
        x, y, w, h = e["box"]
        crops.append(Image.open(e["source"]).convert("RGB").crop((x, y, x + w, y + h)))
    images = torch.stack([tf(c) for c in crops])
    tok = build_tokenizer(cfg)([text])
    with torch.no_grad():
        scores = (model({"text_ids": tok["input_ids"], "text_mask": tok["attention_mask"]})
                  @ model({"images": images}).T)[0].numpy()
    return np.argsort(-scores, kind="stable"), scores


def test_page_in_headless_chromium_shows_the_expected_first_hit(people):
    cfg, weights, index_dir, files, entries, scenes = people
    text = scenes.identities[scenes.rows[0].id]  # a description of someone in the scenes, as a user types it
    order, scores = _expected_order(cfg, weights, entries, text)
    assert scores[order[0]] - scores[order[1]] > 1e-4, "ambiguous top-1: pick another query"

    service = SearchService(SearchEncoder(load_model(cfg), cfg, num_threads=1), GalleryIndex.load(index_dir),
                            index_dir)
    with running_server(create_app(service)) as url:
        shown = search_in_browser(url, text, TOPK, screenshot=os.environ.get("UNIPT_SCREENSHOT") or None)

    assert shown["ids"][0] == int(order[0]), (shown, order[:TOPK])
    assert shown["ids"] == order[:TOPK].tolist() and shown["ranks"] == list(range(1, TOPK + 1))
    assert shown["captions"][0].startswith(f"#1 {scores[order[0]]:.4f}"), shown["captions"][0]
    assert os.path.basename(files[order[0]]) in shown["captions"][0]
    assert all(shown["crops_loaded"]), shown  # every crop image came from /image/<id>
    assert f"{TOPK} of {len(files)} entries" in shown["status"]
    # beside each crop, its scene (the /source/<id> image, loaded) and the scene's name
    assert shown["sources"] == [[f"/source/{i}", True] for i in order[:TOPK]], shown["sources"]
    assert os.path.basename(entries[order[0]]["source"]) in shown["captions"][0]
    assert "k=4" in shown["location"]  # the URL reproduces the search
    # nothing but this server was contacted, and the page raised no error (CSP included)
    assert shown["requests"] and all(u.startswith(url + "/") for u in shown["requests"]), shown["requests"]
    assert {f"{url}/image/{i}" for i in order[:TOPK]} <= set(shown["requests"])
    assert not shown["console_errors"], shown["console_errors"]
