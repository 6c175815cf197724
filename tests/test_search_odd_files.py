"""Folders as they come (issue 15 item 7): every odd file is indexed or skipped with a reason, never a
crash; the one image reader (read_image_rgb) gets the pixels right; old (format 1) indexes load.

Expectations: pixel values computed by hand (16-bit / 257, a rotation by numpy), PIL's own
conversions, the file bytes of the names.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import unipt_plugin  # noqa: F401
from unipt_plugin.data import image_files
from unipt_plugin.data.image_files import ImageReadError, json_dumps, read_image_rgb, scan_media
from unipt_plugin.engine import setup_cfg
from unipt_plugin.search import GalleryIndex, SearchEncoder, index_folder, load_model, search_texts
from unipt_plugin.utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "Tiny" / "t2i.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
BAD_NAME = os.fsdecode(b"bad-\xff\xfe.png")  # not UTF-8: lone surrogates in the str
BROKEN_BAD_NAME = os.fsdecode(b"broken-\xe9.jpg")


def _search_tool():
    spec = importlib.util.spec_from_file_location("search_tool_odd", ROOT / "tools" / "search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _halves(h: int, w: int, top=(200, 30, 30), bottom=(30, 30, 200)) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2], arr[h // 2:] = top, bottom
    return arr


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header announcing width x height pixels (no pixel data: PIL refuses it on opening)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A 40x20 (w x h) JPEG, left half red, right half blue, tagged EXIF orientation 6 (display
    rotated 90 degrees clockwise); returns the upright pixels expected (numpy's rotation)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20], arr[:, 20:] = (220, 20, 20), (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    return np.rot90(arr, k=-1)


@pytest.fixture()
def odd_folder(tmp_path, monkeypatch):
    """A folder with every odd case; returns (folder, {name: expectation}) where expectation is
    'indexed' or the start of the skip reason."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_halves(64, 32)).save(d / "rgb.tif")
    cv2.imwrite(str(d / "gray16.tiff"), np.full((64, 32), 40000, np.uint16))
    Image.fromarray(_halves(64, 32)).save(d / "lossless.webp", lossless=True)
    _exif_rotated_jpeg(d / "rotated.jpg")
    Image.new("CMYK", (32, 64), (0, 200, 200, 30)).save(d / "cmyk.jpg")
    cv2.imwrite(str(d / "rgb16.png"), (np.indices((64, 32)).sum(0)[..., None] * 600 + np.array([0, 1000, 2000]))
                .astype(np.uint16))
    Image.fromarray(_halves(64, 32)).save(d / "café_人.png")
    Image.fromarray(_halves(64, 32, (10, 160, 10))).save(os.path.join(d, BAD_NAME))
    Image.fromarray(_halves(64, 32)).save(d / "sub" / "inside.png")
    (d / "sub" / "loop").symlink_to(d)                       # a loop back to the top
    (d / "alias").symlink_to(d / "sub")                      # the same folder twice
    (d / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")    # dangling
    (d / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_halves(256, 128)).save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with open(os.path.join(d, BROKEN_BAD_NAME), "wb") as f:
        f.write(b"not a jpeg at all")
    (d / "bomb.png").write_bytes(_bomb_png(20000, 10000))
    Image.fromarray(_halves(64, 32)).save(d / "locked.png")
    locked = str(d / "locked.png")
    if os.geteuid() == 0:  # root reads any file: refuse this one the way the OS would
        real_open = Image.open

        def guarded(fp, *args, **kwargs):
            if os.fspath(fp) == locked:
                raise PermissionError(13, "Permission denied", locked)
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(image_files.Image, "open", guarded)
    else:
        os.chmod(locked, 0)
    expect = {"rgb.tif": "indexed", "gray16.tiff": "indexed", "lossless.webp": "indexed", "rotated.jpg": "indexed",
              "cmyk.jpg": "indexed", "rgb16.png": "indexed", "café_人.png": "indexed", BAD_NAME: "indexed",
              "inside.png": "indexed", "loop": "symbolic link loop", "gone.jpg": "broken symbolic link",
              "empty.png": "ImageReadError: image file is empty", "truncated.jpg": "ImageReadError: cannot decode",
              BROKEN_BAD_NAME: "ImageReadError: cannot decode", "bomb.png": "ImageReadError: image too large",
              "locked.png": "ImageReadError: cannot decode image"}
    return d, expect


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fastreid.modeling.meta_arch import build_model

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("ckpt") / "model.pth"
    atomic_torch_save({"model": build_model(setup_cfg(CONFIG, OPTS)).state_dict()}, weights)
    return setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", str(weights)]), str(weights)


def test_every_odd_file_is_indexed_or_skipped_with_a_reason(tiny, odd_folder, tmp_path, capsys):
    cfg, weights = tiny
    folder, expect = odd_folder
    index_dir = tmp_path / "idx"
    rc = _search_tool().main(["index", "--config-file", CONFIG, "--weights", weights, "--images", str(folder),
                              "--index", str(index_dir), "--no-progress", *OPTS])
    out = capsys.readouterr()
    assert rc == 0, out.err
    raw = (index_dir / "manifest.json").read_bytes()
    manifest = json.loads(raw.decode("utf-8"))  # valid UTF-8 despite the non-UTF-8 name
    indexed = sorted(os.path.basename(f) for f in manifest["files"])
    assert indexed == sorted(k for k, v in expect.items() if v == "indexed")  # inside.png once
    skipped = {os.path.basename(s["path"]): s["reason"] for s in manifest["skipped"]}
    want_skipped = {k: v for k, v in expect.items() if v != "indexed"}
    assert set(want_skipped) <= set(skipped)
    for name, reason in want_skipped.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    assert set(skipped) - set(want_skipped) <= {"sub", "alias"}  # the folder reached twice: noted once
    # the names: non-ASCII kept as is, non-UTF-8 bytes as \udcXX escapes that load back exactly
    assert "café_人.png".encode("utf-8") in raw and b"\\udcff\\udcfe" in raw
    bad = next(f for f in GalleryIndex.load(index_dir).files if "bad-" in f)
    assert os.fsencode(bad) == os.fsencode(os.path.join(os.path.realpath(folder), BAD_NAME))
    assert os.path.isfile(bad)
    # the report names every skipped file, printable (\xe9 for the undecodable byte)
    assert f"skipped {len(skipped)} file(s)" in out.out and "broken-\\xe9.jpg: ImageReadError" in out.out
    for name in ("gone.jpg", "empty.png", "truncated.jpg", "bomb.png", "locked.png"):
        assert name in out.out


def test_read_image_rgb_gets_the_pixels_right(odd_folder):
    folder, _ = odd_folder
    img, size = read_image_rgb(folder / "gray16.tiff")
    assert size == (32, 64) and img.mode == "RGB"
    assert np.unique(np.asarray(img)).tolist() == [round(40000 / 257)]  # 156 (not clipped to 255)
    rgb16 = cv2.imread(str(folder / "rgb16.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1].astype(np.float64)
    assert np.abs(np.asarray(read_image_rgb(folder / "rgb16.png")[0]) - rgb16 / 257).max() <= 1.0
    expected = _exif_rotated_jpeg(folder / "again.jpg")
    img, size = read_image_rgb(folder / "again.jpg")
    assert size == (20, 40) and img.size == (20, 40)  # upright: width and height swapped
    assert np.abs(np.asarray(img).astype(int) - expected).mean() < 8
    with Image.open(folder / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        want = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(read_image_rgb(folder / "cmyk.jpg")[0]), want)
    np.testing.assert_array_equal(np.asarray(read_image_rgb(folder / "lossless.webp")[0]), _halves(64, 32))
    with pytest.raises(ImageReadError, match="too large to decode safely"):
        read_image_rgb(folder / "bomb.png")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_image_rgb(folder / "nowhere.png")


def test_huge_images_are_downscaled_and_the_bomb_limit_holds(tmp_path, monkeypatch, recwarn):
    big = tmp_path / "big.jpg"
    Image.fromarray(_halves(1000, 1500)).save(big, quality=95)
    img, size = read_image_rgb(big, max_side=300)
    assert size == (1500, 1000) and img.size == (300, 200)
    assert np.abs(np.asarray(img)[20, 150].astype(int) - (200, 30, 30)).max() < 12  # top half red
    assert np.abs(np.asarray(img)[180, 150].astype(int) - (30, 30, 200)).max() < 12
    # PIL's limits made small: 1.5 M pixels lies between its warning (1 M) and error (2 M) limits
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    img, size = read_image_rgb(big, max_side=150)
    assert img.size == (150, 100)
    assert not [w for w in recwarn.list if issubclass(w.category, Image.DecompressionBombWarning)]
    Image.fromarray(_halves(1500, 1500)).save(tmp_path / "bigger.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image_rgb(tmp_path / "bigger.png", max_side=150)


def test_scan_follows_folder_links_once_and_lists_videos(tmp_path):
    d = tmp_path / "media"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "x.jpg").write_bytes(b"x")
    (d / "a" / "b" / "clip.MP4").write_bytes(b"x")
    (d / "a" / "b" / "up").symlink_to(d / "a")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "y.png").write_bytes(b"y")
    (d / "linked").symlink_to(outside)
    scan = scan_media(d)
    # the linked folder is walked; paths are real paths, sorted
    assert scan.images == sorted(str(p.resolve()) for p in (d / "a" / "b" / "x.jpg", outside / "y.png"))
    assert [Path(p).name for p in scan.videos] == ["clip.MP4"]
    assert [(Path(s["path"]).name, s["reason"].split(":")[0]) for s in scan.skipped] == [("up", "symbolic link loop")]
    assert scan_media(d / "a" / "b" / "clip.MP4").videos == [str((d / "a" / "b" / "clip.MP4").resolve())]
    with pytest.raises(NotADirectoryError, match="--images: .*nope"):
        scan_media(tmp_path / "nope", what="--images")


def test_json_dumps_round_trips_undecodable_names():
    obj = {"files": [BAD_NAME, "café"]}
    text = json_dumps(obj)
    text.encode("utf-8")  # no lone surrogate left
    assert "café" in text and "\\udcff" in text and json.loads(text) == obj


def test_a_format_1_index_still_loads_and_is_extended(tiny, tmp_path):
    cfg, weights = tiny
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(_halves(64, 32, (40 * i, 100, 200 - 40 * i))).save(photos / f"{i}.png")
    encoder = SearchEncoder(load_model(cfg), cfg, num_threads=1)
    index_folder(encoder, cfg, photos, tmp_path / "idx")
    new = json.loads((tmp_path / "idx" / "manifest.json").read_text(encoding="utf-8"))
    # the manifest as format 1 wrote it: no entries, no sources
    old = {k: v for k, v in new.items() if k not in ("entries", "sources")}
    old["format_version"] = 1
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(old), encoding="utf-8")
    gi = GalleryIndex.load(tmp_path / "idx")
    assert gi.files == new["files"] and gi.entries == [None] * 3 and gi.sources == {}
    hits = search_texts(encoder, gi, ["a person"], 3)[0].hits
    assert sorted(h.path for h in hits) == sorted(new["files"]) and all(h.source is None for h in hits)
    Image.fromarray(_halves(64, 32)).save(photos / "3.png")
    report = index_folder(encoder, cfg, photos, tmp_path / "idx")
    assert (report.encoded, report.total) == (1, 4)
    again = json.loads((tmp_path / "idx" / "manifest.json").read_text(encoding="utf-8"))
    assert again["format_version"] == 2 and again["files"][:3] == new["files"]
    old["format_version"] = 3
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(ValueError, match="format_version 3; this version of the tools reads 1, 2"):
        GalleryIndex.load(tmp_path / "idx")
