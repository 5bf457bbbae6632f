"""The part table of the scene generator: which part of which object every pixel is.

The part map is a uint8 image beside the label map (0 = no part). Vehicles (car, truck,
bus) share their part ids; the pole of a traffic sign or traffic light is labelled class
``pole`` in the label map but belongs to the sign's / light's parts here. Names are
unique, lower case, spaces included (docs/contract.md lists them).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .classes import BUS, CAR, PERSON, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, TRUCK

PART_NAMES: list[str] = [
    "none",
    "body", "window", "wheel", "light", "plate",          # car, truck, bus
    "head", "torso", "arm", "leg",                        # person
    "sign plate", "sign pole",                            # traffic sign
    "light housing", "lamp", "light pole",                # traffic light
]
NUM_PARTS = len(PART_NAMES)

(NONE, BODY, WINDOW, WHEEL, LIGHT, PLATE, HEAD, TORSO, ARM, LEG,
 SIGN_PLATE, SIGN_POLE, LIGHT_HOUSING, LAMP, LIGHT_POLE) = range(NUM_PARTS)

#: The parts an object of each class can have (trainIds -> part ids).
CLASS_PARTS: dict[int, tuple[int, ...]] = {
    CAR: (BODY, WINDOW, WHEEL, LIGHT, PLATE),
    TRUCK: (BODY, WINDOW, WHEEL, LIGHT, PLATE),
    BUS: (BODY, WINDOW, WHEEL, LIGHT, PLATE),
    PERSON: (HEAD, TORSO, ARM, LEG),
    TRAFFIC_SIGN: (SIGN_PLATE, SIGN_POLE),
    TRAFFIC_LIGHT: (LIGHT_HOUSING, LAMP, LIGHT_POLE),
}

#: _ALLOWED[part, trainId]: the label classes a part's pixels may carry (a sign's pole is class pole).
_ALLOWED = np.zeros((NUM_PARTS, 256), bool)
for _cls, _ids in CLASS_PARTS.items():
    for _k in _ids:
        _ALLOWED[_k, POLE if _k in (SIGN_POLE, LIGHT_POLE) else _cls] = True


def clean_parts(parts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Zero part pixels whose label class cannot carry that part (a detail painted over an
    outline's anti-aliased edge, an ignored hood); in place, returned."""
    idx = np.flatnonzero(parts)          # parts cover a few per cent of the pixels
    flat = parts.reshape(-1)
    bad = ~_ALLOWED[flat[idx], labels.reshape(-1)[idx]]
    flat[idx[bad]] = 0
    return parts


#: Part colours for pictures (distinct hues; index = part id).
PART_PALETTE: list[tuple[int, int, int]] = [
    (0, 0, 0),
    (31, 119, 180), (23, 190, 207), (255, 127, 14), (214, 39, 40), (148, 103, 189),
    (227, 119, 194), (44, 160, 44), (188, 189, 34), (140, 86, 75),
    (255, 187, 120), (127, 127, 127),
    (174, 199, 232), (255, 152, 150), (199, 199, 199),
]


def part_id(name: str) -> int:
    """The id of a part name (case-insensitive); ValueError for an unknown name."""
    key = name.strip().lower()
    if key not in PART_NAMES:
        raise ValueError(f"unknown part {name!r}; parts: {', '.join(PART_NAMES[1:])}")
    return PART_NAMES.index(key)


def object_part_table(instances: np.ndarray, parts: np.ndarray, ids) -> dict[int, list[dict]]:
    """Per instance id: ``[{"part_id", "name", "pixels"}]`` of its visible parts (one bincount)."""
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    n = int(max(ids)) + 1
    inst = instances.astype(np.int64)
    ok = inst < n
    counts = np.bincount(inst[ok] * NUM_PARTS + parts[ok].astype(np.int64),
                         minlength=n * NUM_PARTS).reshape(n, NUM_PARTS)
    return {i: [{"part_id": k, "name": PART_NAMES[k], "pixels": int(counts[i, k])}
                for k in range(1, NUM_PARTS) if counts[i, k] > 0] for i in ids}


def object_masks(labels: np.ndarray, instances: np.ndarray, parts: np.ndarray,
                 objects: list[dict]) -> list[tuple[int, np.ndarray]]:
    """Ground-truth objects with parts: ``(class_id, bool mask of the object's part pixels)``.

    Vehicles and people are their instances; traffic signs and traffic lights (no instance
    ids) are the 8-connected components of their classes' part pixels (plate + pole,
    housing + lamps + pole), kept when they contain pixels labelled with the class.
    """
    out = []
    for o in objects:
        cls = int(o["class_id"])
        if cls in CLASS_PARTS:
            m = (instances == o["id"]) & np.isin(parts, CLASS_PARTS[cls])
            if m.any():
                out.append((cls, m))
    eight = np.ones((3, 3), bool)
    for cls in (TRAFFIC_SIGN, TRAFFIC_LIGHT):
        comp, n = ndimage.label(np.isin(parts, CLASS_PARTS[cls]), structure=eight)
        if not n:
            continue
        has_cls = np.bincount(comp[labels == cls], minlength=n + 1) > 0
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is not None and has_cls[k]:
                m = np.zeros(parts.shape, bool)
                m[sl] = comp[sl] == k
                out.append((cls, m))
    return out
