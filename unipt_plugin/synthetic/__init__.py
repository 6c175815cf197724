"""The synthetic pedestrian world behind the built-in demo: attributes, renderer, captions,
the world writer, the CLIP stand-in and the demo report."""
from .attributes import PersonIdentity, sample_identity
from .renderer import render_person
from .world import generate_world

__all__ = ["PersonIdentity", "generate_world", "render_person", "sample_identity"]
