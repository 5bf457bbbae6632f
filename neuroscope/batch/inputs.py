"""What `neuroscope batch` reads: the images of INPUT and the per-image targets of `--targets`.

INPUT is a folder (searched recursively; label, instance and part images named
``<stem>_labels.png`` etc. beside their images are skipped), a glob pattern, a text file of paths (one per
line, relative to the file, `#` comments), or a video file whose every K-th frame is
written once as a PNG under OUT/frames/ (PyAV decodes it). Every image becomes a record:
``{"image": id, "path": file}`` plus its target fields; the id is the path relative to
the folder (the pattern's fixed part, the list file's folder), or ``video.mp4#f000120``.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path

from ..cli_args import CliError

#: companions of an image that are not images to explain (labels, instances, parts: DATA.md)
AUX_SUFFIXES = ("_labels", "_instances", "_parts")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
LIST_EXTS = {".txt", ".lst"}
TARGET_FIELDS = ("class", "region", "contrast")
#: the most images one run takes (a bound on the work; NEUROSCOPE_MAX_BATCH_IMAGES overrides)
MAX_IMAGES = int(os.environ.get("NEUROSCOPE_MAX_BATCH_IMAGES", "1000000"))


def collect(source: str, out: str | os.PathLike, every: int = 1) -> list[dict]:
    """The records of INPUT, sorted by id (a stable order for resumes and for Ray)."""
    if every < 1:
        raise CliError(f"--every must be >= 1, got {every}")
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not _aux(p)]
        records = [{"image": p.relative_to(path).as_posix(), "path": str(p.resolve())} for p in files]
    elif path.is_file() and path.suffix.lower() in VIDEO_EXTS:
        records = video_frames(path, Path(out) / "frames", every)
    elif path.is_file() and path.suffix.lower() in LIST_EXTS:
        records = []
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line) if Path(line).is_absolute() else path.parent / line
                records.append({"image": line, "path": str(p.resolve())})
    elif path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        records = [{"image": path.name, "path": str(path.resolve())}]
    elif any(ch in source for ch in "*?["):
        root = _glob_root(source)
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file() and not _aux(Path(p))]
        records = [{"image": _rel(p, root), "path": str(p.resolve())} for p in files]
    elif not path.exists():
        raise CliError(f"INPUT not found: {source}")
    else:
        raise CliError(f"INPUT {source} is not a folder, glob, list (.txt) or video ({', '.join(sorted(VIDEO_EXTS))})")
    if every > 1 and not (path.is_file() and path.suffix.lower() in VIDEO_EXTS):
        raise CliError("--every applies to a video INPUT only")
    if not records:
        raise CliError(f"no images in {source}")
    if len(records) > MAX_IMAGES:
        raise CliError(f"{len(records)} images exceed the limit of {MAX_IMAGES} (NEUROSCOPE_MAX_BATCH_IMAGES)")
    ids = [r["image"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CliError(f"INPUT names {dup} twice")
    return sorted(records, key=lambda r: r["image"])


def _aux(p: Path) -> bool:
    return p.stem.endswith(AUX_SUFFIXES)


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = [p for p in parts[:next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))]]
    return Path(*fixed) if fixed else Path(".")


def _rel(p: Path, root: Path) -> str:
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def video_frames(video: Path, folder: Path, every: int) -> list[dict]:
    """Every `every`-th frame of `video` as a PNG in `folder` (frames already there are kept:
    a resumed run decodes but does not rewrite them)."""
    try:
        import av
    except ModuleNotFoundError:
        raise CliError("reading a video needs PyAV (pip install av)") from None
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                if index % every:
                    continue
                name = f"{video.stem}-f{index:06d}.png"
                dest = folder / name
                if not dest.exists():
                    tmp = dest.with_suffix(".tmp.png")
                    Image.fromarray(frame.to_ndarray(format="rgb24")).save(tmp)
                    os.replace(tmp, dest)
                records.append({"image": f"{video.name}#f{index:06d}", "path": str(dest.resolve()), "frame": index})
                if len(records) > MAX_IMAGES:
                    break
    except (av.error.FFmpegError, IndexError) as exc:  # no video stream, undecodable
        raise CliError(f"cannot read {video} as a video: {exc}") from None
    return records


# ------------------------------------------------------------------ targets
def read_targets(path: str) -> dict[str, dict]:
    """--targets FILE (CSV with a header, or JSONL): path -> {"class", "region", "contrast"}
    (each optional; missing = the contract's default). Region: all | predicted | X,Y |
    X0,Y0,X1,Y1 (a JSON list works too)."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--targets file not found: {path}")
    rows: list[dict] = []
    text = p.read_text(errors="replace")
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CliError(f"{p.name} line {n} is not JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise CliError(f"{p.name} line {n} is not a JSON object")
                rows.append(row)
    else:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise CliError(f"{p.name} needs a header with a 'path' column (and class, region, contrast)")
        rows = [dict(r) for r in reader]
    out = {}
    for n, row in enumerate(rows, 1):
        key = str(row.get("path") or "").strip()
        if not key:
            raise CliError(f"{p.name} row {n} has no path")
        unknown = set(row) - {"path", *TARGET_FIELDS}
        if unknown:
            raise CliError(f"{p.name} row {n}: unknown field(s) {', '.join(sorted(unknown))} "
                           f"(fields: path, {', '.join(TARGET_FIELDS)})")
        target = {}
        for f in TARGET_FIELDS:
            v = row.get(f)
            if isinstance(v, list):
                v = ",".join(str(int(x)) for x in v)
            if v is not None and str(v).strip() != "":
                target[f] = str(v).strip()
        out[key] = target
    return out


def attach_targets(records: list[dict], targets: dict[str, dict]) -> list[str]:
    """Give every record its target (matched by id, by path, or by unique file name);
    returns the targets file's paths that matched no image."""
    by_name: dict[str, list[dict]] = {}
    for r in records:
        by_name.setdefault(Path(r["path"]).name, []).append(r)
    index = {r["image"]: r for r in records} | {r["path"]: r for r in records}
    unmatched = []
    for key, target in targets.items():
        rec = index.get(key) or index.get(str(Path(key).resolve()))
        if rec is None and len(by_name.get(Path(key).name, [])) == 1:
            rec = by_name[Path(key).name][0]
        if rec is None:
            unmatched.append(key)
        else:
            rec.update(target)
    return unmatched
