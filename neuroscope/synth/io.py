"""Reading and writing generated scenes in the CONTRACT.md §6 file formats."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .scene import Scene


def save_scene(scene: Scene, stem_path: str | Path, image_format: str = "png") -> dict[str, Path]:
    """Write <stem>.png|.jpg, <stem>_labels.png (uint8 trainIds), <stem>_instances.png
    (uint16), <stem>_instances.json (objects with their part table) and, when the scene
    has a part map, <stem>_parts.png (uint8 part ids, `neuroscope.synth.parts`); returns
    the paths by role."""
    stem = Path(stem_path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"image_format must be png or jpg, not {image_format!r}")
    paths = {"image": stem.with_name(stem.name + (".png" if fmt == "png" else ".jpg")),
             "labels": stem.with_name(stem.name + "_labels.png"),
             "instances": stem.with_name(stem.name + "_instances.png"),
             "objects": stem.with_name(stem.name + "_instances.json")}
    img = Image.fromarray(scene.image)
    if fmt == "png":
        img.save(paths["image"], optimize=True)
    else:
        img.save(paths["image"], quality=90)
    Image.fromarray(scene.labels.astype(np.uint8), mode="L").save(paths["labels"], optimize=True)
    Image.fromarray(scene.instances.astype(np.uint16)).save(paths["instances"], optimize=True)
    paths["objects"].write_text(json.dumps(scene.objects) + "\n")
    if scene.parts is not None:
        paths["parts"] = stem.with_name(stem.name + "_parts.png")
        Image.fromarray(scene.parts.astype(np.uint8), mode="L").save(paths["parts"], optimize=True)
    return paths


def load_scene(stem_path: str | Path) -> Scene:
    """Read back what save_scene wrote (the image may be .png or .jpg)."""
    stem = Path(stem_path)
    image_path = stem.with_name(stem.name + ".png")
    if not image_path.exists():
        image_path = stem.with_name(stem.name + ".jpg")
    image = np.asarray(Image.open(image_path).convert("RGB"))
    labels = np.asarray(Image.open(stem.with_name(stem.name + "_labels.png")), np.uint8)
    instances = np.asarray(Image.open(stem.with_name(stem.name + "_instances.png"))).astype(np.uint16)
    objects = json.loads(stem.with_name(stem.name + "_instances.json").read_text())
    parts_path = stem.with_name(stem.name + "_parts.png")
    parts = np.asarray(Image.open(parts_path), np.uint8) if parts_path.exists() else None
    return Scene(image=image, labels=labels, instances=instances, objects=objects, parts=parts)
