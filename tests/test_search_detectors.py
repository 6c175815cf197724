"""Person detectors of `tools/search.py index --detector`: boxes: (MOT files), onnx: (a tiny detector
built as an ONNX graph here), hog (OpenCV's), none; NMS / minimum size; entries in the index.

Expectations: the synthetic scenes' true boxes (gt.txt), boxes computed by hand for the ONNX
model's constant outputs after letterboxing, hand-made NMS cases.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unipt_plugin  # noqa: F401
from unipt_plugin.engine import setup_cfg
from unipt_plugin.search import GalleryIndex, SearchEncoder, index_folder, load_model, search_texts
from unipt_plugin.search.detectors import (DetectorOptions, HogDetector, build_detector, decode_onnx_output,
                                           letterbox, postprocess_boxes)
from unipt_plugin.search.pipeline import SceneOptions
from unipt_plugin.synthetic.attributes import sample_identity
from unipt_plugin.synthetic.mot import MotRow, read_mot, write_mot
from unipt_plugin.synthetic.scenes import render_scene_images
from unipt_plugin.utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]


def _search_tool():
    spec = importlib.util.spec_from_file_location("search_tool_det", ROOT / "tools" / "search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cfg, weights path, encoder) of a randomly initialised tiny model saved as a checkpoint."""
    from fastreid.modeling.meta_arch import build_model

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("ckpt") / "model.pth"
    atomic_torch_save({"model": build_model(setup_cfg(CONFIG, OPTS)).state_dict()}, weights)
    cfg = setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", str(weights)])
    return cfg, str(weights), SearchEncoder(load_model(cfg), cfg, batch_size=16, num_threads=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Five small synthetic street scenes (240x320) with 1-3 people each and their true boxes."""
    rng = np.random.default_rng(3)
    ids = [sample_identity(rng) for _ in range(5)]
    return render_scene_images(tmp_path_factory.mktemp("scenes"), ids, num_images=5, size=(240, 320),
                               people_per_image=(1, 3), person_height=(90, 150), seed=2)


# ---------------------------------------------------------------------------------------------- boxes:
def test_boxes_detector_finds_every_true_person_with_its_box(tiny, scenes, tmp_path):
    cfg, _, encoder = tiny
    rows = read_mot(Path(scenes.root) / "gt" / "gt.txt")
    assert len(rows) >= 7  # the scenes hold people at all
    index_dir = tmp_path / "idx"
    report = index_folder(encoder, cfg, Path(scenes.root) / "img1", index_dir,
                          options=SceneOptions(detector=f"boxes:{scenes.root}/gt/gt.txt"))
    assert report.detections == report.encoded == report.total == len(rows)
    gi = GalleryIndex.load(index_dir)
    got = sorted((Path(e["source"]).name, tuple(e["box"])) for e in gi.entries)
    want = sorted((f"{r.frame:06d}.jpg", (int(r.x), int(r.y), int(r.w), int(r.h))) for r in rows)
    assert got == want
    # every crop is a file of the index, and holds the source's pixels inside the box
    for path, e in zip(gi.files, gi.entries):
        assert Path(path).is_relative_to(index_dir.resolve() / "crops")
        assert e["frame"] is None and e["time_s"] is None and e["det_score"] == 1.0
        x, y, w, h = e["box"]
        src = np.asarray(Image.open(e["source"]).convert("RGB"), np.float64)[y:y + h, x:x + w]
        crop = np.asarray(Image.open(path).convert("RGB"), np.float64)
        assert crop.shape == src.shape and np.abs(crop - src).mean() < 8  # JPEG re-encoding only (a shifted box: ~30)
    # the stored features are the model's own on the true boxes cut out of the sources
    tf = encoder.transform
    cut = [Image.open(e["source"]).convert("RGB").crop((e["box"][0], e["box"][1], e["box"][0] + e["box"][2],
                                                        e["box"][1] + e["box"][3])) for e in gi.entries[:4]]
    with torch.no_grad():
        ref = encoder.model({"images": torch.stack([tf(c) for c in cut])})
    np.testing.assert_allclose(gi.features[:4], ref.numpy(), rtol=1e-4, atol=1e-5)
    # the manifest names the crops relative to the index folder; the hits carry the metadata
    manifest = json.loads((index_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == 2 and all(f.startswith("crops/") for f in manifest["files"])
    hit = search_texts(encoder, gi, ["a person"], 1)[0].hits[0]
    i = gi.files.index(hit.path)
    assert (hit.source, hit.box, hit.det_score, hit.frame) == (gi.entries[i]["source"], tuple(gi.entries[i]["box"]),
                                                                1.0, None)


def test_boxes_threshold_min_height_and_frames(tiny, scenes, tmp_path):
    cfg, _, encoder = tiny
    rows = read_mot(Path(scenes.root) / "gt" / "gt.txt")
    # give the rows scores 0.1, 0.2, ...; make one box tiny; add rows for a frame beyond the images
    scored = [MotRow(r.frame, -1, r.x, r.y, r.w, r.h, round(0.1 * (k + 1), 3)) for k, r in enumerate(rows)]
    scored[0] = MotRow(scored[0].frame, -1, scored[0].x, scored[0].y, 30, 20, 5.0)
    scored.append(MotRow(99, -1, 0, 0, 50, 100, 9.0))
    det = tmp_path / "det.txt"
    write_mot(det, scored)
    opts = SceneOptions(detector=f"boxes:{det}", detector_options=DetectorOptions(threshold=0.35, min_height=48))
    report = index_folder(encoder, cfg, Path(scenes.root) / "img1", tmp_path / "idx", options=opts)
    expected = [r for r in scored[1:] if r.score >= 0.35 and r.frame <= 5]
    assert report.total == len(expected)
    gi = GalleryIndex.load(tmp_path / "idx")
    assert sorted(e["det_score"] for e in gi.entries) == sorted(r.score for r in expected)


# ---------------------------------------------------------------------------------------------- onnx:
def _export(out: np.ndarray, path: Path, size: int) -> Path:
    """A tiny ONNX detector that outputs ``out`` whatever the (1, 3, size, size) image (it depends
    on the image only through a zero term), written with the onnx library's own builders
    (seconds faster than tracing a torch module through torch.onnx.export on this machine)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = np.asarray(out, np.float32)
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["pred", "nothing"], ["detections"])]
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, list(out.shape))],
        initializer=[numpy_helper.from_array(out, "pred"), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# Source image 320x240 (width x height), detector input 64x64: ratio 0.2, resized to 64x48,
# centred with 8 pixels of padding above and below. An input box (x1, y1, x2, y2) is the source
# box ((x1 - 0) / 0.2, (y1 - 8) / 0.2, (x2 - x1) / 0.2, (y2 - y1) / 0.2).
_XYXY = [[10, 12, 30, 40, 0.9, 0],     # person -> (50, 20, 100, 140)
         [40, 10, 52, 38, 0.6, 0],     # person -> (200, 10, 60, 140)
         [11, 12, 31, 40, 0.8, 0],     # person overlapping the first (IoU ~0.9): NMS drops it
         [0, 20, 20, 50, 0.95, 2],     # another class
         [50, 30, 60, 55, 0.1, 0]]     # person under the score threshold
_EXPECTED = [(50.0, 20.0, 100.0, 140.0, 0.9), (200.0, 10.0, 60.0, 140.0, 0.6)]


def _yolo(pred_xyxy) -> np.ndarray:
    """(A, 4 + C) centre-xywh + per-class scores (3 classes) of the xyxy rows."""
    out = []
    for x1, y1, x2, y2, score, cls in pred_xyxy:
        scores = [0.0, 0.0, 0.0]
        scores[int(cls)] = score
        out.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, *scores])
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("layout", ["xyxy", "yolo_channels_first", "yolo_anchors_first"])
def test_onnx_detector_returns_the_models_boxes_in_source_pixels(tmp_path, layout):
    if layout == "xyxy":
        out = np.asarray(_XYXY, np.float32)
    elif layout == "yolo_channels_first":  # YOLO's A (thousands) is larger than 4 + C: 10 > 7 here
        out = np.concatenate([_yolo(_XYXY), np.zeros((5, 7), np.float32)]).T[None]  # (1, 4 + C, A) = (1, 7, 10)
    else:
        out = np.concatenate([_yolo(_XYXY), np.zeros((3, 7), np.float32)])[None]  # (1, A, 4 + C) = (1, 8, 7)
    model = _export(out, tmp_path / "det.onnx", 64)
    det = build_detector(f"onnx:{model}", DetectorOptions(detector_size=64, min_height=10))
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    got = [(*d.box, d.score) for d in det.detect(image)]
    np.testing.assert_allclose(got, _EXPECTED, atol=1e-3)
    # the same source given downscaled to half: boxes still in source pixels
    half = np.ascontiguousarray(image[::2, ::2])
    got_half = [(*d.box, d.score) for d in det.detect(half, source_size=(320, 240))]
    np.testing.assert_allclose(got_half, _EXPECTED, atol=1e-3)
    # a portrait source (240 wide, 320 high): resized to 48x64, 8 pixels of padding left and right
    tall = np.random.default_rng(1).integers(0, 255, (320, 240, 3), dtype=np.uint8)
    np.testing.assert_allclose([(*d.box, d.score) for d in det.detect(tall)],
                               [(10, 60, 100, 140, 0.9), (160, 50, 60, 140, 0.6)], atol=1e-3)
    # another person class picks the class-2 box: input (0, 20, 20, 50) -> source (0, 60, 100, 150)
    det2 = build_detector(f"onnx:{model}", DetectorOptions(detector_size=64, min_height=10, person_class=2))
    np.testing.assert_allclose([(*d.box, d.score) for d in det2.detect(image)], [(0, 60, 100, 150, 0.95)], atol=1e-3)


def test_onnx_detector_through_the_index_command(tiny, tmp_path, capsys):
    cfg, weights, _ = tiny
    model = _export(np.asarray(_XYXY, np.float32), tmp_path / "det.onnx", 64)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(photos / "a.png")
    rc = _search_tool().main(["index", "--config-file", CONFIG, "--weights", weights, "--images", str(photos),
                              "--index", str(tmp_path / "idx"), "--detector", f"onnx:{model}", "--detector-size",
                              "64", "--min-box", "10", "--no-progress", *OPTS])
    out = capsys.readouterr()
    assert rc == 0, out.err
    gi = GalleryIndex.load(tmp_path / "idx")
    # integer source boxes (rounded), best score first
    assert [tuple(e["box"]) for e in gi.entries] == [(50, 20, 100, 140), (200, 10, 60, 140)]
    assert [round(e["det_score"], 4) for e in gi.entries] == [0.9, 0.6]
    assert "2 person boxes" in out.out


def test_onnx_output_layouts_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"\(3, 5\).*\[x1, y1, x2, y2, score, class\]"):
        decode_onnx_output(np.zeros((3, 5)), 0)
    with pytest.raises(ValueError, match=r"has 1 class score column"):
        decode_onnx_output(np.zeros((1, 5, 100)), 3)
    with pytest.raises(ValueError, match="YOLO-style"):
        decode_onnx_output(np.zeros((2, 5, 100)), 0)


def test_letterbox_maps_points_as_documented():
    img = np.zeros((240, 320, 3), np.uint8)
    img[100:120, 200:210] = 255
    canvas, r, (px, py) = letterbox(img, (64, 64))
    assert canvas.shape == (64, 64, 3) and r == pytest.approx(0.2) and (px, py) == (0.0, 8.0)
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    assert xs.min() == pytest.approx(200 * r + px, abs=1) and ys.min() == pytest.approx(100 * r + py, abs=1)
    assert (canvas[:8] == 114).all() and (canvas[56:] == 114).all()


# ---------------------------------------------------------------------------------------------- hog
def test_hog_runs_on_a_scene_and_returns_boxes_in_the_image(scenes):
    hog = HogDetector(DetectorOptions())
    rng = np.random.default_rng(7)
    ids = [sample_identity(rng) for _ in range(4)]
    big = render_scene_images(Path(scenes.root).parent / "hog_scene", ids, num_images=1, size=(720, 1280),
                              people_per_image=(4, 4), seed=3)
    image = np.asarray(Image.open(big.files[0]).convert("RGB"))
    dets = hog.detect(image)
    assert dets, "HOG found nobody in a scene of four people"
    for d in dets:
        x, y, w, h = d.box
        assert 0 <= x and 0 <= y and x + w <= 1280 + 1e-6 and y + h <= 720 + 1e-6 and h >= 48
        assert np.isfinite(d.score) and d.score >= 0.0
    from unipt_plugin.search.detectors import box_iou

    assert any(box_iou(d.box, (r.x, r.y, r.w, r.h)) >= 0.5 for d in dets for r in big.rows)
    # the same image given downscaled: the boxes come back scaled to the source
    raw_full = hog.raw(image)[0]
    half = np.ascontiguousarray(image[::2, ::2])
    got = hog.detect(half, source_size=(1280, 720))
    assert got and all(0 <= d.box[0] and d.box[0] + d.box[2] <= 1280 + 1e-6 for d in got)
    assert len(raw_full) > 0


def test_nms_threshold_clipping_and_minimum_height_by_hand():
    boxes = np.array([[0, 0, 50, 100],      # A 0.9 kept
                      [5, 5, 50, 100],      # B 0.8 IoU(A, B) = 45*95 / (2*5000 - 4275) = 0.75 > 0.45: dropped
                      [200, 0, 50, 100],    # C 0.7 kept
                      [300, 0, 20, 30],     # D 0.95 lower than 48: dropped
                      [-10, 60, 40, 100],   # E 0.6 clipped to (0, 60, 30, 100), IoU with A 0.18: kept
                      [400, 0, 50, 100],    # F 0.2 under the threshold: dropped
                      [630, 0, 50, 100]])   # G 0.5 clipped to (630, 0, 10, 100) in a 640-wide image: kept
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.2, 0.5])
    got = postprocess_boxes(boxes, scores, (640, 480), threshold=0.3, nms_iou=0.45, min_height=48)
    assert [(tuple(d.box), d.score) for d in got] == [((0, 0, 50, 100), 0.9), ((200, 0, 50, 100), 0.7),
                                                      ((0, 60, 30, 100), 0.6), ((630, 0, 10, 100), 0.5)]
    # a looser NMS keeps B too
    got = postprocess_boxes(boxes, scores, (640, 480), threshold=0.3, nms_iou=0.8, min_height=48)
    assert [d.score for d in got] == [0.9, 0.8, 0.7, 0.6, 0.5]


# ---------------------------------------------------------------------------------------------- factory
def test_build_detector_specs(tmp_path):
    assert build_detector("none").detect(np.zeros((10, 20, 3), np.uint8), source_size=(40, 20))[0].box == (0, 0, 40, 20)
    assert build_detector("hog").spec == "hog"
    for bad in ("yolo", "onnx", "boxes", "none:x", "auto"):
        with pytest.raises(ValueError, match="expected one of auto, none, hog, onnx:<file>, boxes:<file>"):
            build_detector(bad)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        build_detector(f"onnx:{tmp_path / 'nope.onnx'}")
    (tmp_path / "bad.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        build_detector(f"boxes:{tmp_path / 'bad.txt'}")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        build_detector(f"onnx:{tmp_path / 'junk.onnx'}")
