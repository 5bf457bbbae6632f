"""Procedural driving scenes with exact labels: training data, test images and evidence masks."""
from .classes import CLASS_NAMES, PALETTE
from .io import load_scene, save_scene
from .scene import Scene, generate_scene

__all__ = ["CLASS_NAMES", "PALETTE", "Scene", "generate_scene", "save_scene", "load_scene"]
