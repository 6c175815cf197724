"""The synthetic pedestrian world behind the built-in demo: attributes, renderer, captions,
the world writer, street scenes and videos in MOT layout, the CLIP stand-in and the demo report."""
from .attributes import PersonIdentity, sample_identity
from .market1501 import write_market1501
from .renderer import render_person
from .scenes import (MotRow, SceneSet, read_mot, render_scene_images, render_scene_video, scene_identities_from_world,
                     write_mot)
from .world import generate_world

__all__ = ["MotRow", "PersonIdentity", "SceneSet", "generate_world", "read_mot", "render_person", "render_scene_images",
           "render_scene_video", "sample_identity", "scene_identities_from_world", "write_market1501", "write_mot"]
