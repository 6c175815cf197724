"""Synthetic street scenes and video (unipt_plugin/synthetic/scenes.py): boxes where the people
were pasted, MOT files, the video read back by OpenCV, determinism, and the world's identities."""
import json
import os

import cv2
import numpy as np
import pytest

from unipt_plugin.synthetic import (MotRow, generate_world, read_mot, render_person, render_scene_images,
                                    render_scene_video, sample_identity, scene_identities_from_world, write_mot)
from unipt_plugin.synthetic.captions import describe
from unipt_plugin.synthetic.mot import read_seqinfo
from unipt_plugin.synthetic.scenes import _Sprite, _visibility

SMALL = dict(size=(240, 320), person_height=(60, 120))


def _people(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_identity(rng) for _ in range(n)]


def _rgb(path):
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _changed(scene_dir, empty_dir, k):
    """Pixels of image k that differ from the same seed's empty street (lossless, no noise)."""
    a, b = (_rgb(os.path.join(d, "img1", f"{k:06d}.png")) for d in (scene_dir, empty_dir))
    return np.any(a != b, axis=2)


def test_render_person_mask_is_backwards_compatible():
    p = _people(1, seed=2)[0]
    img = render_person(p, 11, (96, 96))
    img2, mask = render_person(p, 11, (96, 96), return_mask=True)
    img3, layout, mask3 = render_person(p, 11, (96, 96), return_layout=True, return_mask=True)
    assert np.array_equal(img, img2) and np.array_equal(img, img3) and np.array_equal(mask, mask3)
    assert mask.dtype == bool and 0.05 < mask.mean() < 0.7
    assert np.all(mask[layout["torso"]]) and np.all(mask[layout["lower"]])  # garments are part of the person


def test_single_person_box_is_the_pasted_extent(tmp_path):
    ids = _people(5)
    kw = dict(num_images=4, noise_std=0.0, image_ext=".png", seed=3, **SMALL)
    scenes = render_scene_images(tmp_path / "s", ids, people_per_image=(1, 1), **kw)
    render_scene_images(tmp_path / "e", ids, people_per_image=(0, 0), **kw)
    assert [os.path.basename(f) for f in scenes.files] == [f"{k:06d}.png" for k in range(1, 5)]
    assert len(scenes.rows) == 4
    for row in scenes.rows:
        ys, xs = np.nonzero(_changed(tmp_path / "s", tmp_path / "e", row.frame))
        # the bounding box of the changed pixels, recomputed from the written images
        assert (row.x, row.y, row.w, row.h) == (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
        assert row.h >= 0.5 * 60 and row.y + row.h <= 240 and row.x + row.w <= 320


def test_several_people_boxes_are_tight_and_cover_every_pasted_pixel(tmp_path):
    ids = _people(8, seed=1)
    kw = dict(num_images=6, noise_std=0.0, image_ext=".png", seed=5, **SMALL)
    scenes = render_scene_images(tmp_path / "s", ids, people_per_image=(3, 4), **kw)
    render_scene_images(tmp_path / "e", ids, people_per_image=(0, 0), **kw)
    assert len(scenes.rows) >= 6 * 3 - 2  # people are dropped only when they cannot be 60% visible
    for k in range(1, 7):
        changed = _changed(tmp_path / "s", tmp_path / "e", k)
        covered = np.zeros_like(changed)
        rows = scenes.rows_of(k)
        assert len({r.id for r in rows}) == len(rows)  # distinct people within an image
        for r in rows:
            x0, y0, x1, y1 = (int(v) for v in r.xyxy)
            covered[y0:y1, x0:x1] = True
            box = changed[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # tight on all 4 sides
        assert not np.any(changed & ~covered)  # nothing pasted outside the boxes
    assert min(scenes.visibility) >= 0.6 and len(scenes.visibility) == len(scenes.rows)


def test_visibility_of_overlapping_sprites_by_hand():
    def square(n):
        return _Sprite(np.zeros((n, n, 3), np.uint8), np.ones((n, n), bool), 0, 0)

    far, near = square(10), square(10)
    # far's feet at row 10, near's at row 14: near is drawn last; they overlap on 6 x 6 pixels
    vis = _visibility((40, 40), [(far, 0, 0), (near, 4, 4), (square(4), 38, 0)])
    assert vis == pytest.approx([1 - 36 / 100, 1.0, 8 / 16])  # the third is half outside the frame


def test_mot_files_layout_and_round_trip(tmp_path):
    ids = _people(4)
    scenes = render_scene_images(tmp_path, ids, num_images=2, people_per_image=(2, 3), **SMALL)
    gt = (tmp_path / "gt" / "gt.txt").read_text().splitlines()
    det = (tmp_path / "det" / "det.txt").read_text().splitlines()
    r = scenes.rows[0]
    assert gt[0] == f"{r.frame},{r.id},{int(r.x)},{int(r.y)},{int(r.w)},{int(r.h)},1,-1,-1,-1"
    assert det[0] == f"{r.frame},-1,{int(r.x)},{int(r.y)},{int(r.w)},{int(r.h)},1,-1,-1,-1"
    assert read_mot(tmp_path / "gt" / "gt.txt") == scenes.rows
    assert [(d.x, d.y, d.w, d.h, d.score) for d in read_mot(tmp_path / "det" / "det.txt")] == \
        [(g.x, g.y, g.w, g.h, 1.0) for g in scenes.rows]
    identities = json.loads((tmp_path / "identities.json").read_text())
    assert set(identities) == {str(r.id) for r in scenes.rows}
    for k, v in identities.items():
        assert v == {"caption": scenes.identities[int(k)], "world_pid": None}
    info = read_seqinfo(tmp_path / "seqinfo.ini")
    assert (info["seqLength"], info["imWidth"], info["imHeight"], info["imDir"]) == (2, 320, 240, "img1")

    rows = [MotRow(3, 7, 10.5, 20.25, 30.125, 40.0, 0.875, (-1.0, -1.0, -1.0)),
            MotRow(1, -1, 0.0, 1.0, 2.0, 3.0, 0.5, ()), MotRow(12, 2, 1e-3, 1234.5678, 5.0, 6.0, 1.0, (1.0, 0.25))]
    write_mot(tmp_path / "x.txt", rows)
    assert (tmp_path / "x.txt").read_text().splitlines() == [
        "3,7,10.5,20.25,30.125,40,0.875,-1,-1,-1", "1,-1,0,1,2,3,0.5", "12,2,0.001,1234.5678,5,6,1,1,0.25"]
    assert read_mot(tmp_path / "x.txt") == rows
    (tmp_path / "six.txt").write_text("\n2, 5, 1, 2, 3, 4\n\n")  # blank lines, spaces, no score
    assert read_mot(tmp_path / "six.txt") == [MotRow(2, 5, 1.0, 2.0, 3.0, 4.0, 1.0, ())]


@pytest.mark.parametrize("bad, expected", [
    ("1,2,3,4", "at least 6"), ("1,x,3,4,5,6,1", "must be a number"), ("0,1,3,4,5,6,1", "frame must be an integer >= 1"),
    ("1.5,1,3,4,5,6,1", "frame must be an integer"), ("1,2.5,3,4,5,6,1", "id must be an integer"),
    ("1,1,3,4,-5,6,1", "width and height must be > 0"), ("1,1,3,nan,5,6,1", "non-finite")])
def test_bad_mot_line_is_refused_naming_file_and_line(tmp_path, bad, expected):
    path = tmp_path / "det.txt"
    path.write_text("1,-1,1,2,3,4,0.9\n2,-1,1,2,3,4,0.8\n" + bad + "\n")
    with pytest.raises(ValueError, match=expected) as e:
        read_mot(path)
    assert f"{path}:3:" in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_mot(tmp_path / "missing.txt")


def test_video_frames_fps_and_walks(tmp_path):
    ids = _people(5, seed=4)
    v = render_scene_video(tmp_path, ids, num_frames=20, fps=5.0, num_people=2, seed=1, **SMALL)
    assert v.files == [str(tmp_path / "video.avi")] and v.fps == 5.0 and v.num_frames == 20
    cap = cv2.VideoCapture(v.files[0])
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 20 and frames[0].shape == (240, 320, 3)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    cap.release()
    info = read_seqinfo(tmp_path / "seqinfo.ini")
    assert (info["frameRate"], info["seqLength"], info["imWidth"], info["imHeight"], info["video"]) == \
        (5.0, 20, 320, 240, "video.avi")
    assert read_mot(tmp_path / "gt" / "gt.txt") == v.rows
    assert len(v.rows) == 2 * 20 and min(v.visibility) >= 0.6
    assert set(json.loads((tmp_path / "identities.json").read_text())) == {str(i) for i in v.identities}
    for pid in v.identities:
        track = [r for r in v.rows if r.id == pid]
        assert [r.frame for r in track] == list(range(1, 21))
        for r in track:  # clipped to the image
            assert r.x >= 0 and r.y >= 0 and r.x + r.w <= 320 and r.y + r.h <= 240
        still = sum(1 for a, b in zip(track, track[1:]) if (a.x, a.y, a.w, a.h) == (b.x, b.y, b.w, b.h))
        assert still >= 2  # stands still for a while: identical boxes in consecutive frames
        # constant speed: between frames drawn with the same pose (same box size, not cut by the
        # frame edge) the box moves by one step, up to rounding; standing frames move 0
        steps = {b.x - a.x for a, b in zip(track, track[1:]) if (a.w, a.h) == (b.w, b.h) and 0 < a.x and b.x + b.w < 320}
        moving = sorted(s for s in steps if s != 0)
        assert moving and moving[-1] - moving[0] <= 1 and abs(moving[0]) >= 3
        # the box shows the person: its pixels differ from the same place in a frame without them
        r_moved = next(r for r in track if abs(r.x - track[0].x) > track[0].w)
        x0, y0, x1, y1 = (int(t) for t in track[0].xyxy)
        here, gone = frames[0][y0:y1, x0:x1].astype(int), frames[r_moved.frame - 1][y0:y1, x0:x1].astype(int)
        others = [r for r in v.rows if r.frame == r_moved.frame and r.id != pid]
        if not any(o.x < x1 and x0 < o.x + o.w and o.y < y1 and y0 < o.y + o.h for o in others):
            assert np.abs(here - gone).max(axis=2).mean() > 20


def test_scenes_are_deterministic(tmp_path):
    ids = _people(6, seed=7)
    kw = dict(num_images=2, people_per_image=(2, 3), **SMALL)
    a = render_scene_images(tmp_path / "a", ids, seed=4, **kw)
    b = render_scene_images(tmp_path / "b", ids, seed=4, **kw)
    c = render_scene_images(tmp_path / "c", ids, seed=5, **kw)
    files = ["img1/000001.jpg", "img1/000002.jpg", "gt/gt.txt", "identities.json"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()
    assert a.rows == b.rows and a.rows != c.rows
    vk = dict(num_frames=6, fps=4.0, num_people=2, **SMALL)
    va, vb = render_scene_video(tmp_path / "va", ids, seed=2, **vk), render_scene_video(tmp_path / "vb", ids, seed=2, **vk)
    vc = render_scene_video(tmp_path / "vc", ids, seed=3, **vk)
    assert (tmp_path / "va/video.avi").read_bytes() == (tmp_path / "vb/video.avi").read_bytes()
    assert (tmp_path / "va/video.avi").read_bytes() != (tmp_path / "vc/video.avi").read_bytes()
    assert va.rows == vb.rows and va.rows != vc.rows


def test_bad_arguments_are_refused(tmp_path):
    ids = _people(3)
    with pytest.raises(ValueError, match="only 3 identities"):
        render_scene_images(tmp_path, ids, people_per_image=(2, 4), **SMALL)
    with pytest.raises(ValueError, match="person_height"):
        render_scene_images(tmp_path, ids, size=(240, 320), people_per_image=(1, 2), person_height=(60, 300))
    with pytest.raises(ValueError, match="2 entries but identities has 3"):
        render_scene_images(tmp_path, ids, captions=["a", "b"], people_per_image=(1, 2), **SMALL)
    with pytest.raises(ValueError, match="num_people"):
        render_scene_video(tmp_path, ids, num_people=4, **SMALL)
    with pytest.raises(ValueError, match="fps"):
        render_scene_video(tmp_path, ids, fps=0.0, **SMALL)
    assert not (tmp_path / "gt").exists()


def test_identities_from_the_world_render_its_images(tmp_path):
    generate_world(str(tmp_path), num_labeled_ids=10, images_per_id=2, num_pool_images=0, size=(64, 32), seed=3,
                   show_progress=False)
    raw = json.loads((tmp_path / "CUHK-PEDES" / "reid_raw.json").read_text())
    test_ids = sorted({r["id"] for r in raw if r["split"] == "test"})
    identities, captions = scene_identities_from_world(tmp_path, "test", seed=3)
    assert [p.extra["world_pid"] for p in identities] == test_ids
    first = {r["id"]: r for r in sorted(raw, key=lambda r: r["file_path"], reverse=True)}  # the first image of each
    assert captions == [first[pid]["captions"][0] for pid in test_ids]
    # the re-sampled people draw the world's own pixels: replay generate_world's draws for the view seeds
    rng, seeds = np.random.default_rng(3), {}
    for pid in range(1, 11):
        ident = sample_identity(rng)
        for v in range(2):
            seeds[(pid, v)] = int(rng.integers(2 ** 31))
            [describe(ident, rng) for _ in range(2)]
    for p in identities:
        pid = p.extra["world_pid"]
        disk = (tmp_path / "CUHK-PEDES" / "imgs" / "synthetic" / f"{pid:05d}_01.jpg").read_bytes()
        img = cv2.cvtColor(render_person(p, seeds[(pid, 1)], (64, 32)), cv2.COLOR_RGB2BGR)
        assert cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes() == disk  # the same file
    two, _ = scene_identities_from_world(tmp_path, "train", n=2, seed=3)
    assert [p.extra["world_pid"] for p in two] == [1, 2]
    with pytest.raises(ValueError, match="seed 4 does not reproduce"):
        scene_identities_from_world(tmp_path, "test", seed=4)
    with pytest.raises(ValueError, match="split"):
        scene_identities_from_world(tmp_path, "gallery")
    scenes = render_scene_images(tmp_path / "scenes", identities, captions, num_images=1, people_per_image=(2, 2), **SMALL)
    on_disk = json.loads((tmp_path / "scenes" / "identities.json").read_text())
    assert {k: v["world_pid"] for k, v in on_disk.items()} == {str(r.id): identities[r.id - 1].extra["world_pid"]
                                                               for r in scenes.rows}
