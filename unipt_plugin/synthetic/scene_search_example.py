"""The demo report's scene search example: a trained model finds a described person in
synthetic street scenes through the normal search pipeline.

:func:`write_scene_search_example` renders a few street scenes with several people each
(``unipt_plugin.synthetic.scenes.render_scene_images``: people drawn by the world's renderer,
new identities sampled from ``seed``, one caption each written from their attributes by
``unipt_plugin.synthetic.captions.describe``, as the synthetic captions are), indexes the people
with ``unipt_plugin.search.pipeline.index_folder`` and the detector ``boxes:`` on the scenes'
true MOT boxes (so the example shows the model, not a detector's misses), queries the caption of
the person seen in the most scenes, and writes into the report folder:

* ``scene_search.png``: the top hits (``render_grid_png``), each crop beside its scene with the
  box drawn, framed green for the described person and red for someone else;
* ``scene_search.md``: a "## Scene search example" section with the query, the rank at which
  the described person's first crop came among all indexed people (from the scenes' identities,
  whatever it is), a table of the top hits and the image.

The scenes and the index live under ``<work_dir>/scene_search/`` (the index is rebuilt on every
call: it belongs to the weights given); every file is written atomically.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace

import numpy as np

from ..utils.io import atomic_write_text
from .attributes import sample_identity
from .scenes import SceneSet, render_scene_images

logger = logging.getLogger(__name__)

__all__ = ["write_scene_search_example", "NUM_PEOPLE", "NUM_SCENES", "SCENE_SIZE", "PEOPLE_PER_SCENE", "PERSON_HEIGHT",
           "TOPK"]

#: identities sampled for the scenes, the scenes rendered, their (H, W), the hits shown
NUM_PEOPLE = 8
NUM_SCENES = 4
SCENE_SIZE = (360, 640)
PEOPLE_PER_SCENE = (2, 4)
PERSON_HEIGHT = (150, 260)
TOPK = 5
#: the random stream of the identities (seeded by (seed, _PEOPLE_STREAM)); the scenes use ``seed``
_PEOPLE_STREAM = 15


def _described_person(scenes: SceneSet) -> int:
    """MOT id of the person seen in the most scenes (the lowest id among equals)."""
    seen: dict[int, set[int]] = {}
    for r in scenes.rows:
        seen.setdefault(r.id, set()).add(r.frame)
    return min(seen, key=lambda i: (-len(seen[i]), i))


def _entry_identities(scenes: SceneSet, entries: list) -> list[int]:
    """MOT id of each index entry, from its source image (frame) and box."""
    frame_of = {os.path.realpath(p): k for k, p in enumerate(scenes.files, start=1)}
    id_of = {(r.frame, (int(round(r.x)), int(round(r.y)), int(round(r.w)), int(round(r.h)))): r.id
             for r in scenes.rows}
    out = []
    for e in entries:
        key = (frame_of.get(os.path.realpath(str(e["source"]))), tuple(int(v) for v in e["box"]))
        if key not in id_of:
            raise RuntimeError(f"index entry {e} matches no true box of the scenes in {scenes.root}")
        out.append(id_of[key])
    return out


def write_scene_search_example(report_dir: str, work_dir: str, config_file: str, weights: str, seed: int = 0) -> str:
    """Render synthetic street scenes, index their people with the model of ``config_file`` and
    ``weights`` (true boxes), search one person's description and write ``scene_search.png`` and
    ``scene_search.md`` into ``report_dir`` (module docstring). Returns the Markdown's path.

    Args:
        report_dir: folder of the report (created if needed).
        work_dir: folder for the scenes and the index (``<work_dir>/scene_search/``).
        config_file: the model's config (e.g. a training run's ``config.yaml``).
        weights: its checkpoint (e.g. ``model_final.pth``).
        seed: seeds the identities, the scenes and their captions.
    Raises:
        FileNotFoundError: ``config_file`` or ``weights`` missing.
    """
    from ..engine import setup_cfg
    from ..search import GalleryIndex, SceneOptions, SearchEncoder, index_folder, load_model, render_grid_png
    from ..search import search_texts

    for what, path in (("config_file", config_file), ("weights", weights)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scene search example: {what} {path} not found")
    root = os.path.join(os.path.abspath(os.fspath(work_dir)), "scene_search")
    report_dir = os.fspath(report_dir)

    rng = np.random.default_rng([int(seed), _PEOPLE_STREAM])
    people = [sample_identity(rng) for _ in range(NUM_PEOPLE)]
    scenes = render_scene_images(os.path.join(root, "scenes"), people, num_images=NUM_SCENES, size=SCENE_SIZE,
                                 people_per_image=PEOPLE_PER_SCENE, person_height=PERSON_HEIGHT, seed=int(seed))

    cfg = setup_cfg(config_file, ["MODEL.WEIGHTS", weights])
    encoder = SearchEncoder(load_model(cfg), cfg, num_threads=1)
    index_dir = os.path.join(root, "index")
    if os.path.isdir(index_dir):  # made by an earlier call, perhaps with other weights
        shutil.rmtree(index_dir)
    gt = os.path.join(scenes.root, "gt", "gt.txt")
    index_folder(encoder, cfg, os.path.dirname(scenes.files[0]), index_dir,
                 options=SceneOptions(detector=f"boxes:{gt}"))
    gallery = GalleryIndex.load(index_dir)
    identities = _entry_identities(scenes, gallery.entries)

    target = _described_person(scenes)
    query = scenes.identities[target]
    result = search_texts(encoder, gallery, [query], len(gallery))[0]
    row_of = {p: i for i, p in enumerate(gallery.files)}
    hit_ids = [identities[row_of[h.path]] for h in result.hits]
    ranks = [h.rank for h, i in zip(result.hits, hit_ids) if i == target]
    if not ranks:
        raise RuntimeError(f"scene search example: the described person (MOT id {target}) has no entry in the "
                           f"index {index_dir}; its boxes were not indexed")
    shown = replace(result, hits=[replace(h, correct=i == target) for h, i in zip(result.hits[:TOPK], hit_ids)])
    png = os.path.join(report_dir, "scene_search.png")
    render_grid_png([shown], png)

    appears = sorted({r.frame for r in scenes.rows if r.id == target})
    rank_text = (f"The described person's first crop came at **rank {ranks[0]}** of the {len(gallery)} crops "
                 f"indexed" + (f" (their {len(ranks)} crops: ranks {', '.join(map(str, ranks))})."
                               if len(ranks) > 1 else "."))
    if result.truncated:
        rank_text += (f" The query has {result.num_tokens} tokens and was cut to the model's "
                      f"{cfg.INPUT.TEXT.MAX_LENGTH} (INPUT.TEXT.MAX_LENGTH).")
    table = ["| rank | score | scene | box [x, y, w, h] | who |", "|---|---|---|---|---|"]
    for h, i in zip(result.hits[:TOPK], hit_ids):
        table.append(f"| {h.rank} | {h.score:.4f} | {os.path.basename(str(h.source))} | {list(h.box)} | "
                     f"{'the described person' if i == target else 'someone else'} |")
    lines = [
        "## Scene search example", "",
        f"{len(scenes.files)} synthetic street scenes ({SCENE_SIZE[1]}x{SCENE_SIZE[0]}, "
        f"`unipt_plugin/synthetic/scenes.py`) show {len(scenes.identities)} people, {len(gallery)} times in all: "
        f"new people rather than the world's (sampled with seed {int(seed)}). The {len(gallery)} crops were "
        f"indexed with `tools/search.py`'s pipeline, cut at their true boxes (`--detector boxes:gt.txt`), and "
        f"searched with the description of the person who appears in the most scenes ({len(appears)} of "
        f"{len(scenes.files)}), written from their attributes as the synthetic captions are:", "",
        f"> {query}", "",
        rank_text, "",
        *table, "",
        f"Top {min(TOPK, len(result.hits))}: each crop beside its scene with the box drawn; green frame = the "
        "described person, red = someone else.", "",
        "![scene search](scene_search.png)", "",
    ]
    md = os.path.join(report_dir, "scene_search.md")
    atomic_write_text(md, "\n".join(lines))
    logger.info("scene search example: %s (the described person's first crop at rank %d of %d)", md, ranks[0],
                len(gallery))
    return md
