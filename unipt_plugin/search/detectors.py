"""Person detectors for scene photos and video frames, chosen by ``tools/search.py index --detector``.

Every detector maps an (H, W, 3) uint8 RGB image to :class:`Detection` boxes ``(x, y, w, h)``
(top-left corner and size) in **source pixels**: the image handed to :meth:`Detector.detect`
may be a downscaled copy of the source (``source_size`` gives the source's (width, height)), and
boxes are mapped back to the source and clipped to it. :func:`build_detector` makes one from a
spec string (``DETECTOR_REGISTRY`` holds the kinds):

* ``none``: the whole image is one person crop (a folder of crops; the default for images).
* ``hog``: OpenCV's HOG + linear SVM pedestrian detector (``HOGDescriptor_getDefaultPeopleDetector``,
  shipped with OpenCV, nothing downloaded; the default for videos). ``detectMultiScale`` on the
  colour image (gradients of the strongest channel) downscaled so that its longer side is at most
  ``hog_side`` pixels (default 640: a 1280x720 frame is searched at 640x360), with an 8-pixel
  stride over an image pyramid of step ``hog_scale``, SVM margin ``threshold`` (default 0, as
  OpenCV) and windows grouped when at least 2 overlap. The 64x128 window finds people about 100
  pixels tall or taller in the downscaled image (about 200 source pixels in a 1280x720 frame at
  the default ``hog_side``; raise it to find smaller people, at the cost of speed). Its windows
  hold a margin around the person; each box is shrunk by ``hog_shrink`` (fraction of the width per
  side, of the height per side) to the person's extent.
* ``onnx:<file>``: a person detector exported to ONNX, run with onnxruntime (CUDA when the model
  device is a GPU and onnxruntime has the CUDA provider, else the CPU). Input: one (1, 3, S, S)
  float32 RGB image scaled to [0, 1], letterboxed to S = ``detector_size`` (aspect kept, centred,
  grey 114 padding), or the model's own fixed input size when its graph has one. The first
  output is read in one of these layouts:

  - (N, 6) (or (1, N, 6) where the layout is explicitly ``xyxy``): final detections
    ``[x1, y1, x2, y2, score, class]`` in input pixels;
  - (1, 4 + C, A) or (1, A, 4 + C): YOLO-style raw predictions (YOLOv8 / YOLO11 exports):
    A anchors of centre-x, centre-y, width, height in input pixels and C class scores; the
    smaller of the two last dimensions is taken as 4 + C (YOLO's A is in the thousands).

  Boxes of class ``person_class`` (default 0, COCO's person) with a score of at least
  ``threshold`` are kept and de-duplicated by non-maximum suppression.
* ``boxes:<file>``: boxes computed elsewhere, in MOTChallenge ``det.txt`` / ``gt.txt`` layout
  (``frame, id, x, y, w, h, score, ...``, read by ``unipt_plugin.synthetic.mot.read_mot``), in
  source pixels. ``frame`` is the 1-based frame number: for a video the video's frame
  (``Detection`` frame index + 1), for a folder of images the position of the image in the
  sorted list of images (the first image is frame 1, as in MOT's ``img1/000001.jpg``).
  Rows with a score under ``threshold`` (default: none dropped) are left out.

For ``hog`` and ``onnx``, boxes lower than ``min_height`` source pixels are dropped, and
non-maximum suppression (``cv2.dnn.NMSBoxes``, IoU ``nms_iou``) keeps the best of overlapping
boxes. ``boxes:`` keeps the rows as they are (clipped to the image) apart from ``threshold`` and
``min_height``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from fastreid.utils.registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["Detection", "Detector", "DetectorOptions", "DETECTOR_REGISTRY", "build_detector", "box_iou",
           "postprocess_boxes", "letterbox", "decode_onnx_output", "NoDetector", "HogDetector", "OnnxDetector",
           "BoxesDetector", "DETECTOR_KINDS"]

DETECTOR_REGISTRY = Registry("SCENE_DETECTOR")
DETECTOR_REGISTRY.__doc__ = "Person detectors: (H, W, 3) uint8 RGB -> boxes (x, y, w, h) in source pixels."
#: The ``--detector`` forms (``auto`` is resolved by the pipeline: ``none`` for images, ``hog`` for videos).
DETECTOR_KINDS = ("auto", "none", "hog", "onnx:<file>", "boxes:<file>")


@dataclass(frozen=True)
class Detection:
    """A person box ``(x, y, w, h)`` in source pixels (top-left corner, size) and its score
    (None for ``none``; the SVM margin for ``hog``; the class score for ``onnx``; the file's
    score column for ``boxes:``)."""

    box: tuple[float, float, float, float]
    score: float | None = None


@dataclass(frozen=True)
class DetectorOptions:
    """Settings of the detectors (the ``tools/search.py index`` flags; defaults documented there).

    Attributes:
        min_height: boxes lower than this many source pixels are dropped (``--min-box``).
        threshold: minimum score kept; None = the detector's default (hog 0.0 SVM margin,
            onnx 0.25, boxes: everything) (``--det-threshold``).
        nms_iou: IoU above which the lower-scored of two boxes is dropped (``--nms-iou``).
        person_class: class index of "person" in an ONNX model's output (``--person-class``).
        detector_size: ONNX input side S, letterboxed to S x S (``--detector-size``).
        hog_scale: HOG image pyramid step (``--hog-scale``).
        hog_side: HOG searches the image downscaled to at most this longer side (``--hog-side``).
        hog_shrink: fractions of the HOG window's width and height cut from each side.
        device: "cpu" or "cuda[:i]" (onnx: the execution provider).
    """

    min_height: int = 48
    threshold: float | None = None
    nms_iou: float = 0.45
    person_class: int = 0
    detector_size: int = 640
    hog_scale: float = 1.05
    hog_side: int = 640
    hog_shrink: tuple[float, float] = (0.15, 0.05)
    device: str = "cpu"


class Detector:
    """Base class: :meth:`detect` returns the people in one image or frame."""

    #: the spec string it was built from (recorded in the index per source)
    spec: str = ""

    def detect(self, image: np.ndarray, frame: int | None = None,
               source_size: tuple[int, int] | None = None) -> list[Detection]:
        """People in ``image``.

        Args:
            image: (H, W, 3) uint8 RGB, possibly a downscaled copy of the source.
            frame: 0-based frame index in its video, or the 0-based position of the image in the
                sorted folder (used by ``boxes:``); None when unknown.
            source_size: (width, height) of the source; default the image's own size.
        Returns:
            boxes in source pixels, clipped to the source, best score first where scored.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the detector holds (sessions); the default holds nothing."""


def _source_scale(image: np.ndarray, source_size: tuple[int, int] | None) -> tuple[float, tuple[int, int]]:
    """(image pixels per source pixel, (source width, source height))."""
    h, w = image.shape[:2]
    if source_size is None:
        return 1.0, (w, h)
    sw, sh = int(source_size[0]), int(source_size[1])
    return w / sw, (sw, sh)


def _clip_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """``(x, y, w, h)`` clipped to a (width, height) image; None when nothing is left."""
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(float(size[0]), float(box[0]) + float(box[2])), min(float(size[1]), float(box[1]) + float(box[3]))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def postprocess_boxes(boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int], threshold: float,
                      nms_iou: float, min_height: float) -> list[Detection]:
    """Score threshold, clipping to the (width, height) image, minimum height, then NMS.

    Args:
        boxes: (N, 4) ``(x, y, w, h)`` in source pixels.
        scores: (N,) scores.
    Returns:
        the kept boxes, best score first (``cv2.dnn.NMSBoxes`` order).
    """
    kept_boxes, kept_scores = [], []
    for box, score in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)):
        if not math.isfinite(score) or score < threshold:
            continue
        clipped = _clip_box(box, size)
        if clipped is None or clipped[3] < min_height:
            continue
        kept_boxes.append(clipped)
        kept_scores.append(float(score))
    if not kept_boxes:
        return []
    # every score left passes the threshold already; NMSBoxes wants scores above a threshold >= 0,
    # so they are shifted to >= 1 (the order, all that NMS uses, is kept)
    low = min(kept_scores)
    idx = cv2.dnn.NMSBoxes([list(b) for b in kept_boxes], [s - low + 1.0 for s in kept_scores], 0.0, float(nms_iou))
    order = [int(i) for i in np.asarray(idx).reshape(-1)]
    return [Detection(kept_boxes[i], kept_scores[i]) for i in order]


# ---------------------------------------------------------------------------------------------- none
@DETECTOR_REGISTRY.register()
class NoDetector(Detector):
    """``none``: the whole source is one person crop."""

    def __init__(self, options: DetectorOptions | None = None):
        self.spec = "none"

    def detect(self, image, frame=None, source_size=None):
        _, (sw, sh) = _source_scale(image, source_size)
        return [Detection((0.0, 0.0, float(sw), float(sh)), None)]


# ---------------------------------------------------------------------------------------------- hog
@DETECTOR_REGISTRY.register()
class HogDetector(Detector):
    """``hog``: ``cv2.HOGDescriptor`` with OpenCV's default people SVM (see the module docstring)."""

    def __init__(self, options: DetectorOptions | None = None):
        opts = options or DetectorOptions()
        if not hasattr(cv2, "HOGDescriptor"):
            raise RuntimeError("--detector hog needs OpenCV's HOGDescriptor, which OpenCV 5 ships in its contrib "
                               "build: pip install opencv-contrib-python-headless (see requirements.txt)")
        self.spec = "hog"
        self.options = opts
        self.threshold = 0.0 if opts.threshold is None else float(opts.threshold)
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV's own output on ``image`` (H, W, 3) uint8 RGB, downscaled to ``hog_side``:
        (N, 4) ``(x, y, w, h)`` windows in ``image`` pixels and (N,) SVM margins."""
        h, w = image.shape[:2]
        f = min(1.0, float(self.options.hog_side) / max(h, w))
        work = np.ascontiguousarray(image)
        if f < 1.0:
            work = cv2.resize(work, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        rects, weights = self.hog.detectMultiScale(work, hitThreshold=self.threshold, winStride=(8, 8),
                                                   padding=(8, 8), scale=float(self.options.hog_scale),
                                                   groupThreshold=1)
        return (np.asarray(rects, np.float64).reshape(-1, 4) / f, np.asarray(weights, np.float64).reshape(-1))

    def detect(self, image, frame=None, source_size=None):
        scale, size = _source_scale(image, source_size)
        rects, weights = self.raw(image)
        if not len(rects):
            return []
        sx, sy = self.options.hog_shrink
        boxes = np.stack([rects[:, 0] + sx * rects[:, 2], rects[:, 1] + sy * rects[:, 3],
                          (1 - 2 * sx) * rects[:, 2], (1 - 2 * sy) * rects[:, 3]], axis=1) / scale
        return postprocess_boxes(boxes, weights, size, self.threshold, self.options.nms_iou,
                                 self.options.min_height)


# ---------------------------------------------------------------------------------------------- onnx
def letterbox(image: np.ndarray, size: tuple[int, int], fill: int = 114) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize (aspect kept) and centre ``image`` (H, W, 3) on a (size[1], size[0]) canvas (width, height).

    Returns:
        (canvas (size[1], size[0], 3) uint8, ratio = canvas pixels per image pixel, (pad_x, pad_y)):
        an image point (x, y) lands at (x * ratio + pad_x, y * ratio + pad_y).
    """
    h, w = image.shape[:2]
    tw, th = int(size[0]), int(size[1])
    r = min(tw / w, th / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    canvas = np.full((th, tw, 3), fill, np.uint8)
    px, py = (tw - nw) // 2, (th - nh) // 2
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    canvas[py:py + nh, px:px + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return canvas, r, (float(px), float(py))


def decode_onnx_output(output: np.ndarray, person_class: int, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """An ONNX detector's first output -> ((N, 4) ``(x1, y1, x2, y2)`` in input pixels, (N,) scores)
    of class ``person_class`` (layouts in the module docstring).

    ``layout``: "auto" (2-D = ``xyxy``, 3-D = YOLO), "xyxy" or "yolo". Raises ValueError naming the
    shape when the output fits no accepted layout or has no column for ``person_class``.
    """
    out = np.asarray(output, np.float32)
    if layout == "auto":
        layout = "xyxy" if out.ndim == 2 else "yolo"
    if layout == "xyxy":
        if out.ndim == 3 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 2 or out.shape[1] != 6:
            raise ValueError(f"ONNX detector output of shape {tuple(output.shape)}: the xyxy layout is (N, 6) rows "
                             f"[x1, y1, x2, y2, score, class]")
        keep = np.rint(out[:, 5]).astype(np.int64) == int(person_class)
        return out[keep, :4].astype(np.float64), out[keep, 4].astype(np.float64)
    if layout != "yolo":
        raise ValueError(f"unknown ONNX output layout {layout!r}; expected auto, xyxy or yolo")
    if out.ndim != 3 or out.shape[0] != 1 or min(out.shape[1:]) < 5:
        raise ValueError(f"ONNX detector output of shape {tuple(output.shape)}: expected (N, 6) detections "
                         f"[x1, y1, x2, y2, score, class] or YOLO-style (1, 4 + C, A) / (1, A, 4 + C) predictions")
    pred = out[0] if out.shape[1] >= out.shape[2] else out[0].T  # -> (A, 4 + C)
    num_classes = pred.shape[1] - 4
    if not 0 <= int(person_class) < num_classes:
        raise ValueError(f"--person-class {person_class}: the ONNX detector's output {tuple(output.shape)} has "
                         f"{num_classes} class score column(s) (0..{num_classes - 1})")
    cx, cy, w, h = (pred[:, i].astype(np.float64) for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, pred[:, 4 + int(person_class)].astype(np.float64)


@DETECTOR_REGISTRY.register()
class OnnxDetector(Detector):
    """``onnx:<file>``: an exported person detector run by onnxruntime (see the module docstring)."""

    def __init__(self, path: str, options: DetectorOptions | None = None, layout: str = "auto"):
        import onnxruntime as ort

        opts = options or DetectorOptions()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--detector onnx:{path}: no such ONNX file")
        self.spec = f"onnx:{os.path.abspath(path)}"
        self.options, self.layout = opts, layout
        self.threshold = 0.25 if opts.threshold is None else float(opts.threshold)
        providers = ["CPUExecutionProvider"]
        if str(opts.device).startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning("onnxruntime has no CUDA provider here: the ONNX detector runs on the CPU")
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
            raise ValueError(f"--detector onnx:{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ValueError(f"--detector onnx:{path}: input {inp.name!r} has shape {shape}; expected (1, 3, H, W)")
        fixed_h, fixed_w = (shape[2] if isinstance(shape[2], int) else None,
                            shape[3] if isinstance(shape[3], int) else None)
        s = int(opts.detector_size)
        self.input_size = (int(fixed_w or s), int(fixed_h or s))  # (width, height)
        if (fixed_w and fixed_w != s) or (fixed_h and fixed_h != s):
            logger.info("ONNX detector %s has a fixed input of %sx%s: used instead of --detector-size %d",
                        path, fixed_w, fixed_h, s)

    def detect(self, image, frame=None, source_size=None):
        scale, size = _source_scale(image, source_size)
        canvas, ratio, (px, py) = letterbox(image, self.input_size)
        blob = canvas.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        output = self.session.run(None, {self.input_name: blob})[0]
        xyxy, scores = decode_onnx_output(output, self.options.person_class, self.layout)
        # input pixels -> image pixels -> source pixels
        x0 = (xyxy[:, 0] - px) / ratio / scale
        y0 = (xyxy[:, 1] - py) / ratio / scale
        x1 = (xyxy[:, 2] - px) / ratio / scale
        y1 = (xyxy[:, 3] - py) / ratio / scale
        boxes = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1) if len(xyxy) else np.zeros((0, 4))
        return postprocess_boxes(boxes, scores, size, self.threshold, self.options.nms_iou, self.options.min_height)

    def close(self) -> None:
        self.session = None


# ---------------------------------------------------------------------------------------------- boxes
@DETECTOR_REGISTRY.register()
class BoxesDetector(Detector):
    """``boxes:<file>``: MOT rows of a det.txt / gt.txt, looked up by 1-based frame number."""

    def __init__(self, path: str, options: DetectorOptions | None = None):
        from ..synthetic.mot import read_mot

        opts = options or DetectorOptions()
        self.spec = f"boxes:{os.path.abspath(path)}"
        self.options = opts
        self.threshold = -math.inf if opts.threshold is None else float(opts.threshold)
        self.path = path
        self.rows: dict[int, list[Any]] = {}
        for row in read_mot(path):  # errors name the file and line
            self.rows.setdefault(int(row.frame), []).append(row)
        self.frames_used: set[int] = set()

    @property
    def num_rows(self) -> int:
        return sum(len(v) for v in self.rows.values())

    def detect(self, image, frame=None, source_size=None):
        if frame is None:
            raise ValueError(f"--detector boxes:{self.path} needs frame numbers: give it one video or one folder "
                             f"of images (the sorted images are frames 1..N)")
        _, size = _source_scale(image, source_size)
        mot_frame = int(frame) + 1
        self.frames_used.add(mot_frame)
        out = []
        for row in self.rows.get(mot_frame, []):
            if row.score < self.threshold:
                continue
            clipped = _clip_box((row.x, row.y, row.w, row.h), size)
            if clipped is None:
                logger.warning("%s: frame %d box %s lies outside the %dx%d image; ignored", self.path, mot_frame,
                               (row.x, row.y, row.w, row.h), *size)
                continue
            if clipped[3] < self.options.min_height:
                continue
            out.append(Detection(clipped, float(row.score)))
        return out

    def unused_frames(self) -> list[int]:
        """MOT frame numbers of the file no detected image or sampled frame asked for."""
        return sorted(set(self.rows) - self.frames_used)


# ---------------------------------------------------------------------------------------------- factory
def build_detector(spec: str, options: DetectorOptions | None = None) -> Detector:
    """The detector named by ``spec``: ``none``, ``hog``, ``onnx:<file>`` or ``boxes:<file>``.

    Raises ValueError naming the spec and the accepted forms for anything else (``auto`` is the
    pipeline's choice between ``none`` and ``hog``, not a detector); FileNotFoundError when the
    file of ``onnx:`` / ``boxes:`` does not exist.
    """
    options = options or DetectorOptions()
    spec = str(spec).strip()
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    names = {"none": "NoDetector", "hog": "HogDetector", "onnx": "OnnxDetector", "boxes": "BoxesDetector"}
    if kind not in names or (kind in ("onnx", "boxes")) != bool(arg):
        raise ValueError(f"--detector {spec!r}: expected one of {', '.join(DETECTOR_KINDS)}")
    cls = DETECTOR_REGISTRY.get(names[kind])
    if arg:
        if not os.path.isfile(arg):
            raise FileNotFoundError(f"--detector {spec}: no such file {arg}")
        return cls(arg, options)
    return cls(options)
