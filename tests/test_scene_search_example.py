"""The demo report's scene search example (``unipt_plugin/synthetic/scene_search_example.py``).

A randomly initialised tiny model (configs/Tiny/t2i.yml, as the search tests), with its config
dumped to ``config.yaml`` as a training run writes it. The rank the Markdown reports is checked
against a brute-force recomputation: the model's own features of each person cut from the
scene images at the boxes of ``gt/gt.txt`` (read here, not through the search code) and the
identities of ``identities.json``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import unipt_plugin  # noqa: F401
from standins import random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]


def test_scene_search_example_reports_the_brute_force_rank(tmp_path, monkeypatch):
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.synthetic import scene_search_example as example

    from unipt_plugin.data.tokenizer import build_tokenizer
    from unipt_plugin.data.transforms import build_image_transform
    from unipt_plugin.engine import UniPTCheckpointer

    weights = tmp_path / "model_final.pth"
    cfg = random_checkpoint(CONFIG, OPTS, weights)
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    report, work = tmp_path / "report", tmp_path / "work"
    # smaller scenes than the demo's, to keep the test fast (the code path is the same)
    monkeypatch.setattr(example, "NUM_PEOPLE", 5)
    monkeypatch.setattr(example, "NUM_SCENES", 3)
    monkeypatch.setattr(example, "SCENE_SIZE", (240, 400))
    monkeypatch.setattr(example, "PERSON_HEIGHT", (100, 170))

    md_path = example.write_scene_search_example(str(report), str(work), str(config), str(weights), seed=0)
    assert md_path == str(report / "scene_search.md")
    md = Path(md_path).read_text()
    assert md.startswith("## Scene search example\n") and "![scene search](scene_search.png)" in md
    with Image.open(report / "scene_search.png") as png:
        assert png.width > png.height > 100

    scenes = work / "scene_search" / "scenes"
    captions = {int(k): v["caption"] for k, v in json.loads((scenes / "identities.json").read_text()).items()}
    query = re.search(r"^> (.+)$", md, re.M).group(1)
    target = [k for k, c in captions.items() if c == query]
    assert len(target) == 1, (query, captions)  # the query is the caption of one person in the scenes
    target = target[0]
    rows = [[float(v) for v in line.split(",")[:6]] for line in (scenes / "gt" / "gt.txt").read_text().splitlines()]
    frames_of = {}
    for frame, pid, *_ in rows:
        frames_of.setdefault(int(pid), set()).add(int(frame))
    assert len(frames_of[target]) == max(len(f) for f in frames_of.values())  # seen in the most scenes
    assert len(frames_of[target]) >= 2

    # brute force: every true box cut from its image, the model's own features, inner products
    model = build_model(cfg)
    UniPTCheckpointer(model).load(str(weights))
    model.eval()
    tf = build_image_transform(cfg, is_train=False)
    images = sorted((scenes / "img1").glob("*.jpg"))
    crops = []
    for frame, _, x, y, w, h in rows:
        with Image.open(images[int(frame) - 1]) as im:
            crops.append(tf(im.convert("RGB").crop((int(x), int(y), int(x + w), int(y + h)))))
    tok = build_tokenizer(cfg)([query])
    with torch.no_grad():
        scores = (model({"text_ids": tok["input_ids"], "text_mask": tok["attention_mask"]})
                  @ model({"images": torch.stack(crops)}).T)[0].double().numpy()
    ids = np.array([int(r[1]) for r in rows])
    best = scores[ids == target].max()
    others = scores[ids != target]
    tol = 1e-5  # batch composition changes float sums by ~1e-7; wider near-ties would make the rank ambiguous
    lo, hi = 1 + int((others > best + tol).sum()), 1 + int((others > best - tol).sum())
    assert lo == hi, f"near-tie at the described person's best score: rank {lo}..{hi}; pick another seed"
    reported = re.search(r"first crop came at \*\*rank (\d+)\*\* of the (\d+) crops", md)
    assert reported, md
    assert int(reported.group(1)) == lo and int(reported.group(2)) == len(rows)
    # the top-5 table names who each hit is, in the brute-force order
    order = np.argsort(-scores, kind="stable")[:5]
    who = re.findall(r"^\| \d+ \| [-0-9.]+ \| .+? \| .+? \| (the described person|someone else) \|$", md, re.M)
    assert who == ["the described person" if ids[i] == target else "someone else" for i in order]
