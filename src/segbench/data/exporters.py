"""Write a segbench COCO dataset in another tool's format (``segbench data export``).

``yolo``: the Ultralytics YOLO-seg layout: ``images/<split>/<file_name>``, ``labels/<split>/<stem>.txt``
with one object per line, ``class x1 y1 x2 y2 ...`` normalised to 0..1 (class = the category's position
in id order), and ``data.yaml`` (``path``, ``train``, ``val``, ``names``). A polygon annotation is written
with its own vertices when they lie inside the image and its parts do not overlap; any other object (RLE,
overlapping parts, vertices outside the image) is traced from its mask with
``skimage.measure.find_contours`` at the pixel borders, which draws back to exactly the same pixels.
Limits of the format, each logged in ``export_log.txt``: a polygon has no holes (``hole_lost``: the hole
is filled, the pixels counted); an object of several parts is one line whose parts are linked by
zero-width bridges walked there and back (``parts_joined``; Ultralytics' own ``merge_multi_segment``
convention, taken apart again by ``segbench data import format=yolo``); crowd regions are left out.

``masks``: ``<split>/images/<file_name>``, ``<split>/masks/<stem>.png`` (instance ids 1..N as pixel
values, 8-bit, or 16-bit past 255 objects) and ``<split>/classes.json`` (``{stem: {id: class}}``): what
``segbench data import format=masks`` reads. Holes and parts survive; where objects overlap the later one
keeps the pixels (``overlap``, logged).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segbench.data.annotations import decode_annotation, polygon_parts
from segbench.data.coco import CocoDataset, read_coco_json
from segbench.data.importers._common import (
    ConversionLog,
    count_text,
    join_loops,
    place_file,
    polygon_rle,
    prepare_out,
    safe_name,
    split_loops,
)
from segbench.io import atomic_path, atomic_write_text, write_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)


@dataclass
class ExportSummary:
    """What :func:`export_dataset` wrote."""

    format: str
    out: Path
    splits: dict[str, dict[str, int]]  # split -> {"images": n, "objects": n}
    categories: list[str]
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    log_file: Path | None = None
    index_file: Path | None = None  # data.yaml for YOLO

    @property
    def objects(self) -> int:
        return sum(s["objects"] for s in self.splits.values())

    def format_text(self) -> str:
        lines = [f"{split}: {s['images']} images, {s['objects']} objects" for split, s in self.splits.items()]
        lines.append("classes: " + ", ".join(f"{k} {n}" for k, n in enumerate(self.categories)))
        lines.append(f"skipped: {count_text(self.skipped)}; notes: {count_text(self.notes)}")
        if self.index_file:
            lines.append(f"wrote {self.index_file}")
        lines.append(f"log: {self.log_file}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Masks -> polygons
# --------------------------------------------------------------------------------------------------
def mask_outlines(mask: np.ndarray) -> tuple[list[list[float]], int]:
    """The outer boundaries of a ``(H, W)`` bool mask as polygons, and the pixel count of its holes.

    The boundaries run through the midpoints of the pixel edges between object and background
    (``skimage.measure.find_contours`` at level 0.5, collinear points removed): every pixel centre lies
    0.35 px or more from them, so drawing the polygons (pycocotools, COCO's convention) gives back exactly
    the mask with its holes filled. Background pixels touching only diagonally belong to the outside.

    Examples
    --------
    >>> ring = np.zeros((7, 7), bool); ring[1:6, 1:6] = True; ring[3, 3] = False
    >>> loops, hole = mask_outlines(ring)
    >>> len(loops), hole
    (1, 1)
    >>> int(mask_utils.area(polygon_rle(loops, 7, 7)))  # 25 pixels: the hole is filled
    25
    """
    from skimage import measure

    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1).astype(np.uint8)
    loops = []
    for c in measure.find_contours(padded, 0.5):
        c = measure.approximate_polygon(c, tolerance=0)
        if len(c) > 1 and (c[0] == c[-1]).all():
            c = c[:-1]
        if len(c) < 3:
            continue
        x, y = c[:, 1] - 0.5, c[:, 0] - 0.5  # padded (row, col) -> COCO (x, y) at pixel corners
        signed = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        if signed > 0:  # outer boundaries run one way, holes the other
            loops.append(np.stack([x, y], 1).ravel().tolist())
    if not loops:
        return [], 0
    filled = int(mask_utils.area(polygon_rle(loops, *mask.shape)))
    return loops, filled - int(mask.sum())


def yolo_loops(ann: dict, h: int, w: int) -> tuple[list[list[float]], int, bool]:
    """``(loops, hole pixels lost, traced from the mask)`` of one annotation for a YOLO line."""
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        parts = polygon_parts(seg).parts
        inside = all(0 <= v <= (w if k % 2 == 0 else h) for p in parts for k, v in enumerate(p))
        simple = all(len(split_loops(p)) == 1 for p in parts)
        if parts and inside and simple:
            if len(parts) == 1:
                return parts, 0, False
            rles = [polygon_rle([p], h, w) for p in parts]
            if int(mask_utils.area(mask_utils.merge(rles))) == sum(int(mask_utils.area(r)) for r in rles):
                return parts, 0, False
    m = mask_utils.decode(decode_annotation(ann, h, w)).astype(bool)
    loops, holes = mask_outlines(m)
    return loops, holes, True


def _num(v: float) -> str:
    """A normalised coordinate, written with every digit (the shortest text that reads back the same).

    >>> _num(0.25), _num(1 / 3), _num(-0.0)
    ('0.25', '0.3333333333333333', '0')
    """
    v = float(v) + 0.0
    return "0" if v == 0 else repr(v)


# --------------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------------
def _categories(splits: dict[str, tuple[Path, Path]]) -> tuple[dict[str, CocoDataset], list[dict]]:
    datasets = {s: CocoDataset(ann, images) for s, (ann, images) in splits.items()}
    by_id: dict[int, str] = {}
    for s, ds in datasets.items():  # every category of the JSONs, used or not: the ids stay stable
        for c in read_coco_json(ds.ann_file)["categories"]:
            c = {"id": int(c["id"]), "name": str(c.get("name", c["id"]))}
            if by_id.setdefault(c["id"], c["name"]) != c["name"]:
                raise SegbenchError(
                    f"category id {c['id']} is {by_id[c['id']]!r} in one split but {c['name']!r} in {s} "
                    f"({ds.ann_file}); give the splits the same categories"
                )
    return datasets, [{"id": k, "name": by_id[k]} for k in sorted(by_id)]


def _log_dropped(ds: CocoDataset, lg: ConversionLog) -> None:
    for kind, ids in ds.dropped.by_reason.items():
        for aid in ids:
            lg.skip(
                ds.ann_file.name, f"annotation {aid}", "malformed", f"{kind} (`segbench data check` says why)"
            )


def export_yolo(
    datasets: dict[str, CocoDataset], cats: list[dict], out: Path, lg: ConversionLog, link: str
) -> tuple[dict, Path]:
    """Write the Ultralytics YOLO-seg layout (see the module docstring); returns (per-split counts, data.yaml)."""
    import yaml

    index = {c["id"]: k for k, c in enumerate(cats)}
    counts: dict[str, dict[str, int]] = {}
    for split, ds in datasets.items():
        _log_dropped(ds, lg)
        c = counts.setdefault(split, {"images": 0, "objects": 0})
        used: dict[str, str] = {}
        for i, im in enumerate(ds.images):
            src = ds.image_path(i)
            file = f"{ds.ann_file.name} image {im['id']}"
            if not src.is_file():
                lg.skip(file, None, "missing_image", f"{src} not found")
                continue
            rel = safe_name(str(im["file_name"]))
            label_rel = str(Path(rel).with_suffix(".txt"))
            if label_rel in used:
                lg.skip(
                    file,
                    None,
                    "duplicate_image",
                    f"{rel!r} and {used[label_rel]!r} would share labels/{split}/{label_rel}",
                )
                continue
            used[label_rel] = rel
            h, w = ds.image_size(i)
            lines = []
            for ann in ds.annotations(i):
                obj = f"annotation {ann.get('id')}"
                if ann.get("iscrowd"):
                    lg.skip(file, obj, "crowd", "iscrowd=1: YOLO has no crowd (ignore) regions")
                    continue
                loops, holes, traced = yolo_loops(ann, h, w)
                if not loops:
                    lg.skip(file, obj, "empty_object", "the mask is empty")
                    continue
                if holes:
                    lg.note(
                        file, obj, "hole_lost", f"{holes} px of holes filled: YOLO polygons have no holes"
                    )
                if len(loops) > 1:
                    lg.note(
                        file,
                        obj,
                        "parts_joined",
                        f"{len(loops)} parts written as one line joined by zero-width bridges",
                    )
                xy = join_loops(loops)
                norm = [v / (w if k % 2 == 0 else h) for k, v in enumerate(xy)]
                lines.append(" ".join([str(index[ann["category_id"]]), *map(_num, norm)]))
            atomic_write_text(out / "labels" / split / label_rel, "".join(f"{ln}\n" for ln in lines))
            note = place_file(src, out / "images" / split / rel, link)
            if note:
                lg.note(file, None, "ignored", note)
            lg.converted.append(
                {
                    "split": split,
                    "source": str(src),
                    "file_name": f"images/{split}/{rel}",
                    "objects": len(lines),
                }
            )
            c["images"] += 1
            c["objects"] += len(lines)
    doc = {"path": str(out.resolve())}
    for split in ("train", "val", "test", *[s for s in datasets if s not in ("train", "val", "test")]):
        if split in datasets:
            doc[split] = f"images/{split}"
    if "val" not in doc and "train" in doc:
        doc["val"] = "images/train"
        lg.note(
            "data.yaml", None, "split", "no val split: val points at images/train (Ultralytics needs one)"
        )
    doc["nc"] = len(cats)
    doc["names"] = {k: c["name"] for k, c in enumerate(cats)}
    text = f"# written by segbench data export on {datetime.now().isoformat(timespec='seconds')}\n"
    text += yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return counts, atomic_write_text(out / "data.yaml", text)


def export_masks(
    datasets: dict[str, CocoDataset], cats: list[dict], out: Path, lg: ConversionLog, link: str
) -> tuple[dict, Path | None]:
    """Write instance-id PNGs + classes.json per split (see the module docstring)."""
    names = {c["id"]: c["name"] for c in cats}
    counts: dict[str, dict[str, int]] = {}
    for split, ds in datasets.items():
        _log_dropped(ds, lg)
        c = counts.setdefault(split, {"images": 0, "objects": 0})
        classes: dict[str, dict[str, str]] = {}
        used: dict[str, str] = {}
        for i, im in enumerate(ds.images):
            src = ds.image_path(i)
            file = f"{ds.ann_file.name} image {im['id']}"
            if not src.is_file():
                lg.skip(file, None, "missing_image", f"{src} not found")
                continue
            rel = safe_name(str(im["file_name"]))
            stem = Path(rel).with_suffix("").as_posix()
            if stem in used:
                lg.skip(
                    file, None, "duplicate_image", f"{rel!r} and {used[stem]!r} would share masks/{stem}.png"
                )
                continue
            used[stem] = rel
            h, w = ds.image_size(i)
            canvas = np.zeros((h, w), dtype=np.int32)
            owners: dict[int, tuple[str, str]] = {}  # value -> (annotation, class)
            for ann in ds.annotations(i):
                obj = f"annotation {ann.get('id')}"
                if ann.get("iscrowd"):
                    lg.skip(file, obj, "crowd", "iscrowd=1: a crowd region is not an instance")
                    continue
                m = mask_utils.decode(decode_annotation(ann, h, w)).astype(bool)
                value = len(owners) + 1
                covered = m & (canvas > 0)
                if covered.any():
                    others = sorted({owners[int(v)][0] for v in np.unique(canvas[covered])})
                    lg.note(
                        file,
                        obj,
                        "overlap",
                        f"{int(covered.sum())} px also in {', '.join(others)}: given to {obj}",
                    )
                canvas[m] = value
                owners[value] = (obj, names[ann["category_id"]])
            kept: dict[str, str] = {}
            present = set(np.unique(canvas).tolist())
            for value, (obj, name) in owners.items():
                if value in present:
                    kept[str(value)] = name
                else:
                    lg.skip(file, obj, "empty_object", "every pixel is covered by later objects")
            dtype = np.uint8 if len(owners) <= 255 else np.uint16
            mask_path = out / split / "masks" / f"{stem}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(mask_path) as tmp:
                Image.fromarray(canvas.astype(dtype)).save(tmp, format="PNG")
            note = place_file(src, out / split / "images" / rel, link)
            if note:
                lg.note(file, None, "ignored", note)
            classes[stem] = kept
            lg.converted.append(
                {
                    "split": split,
                    "source": str(src),
                    "file_name": f"{split}/images/{rel}",
                    "objects": len(kept),
                }
            )
            c["images"] += 1
            c["objects"] += len(kept)
        write_json(out / split / "classes.json", classes)
    return counts, None


#: format name -> exporter ``(datasets by split, categories, out, log, link) -> (counts, index file)``
EXPORTERS: dict[str, Callable] = {"yolo": export_yolo, "masks": export_masks}


def export_dataset(
    format: str,
    splits: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
    out: str | os.PathLike,
    *,
    link: str = "copy",
    overwrite: bool = False,
) -> ExportSummary:
    """Export the splits of a segbench COCO dataset to ``out`` in another format.

    Parameters
    ----------
    format : str
        A key of :data:`EXPORTERS`: ``yolo`` or ``masks``.
    splits : dict
        ``{split: (annotation JSON, image folder)}`` (:func:`segbench.data.coco.resolve_splits`).
    out : path
        A new (or empty) folder; ``overwrite=True`` replaces an earlier export's images/, labels/, masks/.
    link : str
        ``copy``, ``hardlink`` or ``symlink`` the images.

    Returns
    -------
    ExportSummary
        Per-split counts, the classes in index order, what was skipped or changed, the log's path.
    """
    if format not in EXPORTERS:
        raise SegbenchError(f"unknown export format {format!r}; the formats are {', '.join(EXPORTERS)}")
    if link not in ("copy", "hardlink", "symlink"):
        raise SegbenchError(f"link={link!r}; use one of copy, hardlink, symlink")
    out = Path(out)
    datasets, cats = _categories({s: (Path(a), Path(i)) for s, (a, i) in splits.items()})
    root = next(iter(datasets.values())).image_root
    prepare_out(out, root, overwrite=overwrite, what="export")
    if format == "masks":
        for s in datasets:
            if (out / s).is_dir() and overwrite:
                shutil.rmtree(out / s)
    lg = ConversionLog()
    counts, index_file = EXPORTERS[format](datasets, cats, out, lg, link)
    summary = ExportSummary(
        format=format,
        out=out,
        splits=counts,
        categories=[c["name"] for c in cats],
        skipped=lg.counts(),
        notes=lg.counts(notes=True),
        index_file=index_file,
    )
    header = [
        f"segbench data export format={format} out={out}",
        "from: " + ", ".join(f"{s}={ds.ann_file}" for s, ds in datasets.items()),
        f"written: {datetime.now().isoformat(timespec='seconds')}",
        *summary.format_text().splitlines()[:-1],
    ]
    doc = {
        "format": format,
        "out": str(out),
        "splits": counts,
        "categories": summary.categories,
        "skipped_by_reason": dict(summary.skipped),
        "notes_by_reason": dict(summary.notes),
    }
    summary.log_file, _ = lg.write(out, "export_log", header, doc)
    if summary.skipped or summary.notes:
        log.warning(
            "export: skipped %s; notes %s (see %s)",
            count_text(summary.skipped),
            count_text(summary.notes),
            summary.log_file,
        )
    return summary
