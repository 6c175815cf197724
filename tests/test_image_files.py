"""One image lister for every tool: the same files, .tif included, for search and pseudo-texts."""
import os

import pytest

from unipt_plugin.data.image_files import list_images


def _touch(root, rel):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_lists_every_image_kind_recursively_sorted(tmp_path):
    for rel in ("b.TIF", "a.jpg", "sub/c.tiff", "sub/d.webp", "notes.txt", "sub/e.PNG", "f.jpeg.bak"):
        _touch(tmp_path, rel)
    os.makedirs(tmp_path / "dir.jpg")  # a folder named like an image is not a file
    assert list_images(tmp_path) == ["a.jpg", "b.TIF", "sub/c.tiff", "sub/d.webp", "sub/e.PNG"]
    assert list_images(tmp_path, absolute=True) == [
        str((tmp_path / r).resolve()) for r in ("a.jpg", "b.TIF", "sub/c.tiff", "sub/d.webp", "sub/e.PNG")]


def test_every_tool_uses_the_same_lister():
    from unipt_plugin.pseudo_text import image_list
    from unipt_plugin.search import pipeline

    assert image_list.list_images is list_images
    assert pipeline.list_images is list_images


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(NotADirectoryError, match="--images: .*nope is not a directory"):
        list_images(tmp_path / "nope", what="--images")
