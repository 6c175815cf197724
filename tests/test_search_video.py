"""Videos in the search index: sampling at --fps, near-duplicate crops kept once, resumable per video,
timestamps and source frames in the results (grid, page, JSON).

Expectations: the sampled frame indices computed by hand (ceil(k * video_fps / fps)), the
synthetic video's true boxes (gt.txt) and its walkers' still periods, hand-made de-duplication
cases.
"""
from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import unipt_plugin  # noqa: F401
from unipt_plugin.engine import setup_cfg
from unipt_plugin.search import GalleryIndex, SearchEncoder, index_folder, load_model, search_texts
from unipt_plugin.search import pipeline as pipeline_module
from unipt_plugin.search.detectors import box_iou
from unipt_plugin.search.pipeline import SceneOptions
from unipt_plugin.search.render import Hit, QueryResult, render_grid_png, render_html, results_to_json
from unipt_plugin.search.video import Deduplicator, read_source_frame, sample_frames, sampled_indices
from unipt_plugin.synthetic.attributes import sample_identity
from unipt_plugin.synthetic.mot import read_mot
from unipt_plugin.synthetic.scenes import render_scene_video
from unipt_plugin.utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
FPS, FRAMES = 8.0, 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fastreid.modeling.meta_arch import build_model

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("ckpt") / "model.pth"
    atomic_torch_save({"model": build_model(setup_cfg(CONFIG, OPTS)).state_dict()}, weights)
    cfg = setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", str(weights)])
    return cfg, SearchEncoder(load_model(cfg), cfg, batch_size=16, num_threads=1)


def _video(root: Path, seed: int):
    rng = np.random.default_rng(seed)
    ids = [sample_identity(rng) for _ in range(3)]
    return render_scene_video(root, ids, num_frames=int(FRAMES), fps=FPS, size=(180, 320), num_people=2, seed=seed,
                              person_height=(70, 110))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _video(tmp_path_factory.mktemp("video"), 4)


def test_sampling_at_fps_matches_the_hand_computation(video):
    path = video.files[0]
    # 2 per second of an 8 fps video: every 4th frame
    frames = list(sample_frames(path, 2.0))
    assert [f.index for f in frames] == list(range(0, 48, 4)) == sampled_indices(48, 8.0, 2.0)
    assert [f.time_s for f in frames] == [i / 8.0 for i in range(0, 48, 4)]
    # 3 per second: the first frame at or after k/3 s, i.e. frame ceil(8k/3), for 8k/3 < 48
    want = [math.ceil(8 * k / 3) for k in range(18)]
    assert [f.index for f in sample_frames(path, 3.0)] == want == sampled_indices(48, 8.0, 3.0)
    # 0 (every frame) and a rate above the video's: all 48
    assert len(list(sample_frames(path, 0))) == len(list(sample_frames(path, 30.0))) == 48
    # the pixels are the video's frames (read independently with OpenCV)
    cap = cv2.VideoCapture(path)
    for _ in range(8):
        cap.read()
    ok, bgr = cap.read()  # frame 8
    cap.release()
    assert ok and np.array_equal(frames[2].image, bgr[:, :, ::-1])
    rgb, size = read_source_frame(path, 8)
    assert size == (320, 180) and np.array_equal(rgb, bgr[:, :, ::-1])


def _iou_rule_entries(rows, sampled: list[int], dedup_iou: float) -> int:
    """Entries the documented rule keeps when any feature similarity passes (``--dedup-sim -1``),
    simulated per person on the true boxes: a box that overlaps the person's kept box (the
    reference) by IoU above ``dedup_iou`` in the next sampled frame is a duplicate and the
    reference stays; otherwise it is a new entry and the new reference; a sampled frame without
    the person ends the chain. (People are told apart by their id here; the test checks that no
    two people overlap that much, so that the boxes alone tell them apart too.)"""
    by = {(r.frame - 1, r.id): (r.x, r.y, r.w, r.h) for r in rows}
    n = 0
    for pid in sorted({r.id for r in rows}):
        ref = None
        for f in sampled:
            box = by.get((f, pid))
            if box is None:
                ref = None
            elif ref is None or box_iou(box, ref) <= dedup_iou:
                n, ref = n + 1, box
    return n


def _still(rows, sampled: list[int]) -> set[tuple[int, tuple[int, int, int, int]]]:
    """(frame, box) of the true boxes that repeat exactly their person's box of the previous
    sampled frame: the person stood still in between (the renderer draws the same pose at the
    same place)."""
    by = {(r.frame - 1, r.id): (r.x, r.y, r.w, r.h) for r in rows}
    out = set()
    for prev, f in zip(sampled, sampled[1:]):
        for r in rows:
            if r.frame - 1 == f and by.get((prev, r.id)) == (r.x, r.y, r.w, r.h):
                out.add((f, (int(r.x), int(r.y), int(r.w), int(r.h))))
    return out


def test_standing_people_give_one_entry_per_still_period(tiny, video, tmp_path):
    cfg, encoder = tiny
    rows = read_mot(Path(video.root) / "gt" / "gt.txt")
    sampled = sampled_indices(FRAMES, FPS, 2.0)
    in_sampled = [r for r in rows if r.frame - 1 in sampled]
    for f in sampled:  # two people never overlap enough to be taken for one another
        boxes = [(r.x, r.y, r.w, r.h) for r in in_sampled if r.frame - 1 == f]
        assert all(box_iou(a, b) <= 0.7 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    gt = f"boxes:{video.root}/gt/gt.txt"

    # the IoU rule alone (every similarity passes): the count simulated on the true boxes
    report = index_folder(encoder, cfg, video.files[0], tmp_path / "iou_only",
                          options=SceneOptions(detector=gt, fps=2.0, dedup_sim=-1.0))
    expected = _iou_rule_entries(rows, sampled, 0.7)
    assert (report.frames, report.detections) == (len(sampled), len(in_sampled))
    assert report.total == expected < len(in_sampled) and report.duplicates == len(in_sampled) - expected

    # the defaults (IoU 0.7 and cosine 0.9): a person standing still is indexed once per still
    # period: no entry repeats the same person's box of the previous sampled frame
    still = _still(rows, sampled)
    assert still  # somebody stands still across sampled frames
    report = index_folder(encoder, cfg, video.files[0], tmp_path / "idx", options=SceneOptions(detector=gt, fps=2.0))
    gi = GalleryIndex.load(tmp_path / "idx")
    kept = {(e["frame"], tuple(e["box"])) for e in gi.entries}
    assert not kept & still
    assert expected <= report.total <= len(in_sampled) - len(still)
    truth = {(r.frame - 1, (int(r.x), int(r.y), int(r.w), int(r.h))) for r in rows}
    assert kept <= truth  # each entry is a true box of its frame
    for e in gi.entries:
        assert e["time_s"] == pytest.approx(e["frame"] / FPS) and e["source"] == video.files[0]
    assert gi.sources[video.files[0]]["entries"] == report.total == len(gi)
    assert gi.sources[video.files[0]]["duplicates_dropped"] == report.duplicates == len(in_sampled) - report.total

    # without de-duplication (no IoU can exceed 1): every box of every sampled frame
    report = index_folder(encoder, cfg, video.files[0], tmp_path / "idx_all",
                          options=SceneOptions(detector=gt, fps=2.0, dedup_iou=1.0))
    assert report.total == len(in_sampled) and report.duplicates == 0


def test_deduplicator_by_hand():
    d = Deduplicator(dedup_iou=0.7, dedup_sim=0.9)
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    box = (10, 10, 50, 100)
    moved = (40, 10, 50, 100)  # IoU 20/80 = 0.25 with box
    assert d.filter([box], a[None]) == [True]
    assert d.filter([box], (a + 0.01 * b)[None]) == [False]  # same place, same look
    assert d.filter([box, (12, 10, 50, 100)], np.stack([a, b])) == [False, True]  # someone else arrives
    assert d.filter([moved], a[None]) == [True]  # the first moved away: a new entry
    assert d.filter([], np.zeros((0, 3))) == []  # a frame without people ends every chain
    assert d.filter([moved], a[None]) == [True]
    assert d.dropped == 2
    with pytest.raises(ValueError, match="--dedup-iou"):
        Deduplicator(dedup_iou=1.5)


def test_resume_per_video(tiny, video, tmp_path, monkeypatch):
    """Interrupted in the second video: the first stays indexed and is skipped next time; the
    second is redone from its start; the result equals an uninterrupted run's."""
    cfg, encoder = tiny
    folder = tmp_path / "videos"
    folder.mkdir()
    other = _video(tmp_path / "v2", 5)
    (folder / "a.avi").symlink_to(video.files[0])
    (folder / "b.avi").symlink_to(other.files[0])
    first, second = sorted([video.files[0], other.files[0]])  # the order they are indexed in (real paths)
    opts = SceneOptions(detector="hog", fps=2.0)
    # a stand-in detector with fixed boxes (HOG finds few people in frames this small)
    monkeypatch.setattr(pipeline_module, "build_detector", lambda spec, options=None: _HalvesDetector())
    real = pipeline_module.sample_frames

    def interrupted(path, fps):
        for n, frame in enumerate(real(path, fps)):
            if path == second and n == 3:
                raise KeyboardInterrupt("simulated interruption")
            yield frame

    monkeypatch.setattr(pipeline_module, "sample_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index_folder(encoder, cfg, folder, tmp_path / "idx", options=opts)
    gi = GalleryIndex.load(tmp_path / "idx")
    assert list(gi.sources) == [first]
    assert len(gi) > 0 and {e["source"] for e in gi.entries} == {first}
    first_entries = len(gi)

    opened = []
    monkeypatch.setattr(pipeline_module, "sample_frames", lambda p, f: (opened.append(p), real(p, f))[1])
    report = index_folder(encoder, cfg, folder, tmp_path / "idx", options=opts)
    assert opened == [second] and report.videos == 1  # the first video is not read again
    gi = GalleryIndex.load(tmp_path / "idx")
    assert list(gi.sources) == [first, second] and len(gi) == first_entries + report.encoded
    assert report.encoded > 0

    opened.clear()
    assert index_folder(encoder, cfg, folder, tmp_path / "idx", options=opts).encoded == 0 and opened == []
    index_folder(encoder, cfg, folder, tmp_path / "once", options=opts)  # uninterrupted
    once = GalleryIndex.load(tmp_path / "once")
    assert [(e["source"], e["frame"], e["box"]) for e in once.entries] == \
        [(e["source"], e["frame"], e["box"]) for e in gi.entries]
    np.testing.assert_allclose(once.features, gi.features, rtol=1e-5, atol=1e-6)


class _HalvesDetector:
    """A stand-in detector: the left and the right half of every frame."""

    spec = "halves"

    def detect(self, image, frame=None, source_size=None):
        from unipt_plugin.search.detectors import Detection

        w, h = source_size
        return [Detection((0.0, 0.0, w / 2, float(h)), 1.0), Detection((w / 2, 0.0, w / 2, float(h)), 0.5)]

    def close(self):
        pass


def test_results_show_the_source_frame_box_and_time(tiny, video, tmp_path):
    cfg, encoder = tiny
    index_folder(encoder, cfg, video.files[0], tmp_path / "idx",
                 options=SceneOptions(detector=f"boxes:{video.root}/gt/gt.txt", fps=2.0))
    gi = GalleryIndex.load(tmp_path / "idx")
    results = search_texts(encoder, gi, ["a person walking"], 3)
    hits = results[0].hits
    assert all(h.source == video.files[0] and h.frame is not None and h.box is not None for h in hits)
    for h in hits:
        e = gi.entries[gi.files.index(h.path)]
        assert (h.frame, h.time_s, list(h.box), h.det_score) == (e["frame"], e["time_s"], e["box"], e["det_score"])
    js = results_to_json(results)[0]["results"][0]
    assert js["source"] == hits[0].source and js["frame"] == hits[0].frame and js["box"] == list(hits[0].box)

    canvas = render_grid_png(results, tmp_path / "grid.png", thumb_height=120, thumb_width=60, context_width=160)
    pad, text_w, cell = 8, 260, 60 + 8 + 160 + 8
    for j, h in enumerate(hits):
        ctx = canvas[pad:pad + 120, text_w + j * cell + 68:text_w + j * cell + 68 + 160]
        red = (ctx[..., 2] > 200) & (ctx[..., 1] < 60) & (ctx[..., 0] < 60)
        ys, xs = np.nonzero(red)
        assert red.sum() > 50, "no box drawn on the source frame"
        # the drawn box sits where the entry's box is: 160x90 tile of a 320x180 frame, centred
        s, oy = 160 / 320, (120 - 90) // 2
        x, y, w, hh = h.box
        assert abs(xs.min() - x * s) <= 3 and abs(ys.min() - (y * s + oy)) <= 3
        assert abs(xs.max() - (x + w) * s) <= 3

    page = render_html(results, tmp_path / "page.html")
    assert page.count('class="source"') == 3
    assert f"t=0:{hits[0].time_s:04.1f}" in page and f"(frame {hits[0].frame})" in page  # a 6 s video
    uris = re.findall(r'class="source" src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))).convert("RGB"))
    assert frame.shape[1] == 320  # the whole frame (not downscaled at this size), box drawn in red
    x, y, w, hh = hits[0].box
    assert frame[y + hh // 2, max(0, x - 1):x + 3, 0].max() > 180


def test_hits_without_a_source_render_as_before(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 64), (10, 200, 30)).save(img)
    res = [QueryResult("a man", [Hit(str(img), 0.5, 1)])]
    canvas = render_grid_png(res, tmp_path / "g.png", thumb_height=64, thumb_width=32)
    assert canvas.shape[1] == 260 + 32 + 8 + 8  # no source tile
    assert json.loads(json.dumps(results_to_json(res)))[0]["results"][0] == {"rank": 1, "path": str(img), "score": 0.5}
