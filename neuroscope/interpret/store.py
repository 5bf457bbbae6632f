"""The interpretation of a model, on disk: ``interpretation.json`` + ``interpretation.npz``.

JSON (versioned, human-readable): the model, the layers with their channel counts, per
class the relevant filters with their weights, mu, the image set (so atlas crops can be
regenerated), counts and timing. NPZ: the feature matrix X [samples, filters], the
sample labels and image indices, the weight matrix W [classes, filters] and the atlas
(per filter the top-k activations: value, image index, row, column at layer resolution).
Version 2 adds the per-class half of the atlas from LRP (``interpret.relevance``): per
class and filter the top positions where the filter is most relevant for the class
(``rel_*``), its mean relevance share ``R`` [classes, filters] and the class average of
each relevant filter (``avg_*``); JSON ``extra.relevance`` says how it was computed.
Version 1 files (no relevance) are still read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadParameter

VERSION = 2
READS = (1, 2)
JSON_NAME = "interpretation.json"
NPZ_NAME = "interpretation.npz"
BUNDLED = Path(__file__).resolve().parent.parent.parent / "assets" / "interpretations"


@dataclass
class Interpretation:
    model: str
    task: str
    layers: list[dict]                     # [{"name", "channels", "stride"}]
    classes: dict[str, dict]               # name -> {"class_id", "samples", "filters": [{"layer","channel","weight"}]}
    mu: float
    source: dict                           # {"set": NAME, "count": n} or {"images": [paths]}
    images: int
    time_s: float
    X: np.ndarray | None = None            # float32 [samples, F]
    labels: np.ndarray | None = None       # int32 [samples] class ids
    sample_image: np.ndarray | None = None  # int32 [samples] image index
    W: np.ndarray | None = None            # float32 [len(classes), F] in the order of `classes`
    atlas: dict[str, np.ndarray] = field(default_factory=dict)   # value/image/row/col [F, k]
    extra: dict = field(default_factory=dict)
    relevance_atlas: dict[str, np.ndarray] = field(default_factory=dict)   # value/image/row/col [C, F, k]
    R: np.ndarray | None = None            # float32 [len(classes), F] mean LRP relevance share
    average: dict[str, np.ndarray] = field(default_factory=dict)   # pairs [P, 2], count, rgb, map

    # ---------------------------------------------------------- indexing
    @property
    def offsets(self) -> dict[str, int]:
        out, o = {}, 0
        for l in self.layers:
            out[l["name"]] = o
            o += int(l["channels"])
        return out

    @property
    def num_filters(self) -> int:
        return sum(int(l["channels"]) for l in self.layers)

    def filter_index(self, layer: str, channel: int) -> int:
        return self.offsets[layer] + int(channel)

    def filter_of(self, index: int) -> tuple[str, int]:
        for l in self.layers:
            if index < l["channels"]:
                return l["name"], int(index)
            index -= int(l["channels"])
        raise IndexError(index)

    def class_entry(self, class_name: str) -> dict:
        if class_name not in self.classes:
            known = ", ".join(sorted(self.classes)[:12])
            raise BadParameter(f"the interpretation of {self.model} has no class {class_name!r} "
                               f"(it saw no sample of it; classes: {known}{'...' if len(self.classes) > 12 else ''})")
        return self.classes[class_name]

    def misfit_layer(self, model_layers) -> dict | None:
        """The first interpreted layer that the model (its `LayerInfo`s) lacks or has with
        another channel count, or None when the interpretation fits."""
        shapes = {l.name: l.shape for l in model_layers}
        return next((l for l in self.layers if shapes.get(l["name"]) is None
                     or shapes[l["name"]][0] != l["channels"]), None)

    def weights(self, class_name: str) -> np.ndarray:
        """w_c [F] (dense) of a class."""
        w = np.zeros(self.num_filters, np.float32)
        for f in self.class_entry(class_name)["filters"]:
            w[self.filter_index(f["layer"], f["channel"])] = f["weight"]
        return w

    def class_row(self, class_name: str) -> int:
        self.class_entry(class_name)
        return list(self.classes).index(class_name)

    @property
    def relevance_source(self) -> str | None:
        """How the per-class relevance was computed ("LRP (epsilon-plus-flat), 100 images"), or None."""
        r = self.extra.get("relevance")
        if not r or self.R is None:
            return None
        return f"{r['method'].upper()} ({r['composite']}), {r['samples']} samples of {r['images']} images"

    def relevance_of(self, class_name: str) -> np.ndarray | None:
        """Mean LRP relevance share of every filter for the class [F], or None."""
        return None if self.R is None else self.R[self.class_row(class_name)]

    def class_average(self, class_name: str, layer: str, channel: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(mean crop uint8 [S, S, 3], mean relevance uint8 [S, S], windows) of a filter for
        the class, or None when not stored."""
        if not self.average or not len(self.average.get("pairs", ())):
            return None
        key = (self.class_row(class_name), self.filter_index(layer, channel))
        hit = np.flatnonzero((self.average["pairs"][:, 0] == key[0]) & (self.average["pairs"][:, 1] == key[1]))
        if not len(hit):
            return None
        p = int(hit[0])
        return self.average["rgb"][p], self.average["map"][p], int(self.average["count"][p])

    def summary(self) -> dict:
        """The `interpret --json` document (CONTRACT.md §8)."""
        return {"layers": [l["name"] for l in self.layers],
                "classes": {n: {"filters": [{"layer": f["layer"], "channel": f["channel"], "weight": f["weight"]}
                                            for f in c["filters"]]} for n, c in self.classes.items()},
                "images": self.images, "time_s": round(self.time_s, 2)}

    # ---------------------------------------------------------- files
    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        # X is kept for inspection (the page's class averages); float16 halves the file
        arrays = {k: v for k, v in (("X", None if self.X is None else self.X.astype(np.float16)), ("labels", self.labels), ("sample_image", self.sample_image),
                                    ("W", self.W)) if v is not None}
        arrays.update({f"atlas_{k}": v for k, v in self.atlas.items()})
        arrays.update({f"rel_{k}": v.astype(np.float16 if k == "value" else np.int16 if k in ("row", "col") else np.int32)
                       for k, v in self.relevance_atlas.items()})
        if self.R is not None:
            arrays["R"] = self.R.astype(np.float32)
        arrays.update({f"avg_{k}": v for k, v in self.average.items()})
        tmp = out / (NPZ_NAME + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out / NPZ_NAME)
        doc = {"version": VERSION, "model": self.model, "task": self.task, "layers": self.layers,
               "mu": self.mu, "source": self.source, "images": self.images, "time_s": round(self.time_s, 2),
               "classes": self.classes, "extra": self.extra}
        (out / JSON_NAME).write_text(json.dumps(doc, indent=1) + "\n")
        return out


def load_interpretation(path: str | Path, arrays: bool = True) -> Interpretation:
    """Read an interpretation directory (or its JSON file)."""
    p = Path(path)
    if p.is_dir():
        p = p / JSON_NAME
    if not p.is_file():
        raise BadParameter(f"no interpretation at {path} (expected {JSON_NAME}; run `neuroscope interpret`)")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadParameter(f"cannot read interpretation {p}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") not in READS:
        raise BadParameter(f"interpretation {p} has version {doc.get('version') if isinstance(doc, dict) else '?'}; "
                           f"this build reads versions {', '.join(map(str, READS))} (rerun `neuroscope interpret`)")
    it = Interpretation(doc["model"], doc["task"], doc["layers"], doc["classes"], float(doc["mu"]),
                        doc.get("source", {}), int(doc["images"]), float(doc["time_s"]), extra=doc.get("extra", {}))
    npz = p.with_name(NPZ_NAME)
    if arrays and npz.is_file():
        with np.load(npz, allow_pickle=False) as z:
            for k in ("X", "labels", "sample_image", "W"):
                if k in z:
                    setattr(it, k, z[k].astype(np.float32) if k == "X" else z[k])
            it.atlas = {k[6:]: z[k] for k in z.files if k.startswith("atlas_")}
            it.relevance_atlas = {k[4:]: z[k].astype(np.float32 if k == "rel_value" else np.int32)
                                  for k in z.files if k.startswith("rel_")}
            it.R = z["R"] if "R" in z else None
            it.average = {k[4:]: z[k] for k in z.files if k.startswith("avg_")}
    return it


def bundled_interpretation(model_name: str) -> Path | None:
    """assets/interpretations/<model>/ when it exists (the Keras twin of a bundled torch
    model has its own copy: same weights, its own layer names checked at use)."""
    p = BUNDLED / model_name
    return p if (p / JSON_NAME).is_file() else None
