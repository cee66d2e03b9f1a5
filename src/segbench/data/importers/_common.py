"""What every importer shares: the COCO writer, the import log, shape geometry and the split rule.

An importer reads its format and hands images and objects to a :class:`DatasetWriter`; the writer copies the
images into ``out/images/``, turns each object into a COCO annotation (polygons stay polygons, everything
else becomes a compressed RLE), checks it with the annotation rulebook
(:func:`segbench.data.annotations.check_annotation`), and at the end assigns splits and writes
``out/annotations/instances_<split>.json`` and the log (``out/import_log.txt`` and ``.json``). Whatever is
not imported is logged with its file, its object and a fix (:data:`REASONS`); nothing is dropped silently.

Rules shared by all formats
---------------------------
* ``area`` is the pixel count of the decoded mask, ``bbox`` the mask's tight box (COCO ``[x, y, w, h]``),
  ``iscrowd`` is always 0.
* Category ids are ``1..K`` in the declared order when the classes are declared (the ``classes=`` option,
  YOLO's ``names``, CVAT's ``<labels>``, a masks ``classes.json``; declared classes without objects are
  kept), else in sorted name order. Objects of an undeclared class are skipped (``unknown_label``).
* A shape partly outside the image is kept and clipped to it (noted); one entirely outside is skipped.
* Images are copied (``link=copy``, the default; ``hardlink`` / ``symlink`` on request) to
  ``out/images/<name>``, ``<name>`` being the image's path relative to its source folder; a name already
  taken by another file gets the split as a prefix.
* Splits: the source's own (``train/`` and ``val/`` folders, YOLO's ``train:``/``val:``, CVAT's
  ``subset``) are kept; without them every image goes to ``train``, or a random ``val_fraction`` of them
  (at least one, chosen with ``seed``) to ``val``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from segbench.data.annotations import ERROR, check_annotation, decode_segmentation
from segbench.io import atomic_write_text, write_json
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

#: Why something was not imported (or was changed), and how to fix it: ``code -> fix hint``.
REASONS: dict[str, str] = {
    "unreadable_file": "re-export the annotation file from the labelling tool (it is cut short, empty or "
    "not in the format asked for)",
    "malformed": "the record does not have the fields the format defines; re-export it from the tool",
    "missing_image": "put the image where the annotation file names it (beside the annotation file) or "
    "pass images=DIR",
    "unreadable_image": "re-export or re-download the image (it is corrupt, truncated or not an image)",
    "size_mismatch": "the annotations were drawn on an image of another size: export the image the "
    "annotations belong to, or label this one again",
    "duplicate_image": "the image is annotated twice; merge the two entries in the labelling tool",
    "unknown_label": "add the class to classes=[...] (or to the format's class list: YOLO names, CVAT "
    "labels, classes.json), or correct the label",
    "no_area": "points and lines have no area: draw the object as a polygon, rectangle, circle or mask",
    "unsupported_shape": "draw the object as a polygon, rectangle, circle, ellipse or mask",
    "box_only": "label the object as a polygon, or pass boxes=mask to import detection boxes as "
    "rectangular masks",
    "bad_polygon": "redraw the object with at least 3 points given as numbers",
    "outside_image": "the object lies entirely outside the image: redraw it inside",
    "empty_mask": "the mask has no pixel: redraw the object",
    "no_mask": "name the mask file like its image (<stem>.png, <stem>_mask.png, ...) in masks/",
    "orphan_mask": "a mask file without an image of the same name: add the image or remove the mask",
    "orphan_label": "a label file without an image of the same name: add the image or remove the label",
    "crowd": "crowd regions are not objects; they are left out of the export",
    "empty_object": "the object has no pixel left to write",
    # notes: imported, but changed or worth knowing
    "clipped": "the shape reaches past the image border; the part outside was cut off",
    "default_class": "the object has no class; pass class_key=NAME (VIA) or give it a label",
    "split": "",
    "hole_lost": "YOLO polygons cannot hold holes: the hole is filled in the export",
    "parts_joined": "",
    "overlap": "an instance-id image holds one object per pixel: the later object covers the earlier",
    "ignored": "",
}


# --------------------------------------------------------------------------------------------------
# The log
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogEntry:
    """One line of an import or export log."""

    status: str  # "skipped" or "note"
    file: str
    obj: str | None  # "shape 3", "line 7", "region 0", "object 2"... or None for the whole file
    code: str  # a key of REASONS
    message: str

    @property
    def hint(self) -> str:
        return REASONS.get(self.code, "")

    def format(self) -> str:
        where = f"{self.file}" + (f" {self.obj}" if self.obj else "")
        fix = f" (fix: {self.hint})" if self.hint and self.status == "skipped" else ""
        return f"{where}: {self.code}: {self.message}{fix}"

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "file": self.file,
            "object": self.obj,
            "reason": self.code,
            "message": self.message,
            "fix": self.hint,
        }


class ConversionLog:
    """What an import or export converted, skipped (with the reason and a fix) and changed.

    >>> lg = ConversionLog()
    >>> lg.skip("a.json", "shape 2", "no_area", "a 'point' shape")
    >>> lg.skipped[0].format().split(" (fix")[0]
    "a.json shape 2: no_area: a 'point' shape"
    >>> lg.counts()
    Counter({'no_area': 1})
    """

    def __init__(self) -> None:
        self.skipped: list[LogEntry] = []
        self.notes: list[LogEntry] = []
        self.converted: list[dict] = []

    def skip(self, file: str, obj: str | None, code: str, message: str) -> None:
        if code not in REASONS:
            raise ValueError(f"unknown log reason {code!r}; the reasons are the keys of REASONS")
        entry = LogEntry("skipped", file, obj, code, message)
        self.skipped.append(entry)
        log.debug("skipped %s", entry.format())

    def note(self, file: str, obj: str | None, code: str, message: str) -> None:
        if code not in REASONS:
            raise ValueError(f"unknown log reason {code!r}; the reasons are the keys of REASONS")
        self.notes.append(LogEntry("note", file, obj, code, message))

    def counts(self, notes: bool = False) -> Counter:
        return Counter(e.code for e in (self.notes if notes else self.skipped))

    def write(self, out: Path, stem: str, header: list[str], summary: dict) -> tuple[Path, Path]:
        """Write ``<out>/<stem>.txt`` (for people) and ``<out>/<stem>.json`` (every entry); returns both."""
        lines = [*header, ""]
        lines.append(f"converted ({len(self.converted)}):")
        lines += [
            f"  {c['split']:<6} {c['source']} -> {c['file_name']} ({c['objects']} object(s))"
            for c in self.converted
        ]
        lines += ["", f"skipped ({len(self.skipped)}):"] + [f"  {e.format()}" for e in self.skipped]
        lines += ["", f"notes ({len(self.notes)}):"] + [f"  {e.format()}" for e in self.notes]
        txt = atomic_write_text(out / f"{stem}.txt", "\n".join(lines) + "\n")
        doc = {
            **summary,
            "converted": self.converted,
            "skipped": [e.to_dict() for e in self.skipped],
            "notes": [e.to_dict() for e in self.notes],
        }
        return txt, write_json(out / f"{stem}.json", doc)


def count_text(counts: Counter) -> str:
    """``"2 unknown_label, 1 no_area"`` (most frequent first), or ``"none"``.

    >>> count_text(Counter({"no_area": 1, "unknown_label": 2}))
    '2 unknown_label, 1 no_area'
    """
    return ", ".join(f"{n} {k}" for k, n in counts.most_common()) or "none"


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def flat_points(value: Any) -> list[float]:
    """Points given as ``[[x, y], ...]`` or ``[x1, y1, x2, y2, ...]`` as a flat list of floats.

    Raises
    ------
    ValueError
        Naming what is wrong: not a list, a point that is not two numbers, strings instead of numbers.

    Examples
    --------
    >>> flat_points([[1, 2], [3, 4.5]])
    [1.0, 2.0, 3.0, 4.5]
    >>> flat_points(["1", "2"])
    Traceback (most recent call last):
    ...
    ValueError: coordinates must be numbers, got '1' (str)
    """
    if not isinstance(value, list | tuple):
        raise ValueError(f"points must be a list, got {type(value).__name__}")
    out: list[float] = []
    for p in value:
        items = p if isinstance(p, list | tuple) else [p]
        if isinstance(p, list | tuple) and len(p) < 2:
            raise ValueError(f"a point must be [x, y], got {p!r}")
        for v in items[:2] if isinstance(p, list | tuple) else items:
            if not _is_number(v):
                raise ValueError(f"coordinates must be numbers, got {v!r} ({type(v).__name__})")
            out.append(float(v))
    if len(out) % 2:
        raise ValueError(f"an odd number of coordinates ({len(out)})")
    return out


def rect_polygon(x1: float, y1: float, x2: float, y2: float, rotation: float = 0.0) -> list[float]:
    """The corners of a box (any two opposite corners), rotated by ``rotation`` degrees about its centre.

    >>> rect_polygon(5, 1, 1, 3)
    [1.0, 1.0, 5.0, 1.0, 5.0, 3.0, 1.0, 3.0]
    """
    xa, xb, ya, yb = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    pts = [(xa, ya), (xb, ya), (xb, yb), (xa, yb)]
    if rotation:
        cx, cy, t = (xa + xb) / 2, (ya + yb) / 2, math.radians(rotation)
        c, s = math.cos(t), math.sin(t)
        pts = [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in pts]
    return [float(v) for p in pts for v in p]


def ellipse_polygon(
    cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, *, tolerance: float = 0.1
) -> list[float]:
    """An ellipse (``theta`` radians) as a polygon whose edges stray at most ``tolerance`` px from it.

    The vertices lie on the ellipse; 16 to 720 of them.

    >>> len(ellipse_polygon(10, 10, 5, 5)) // 2
    16
    """
    r = max(abs(rx), abs(ry))
    n = 16
    if r > tolerance:
        n = max(16, min(720, math.ceil(math.pi / math.acos(1 - tolerance / r))))
    c, s = math.cos(theta), math.sin(theta)
    out: list[float] = []
    for k in range(n):
        a = 2 * math.pi * k / n
        x, y = rx * math.cos(a), ry * math.sin(a)
        out += [cx + x * c - y * s, cy + x * s + y * c]
    return out


def split_loops(xy: Sequence[float]) -> list[list[float]]:
    """Split a polygon that revisits vertices into its closed loops (bridges and repeats dropped).

    A polygon that comes back to a vertex it has passed closes a loop there. This undoes the joining of
    Ultralytics' ``merge_multi_segment`` (several parts of one object written as one YOLO line, linked by
    zero-width bridges walked there and back) and of :func:`join_loops`. Loops of fewer than 3 points
    (the bridges) are dropped; a polygon without repeats is returned as it is.

    >>> split_loops([0, 0, 4, 0, 4, 4, 0, 0, 10, 10, 12, 10, 12, 12, 10, 10])
    [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0], [10.0, 10.0, 12.0, 10.0, 12.0, 12.0]]
    """
    pts = [(float(xy[k]), float(xy[k + 1])) for k in range(0, len(xy) - 1, 2)]
    loops: list[list[tuple[float, float]]] = []
    path: list[tuple[float, float]] = []
    where: dict[tuple[float, float], int] = {}
    for p in pts:
        j = where.get(p)
        if j is not None:
            loop = path[j:]
            for q in path[j + 1 :]:
                where.pop(q, None)
            del path[j + 1 :]
            if len(set(loop)) >= 3:
                loops.append(loop)
            continue
        where[p] = len(path)
        path.append(p)
    if len(set(path)) >= 3:
        loops.append(path)
    return [[v for p in loop for v in p] for loop in loops]


def join_loops(loops: Sequence[Sequence[float]]) -> list[float]:
    """Several closed loops as one polygon: each loop linked to the largest by a zero-width bridge.

    The bridge from the largest loop's vertex nearest to a loop is walked there and back, so it adds no
    area (even-odd or union alike); :func:`split_loops` takes the line apart again. This is how
    Ultralytics writes a multi-part object as one YOLO line.

    >>> join_loops([[10, 10, 12, 10, 12, 12], [0, 0, 4, 0, 4, 4]])
    [0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 10.0, 10.0, 12.0, 10.0, 12.0, 12.0, 10.0, 10.0, 4.0, 4.0]
    """
    from scipy.spatial import cKDTree

    arrs = [np.asarray(lp, dtype=np.float64).reshape(-1, 2) for lp in loops]
    if len(arrs) == 1:
        return arrs[0].ravel().tolist()

    def area(a: np.ndarray) -> float:
        x, y = a[:, 0], a[:, 1]
        return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2

    order = sorted(range(len(arrs)), key=lambda k: -area(arrs[k]))
    main, others = arrs[order[0]], [arrs[k] for k in order[1:]]
    tree = cKDTree(main)
    inserts: dict[int, list[np.ndarray]] = {}
    for a in others:
        d, idx = tree.query(a)
        j = int(np.argmin(d))  # the vertex of ``a`` nearest to the main loop, and its neighbour there
        ring = np.concatenate([np.roll(a, -j, axis=0), a[j : j + 1]])  # closed at a[j]
        inserts.setdefault(int(idx[j]), []).append(ring)
    out: list[np.ndarray] = []
    for i, p in enumerate(main):
        out.append(p[None])
        for ring in inserts.get(i, []):
            out += [ring, p[None]]
    return np.concatenate(out).ravel().tolist()


def polygon_rle(parts: Sequence[Sequence[float]], h: int, w: int) -> dict:
    """The union of polygon parts drawn at (h, w) as a compressed RLE (the rulebook's drawing)."""
    return decode_segmentation([list(p) for p in parts], h, w)


def mask_rle(mask: np.ndarray) -> dict:
    """A ``(H, W)`` boolean mask as a compressed RLE with ``counts`` as text."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def loops_to_shape(loops: list[list[float]], h: int, w: int) -> tuple[list[list[float]] | None, dict | None]:
    """Loops of one object -> ``(polygons, None)`` when they do not overlap (COCO unions polygon parts),
    else ``(None, rle)`` of their even-odd combination (a loop inside another is a hole, as when the
    polygon is filled by ``cv2.fillPoly``)."""
    if len(loops) <= 1:
        return loops, None
    rles = [polygon_rle([lp], h, w) for lp in loops]
    union = mask_utils.merge(rles)
    if int(mask_utils.area(union)) == sum(int(mask_utils.area(r)) for r in rles):
        return loops, None
    acc = np.zeros((h, w), dtype=bool)
    for r in rles:
        acc ^= mask_utils.decode(r).astype(bool)
    return None, mask_rle(acc)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def probe_image(src: Path | bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(oriented (H, W), stored (H, W))`` of an image file or its bytes, decoding it fully.

    Raises
    ------
    ValueError
        When it cannot be read or decoded (the message says why).
    """
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            stored = (im.height, im.width)
            orientation = im.getexif().get(0x0112, 1)
            im.load()
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read the image ({e})") from None
    oriented = (stored[1], stored[0]) if orientation in (5, 6, 7, 8) else stored
    return oriented, stored


def safe_name(name: str) -> str:
    """A relative POSIX file name from one written by a tool: backslashes become slashes; ``.``, ``..``,
    drive letters and leading slashes are dropped.

    >>> safe_name("..\\\\imgs\\\\a.png"), safe_name("C:/x/b.jpg"), safe_name("./c.png")
    ('imgs/a.png', 'x/b.jpg', 'c.png')
    """
    name = name.replace("\\", "/")
    if len(name) > 1 and name[1] == ":":
        name = name[2:]
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "image"


SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SPLIT_ALIASES |= {"test": "test", "testing": "test"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def normalize_split(name: str) -> str:
    """A source's split name as a segbench split: ``valid``/``validation`` -> ``val``, ... .

    >>> normalize_split("Validation"), normalize_split("Train"), normalize_split("my set")
    ('val', 'train', 'my_set')
    """
    low = name.strip().lower()
    return SPLIT_ALIASES.get(low) or re.sub(r"[^a-z0-9_-]+", "_", low).strip("_") or "train"


def split_folders(root: Path) -> dict[str, Path]:
    """The split subfolders of ``root`` (``train/``, ``val/``, ``valid/``, ``test/``...), by split."""
    found: dict[str, Path] = {}
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and p.name.lower() in SPLIT_ALIASES:
                found.setdefault(SPLIT_ALIASES[p.name.lower()], p)
    return found


# --------------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------------
@dataclass
class ImportOptions:
    """The options every importer receives (see :func:`segbench.data.importers.import_dataset`)."""

    images: Path | None = None
    class_key: str | None = None
    boxes: str = "skip"


@dataclass
class ImageRef:
    """An image accepted by the writer."""

    id: int
    height: int
    width: int
    file_name: str
    source: str
    split: str | None
    objects: int = 0


@dataclass
class ImportSummary:
    """What :func:`segbench.data.importers.import_dataset` wrote."""

    format: str
    source: Path
    out: Path
    splits: dict[str, dict[str, int]]  # split -> {"images": n, "objects": n, "empty_images": n}
    categories: list[str]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    notes: Counter = field(default_factory=Counter)
    split_rule: str = ""
    log_file: Path | None = None
    log_json: Path | None = None

    @property
    def objects(self) -> int:
        return sum(s["objects"] for s in self.splits.values())

    @property
    def images(self) -> int:
        return sum(s["images"] for s in self.splits.values())

    def format_text(self) -> str:
        lines = [
            f"{split}: {s['images']} images ({s['empty_images']} without objects), {s['objects']} objects "
            f"-> {self.out / 'annotations' / f'instances_{split}.json'}"
            for split, s in self.splits.items()
        ]
        lines.append("categories: " + ", ".join(f"{k + 1} {n}" for k, n in enumerate(self.categories)))
        lines.append(f"split rule: {self.split_rule}")
        lines.append(f"skipped: {count_text(self.skipped)}; notes: {count_text(self.notes)}")
        lines.append(f"log: {self.log_file}")
        return "\n".join(lines)


def place_file(src: Path, dest: Path, link: str = "copy") -> str | None:
    """Copy (``link="copy"``), hard-link or symlink ``src`` to ``dest``; a note when a hard link was not
    possible (another file system) and the file was copied instead."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link == "symlink":
        os.symlink(src.resolve(), dest)
        return None
    if link == "hardlink":
        try:
            os.link(src, dest)
            return None
        except OSError as e:
            shutil.copyfile(src, dest)
            return f"cannot hard-link {src} ({e}); copied it"
    shutil.copyfile(src, dest)
    return None


def prepare_out(out: Path, src: Path, *, overwrite: bool, what: str = "import") -> None:
    """Refuse an ``out`` that is not empty (unless ``overwrite``: then its images/, annotations/, labels/
    and log are removed) or that would hold the source."""
    out, src_r = out.resolve(), src.resolve()
    if out == src_r or out in src_r.parents:
        raise SegbenchError(
            f"out={out} holds the source {src}; write the {what} to a new folder outside it (e.g. out={out}_coco)"
        )
    if out.exists() and not out.is_dir():
        raise SegbenchError(f"out={out} is a file; pass a folder for the {what}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SegbenchError(
                f"out={out} is not empty; choose a new folder, or pass overwrite=true to replace its "
                "images/, annotations/ and log"
            )
        for sub in ("images", "annotations", "labels", "masks"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        for p in out.glob(f"{what}_log.*"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


class DatasetWriter:
    """Collects images and objects from an importer and writes the segbench COCO dataset.

    Parameters
    ----------
    out : Path
        The dataset folder (prepared: empty or new).
    source : Path
        What was imported (``in=``), for messages; files are shown relative to its folder.
    classes : list of str, optional
        The classes to keep, in id order (the ``classes=`` option); overrides the format's own list.
    default_class : str
        The class of objects that have none.
    link : str
        ``copy``, ``hardlink`` or ``symlink`` the images into ``out/images``.
    """

    def __init__(
        self,
        out: Path,
        source: Path,
        *,
        classes: Sequence[str] | None = None,
        default_class: str = "object",
        link: str = "copy",
    ) -> None:
        self.out = Path(out)
        self.source = Path(source)
        self.root = self.source if self.source.is_dir() else self.source.parent
        self.log = ConversionLog()
        self.user_classes = [str(c) for c in classes] if classes else None
        self.declared: list[str] | None = list(self.user_classes) if self.user_classes else None
        self.default_class = default_class
        self.link = link
        self.images: list[ImageRef] = []
        self.annotations: list[dict] = []
        self._names: dict[str, str] = {}  # out file_name -> source key
        self._sources: dict[str, str] = {}  # source key -> out file_name
        self._seen_names: list[str] = []  # class names in order of first appearance
        self.source_has_splits = False

    # -- helpers for importers ------------------------------------------------------------------
    def show(self, path: str | os.PathLike) -> str:
        """A path as it appears in the log: relative to the source folder when inside it."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p)

    def declare_classes(self, names: Iterable[str]) -> None:
        """The classes the format declares (YOLO names, CVAT labels...), in id order; ignored when the user
        passed ``classes=``."""
        if self.user_classes is None:
            self.declared = [str(n) for n in names]

    def excluded(self, path: Path) -> bool:
        """Whether ``path`` lies inside the output folder (never read as a source)."""
        try:
            path.resolve().relative_to(self.out.resolve())
        except ValueError:
            return False
        return True

    # -- images -----------------------------------------------------------------------------------
    def add_image(
        self,
        split: str | None,
        name: str,
        *,
        path: Path | None = None,
        data: bytes | None = None,
        declared_hw: tuple[int, int] | None = None,
        file: str,
        obj: str | None = None,
    ) -> ImageRef | None:
        """Accept one image (a file, or its bytes), copying it into ``out/images``; None (logged) when it is
        missing, unreadable, annotated twice or of another size than ``declared_hw`` (H, W).

        ``name`` is the image's path relative to its source folder; ``file`` / ``obj`` say where it is
        named (for the log)."""
        if split is not None:
            self.source_has_splits = True
            split = normalize_split(split)
        if path is None and data is None:
            self.log.skip(file, obj, "missing_image", f"image {name!r} not found")
            return None
        key = str(path.resolve()) if path is not None else f"{file}#imageData"
        if key in self._sources:
            self.log.skip(
                file, obj, "duplicate_image", f"{name!r} was already imported as {self._sources[key]!r}"
            )
            return None
        what = self.show(path) if path is not None else repr(name)
        try:
            oriented, stored = probe_image(path if path is not None else data)
        except ValueError as e:
            code = "missing_image" if str(e) == "file not found" else "unreadable_image"
            self.log.skip(file, obj, code, f"image {what}: {e}")
            return None
        hw = oriented
        if declared_hw is not None and tuple(declared_hw) != oriented:
            if tuple(declared_hw) != stored:
                self.log.skip(
                    file,
                    obj,
                    "size_mismatch",
                    f"the annotations are for a {declared_hw[1]}x{declared_hw[0]} (WxH) image but "
                    f"{what} is {oriented[1]}x{oriented[0]}",
                )
                return None
            hw = stored  # drawn on the stored pixels (EXIF rotation not applied): the loader knows this case
        file_name = self._unique_name(safe_name(name), split)
        dest = self.out / "images" / file_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path is not None:
            self._place(path, dest, file)
        else:
            dest.write_bytes(data)  # type: ignore[arg-type]
        self._names[file_name] = key
        self._sources[key] = file_name
        ref = ImageRef(len(self.images) + 1, hw[0], hw[1], file_name, file, split)
        self.images.append(ref)
        return ref

    def _unique_name(self, name: str, split: str | None) -> str:
        if name not in self._names:
            return name
        cand = f"{split or 'train'}/{name}"
        stem, dot, ext = name.rpartition(".")
        k = 1
        while cand in self._names:
            cand = f"{stem}_{k}.{ext}" if dot else f"{name}_{k}"
            k += 1
        return cand

    def _place(self, src: Path, dest: Path, file: str) -> None:
        fallback = place_file(src, dest, self.link)
        if fallback:
            self.log.note(file, None, "ignored", fallback)

    # -- objects ----------------------------------------------------------------------------------
    def category(self, label: Any, *, file: str, obj: str | None) -> str | None:
        """The class name of an object, or None (logged as ``unknown_label``)."""
        name = str(label).strip() if label is not None and not isinstance(label, bool) else ""
        if not name:
            name = self.default_class
            self.log.note(file, obj, "default_class", f"no class: imported as {name!r}")
        if self.declared is not None and name not in self.declared:
            shown = ", ".join(self.declared[:20]) + (" ..." if len(self.declared) > 20 else "")
            self.log.skip(file, obj, "unknown_label", f"class {name!r} is not one of the classes ({shown})")
            return None
        if name not in self._seen_names:
            self._seen_names.append(name)
        return name

    def add_object(
        self,
        image: ImageRef,
        label: Any,
        *,
        polygons: Sequence[Sequence[float]] = (),
        masks: Sequence[np.ndarray | dict] = (),
        file: str,
        obj: str | None,
    ) -> bool:
        """Add one object of ``image``: polygon parts (pixel coordinates, COCO's union) and/or masks (bool
        ``(H, W)`` arrays or RLEs at the image size). Polygons alone are written as polygons; with a mask
        the union is written as an RLE. False (logged) when it is not imported."""
        h, w = image.height, image.width
        parts: list[list[float]] = []
        for k, p in enumerate(polygons):
            p = [float(v) for v in p]
            if len(p) < 6 or len(p) % 2:
                what = f"part {k}: " if len(polygons) > 1 else ""
                self.log.skip(file, obj, "bad_polygon", f"{what}{len(p) // 2} point(s); a polygon needs 3")
                continue
            parts.append(p)
        if not parts and not masks:
            return False
        name = self.category(label, file=file, obj=obj)
        if name is None:
            return False
        rles = []
        for m in masks:
            if isinstance(m, dict):
                rles.append(m)
            else:
                m = np.asarray(m, dtype=bool)
                if m.shape != (h, w):
                    self.log.skip(
                        file,
                        obj,
                        "size_mismatch",
                        f"the mask is {m.shape[1]}x{m.shape[0]} (WxH), the image {w}x{h}",
                    )
                    return False
                rles.append(mask_rle(m))
        if parts:
            rles.append(polygon_rle(parts, h, w))
        rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
        if isinstance(rle["counts"], bytes):
            rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        area = int(mask_utils.area(rle))
        if area == 0:
            if parts and not masks and _outside(parts, h, w):
                self.log.skip(file, obj, "outside_image", f"the shape lies outside the {w}x{h} (WxH) image")
            else:
                self.log.skip(file, obj, "empty_mask", "the shape covers no pixel (zero area)")
            return False
        if parts and _reaches_out(parts, h, w):
            self.log.note(file, obj, "clipped", f"the shape reaches past the {w}x{h} (WxH) image: clipped")
        seg: list | dict = parts if parts and not masks else rle
        ann = {
            "id": len(self.annotations) + 1,
            "image_id": image.id,
            "category_id": name,  # resolved to an id in finish()
            "segmentation": seg,
            "area": float(area),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        }
        errors = [p for p in check_annotation(ann, h, w).problems if p.severity == ERROR]
        if errors:  # cannot happen for what the writer builds; kept so that nothing unusable is written
            self.log.skip(file, obj, "malformed", f"{errors[0].kind}: {errors[0].message}")
            return False
        self.annotations.append(ann)
        image.objects += 1
        return True

    # -- the end --------------------------------------------------------------------------------------
    def finish(self, *, fmt: str, val_fraction: float = 0.0, seed: int = 0) -> ImportSummary:
        """Assign splits, write the JSONs and the log; a :class:`SegbenchError` (the log written) when
        nothing usable was found."""
        names = self.declared if self.declared is not None else sorted(self._seen_names)
        cat_id = {n: k + 1 for k, n in enumerate(names)}
        rule = self._assign_splits(val_fraction, seed)
        splits: dict[str, dict[str, int]] = {}
        for im in self.images:
            s = splits.setdefault(im.split or "train", {"images": 0, "objects": 0, "empty_images": 0})
            s["images"] += 1
            s["objects"] += im.objects
            s["empty_images"] += im.objects == 0
        summary = ImportSummary(
            format=fmt,
            source=self.source,
            out=self.out,
            splits=dict(sorted(splits.items(), key=lambda kv: (SPLIT_ORDER.get(kv[0], 3), kv[0]))),
            categories=names,
            skipped=self.log.counts(),
            notes=self.log.counts(notes=True),
            split_rule=rule,
        )
        for im in self.images:
            self.log.converted.append(
                {
                    "split": im.split,
                    "source": im.source,
                    "file_name": f"images/{im.file_name}",
                    "objects": im.objects,
                }
            )
        header = [
            f"segbench data import format={fmt} in={self.source} out={self.out}",
            f"written: {datetime.now().isoformat(timespec='seconds')}",
            *summary.format_text().splitlines()[:-1],
        ]
        doc = {
            "format": fmt,
            "source": str(self.source),
            "out": str(self.out),
            "splits": summary.splits,
            "categories": [{"id": cat_id[n], "name": n} for n in names],
            "split_rule": rule,
            "skipped_by_reason": dict(summary.skipped),
            "notes_by_reason": dict(summary.notes),
        }
        summary.log_file, summary.log_json = self.log.write(self.out, "import_log", header, doc)
        if not self.annotations:
            why = "; ".join(e.format() for e in self.log.skipped[:3])
            what = "no image" if not self.images else "no object"
            if self.log.skipped:
                more = " ..." if len(self.log.skipped) > 3 else ""
                why = f" ({count_text(summary.skipped)}: {why}{more})"
            else:
                why = f"; is it really a {fmt!r} export?"
            raise SegbenchError(
                f"nothing usable in {self.source}: {what} could be imported{why}. Full log: {summary.log_file}"
            )
        categories = [{"id": cat_id[n], "name": n, "supercategory": ""} for n in names]
        for ann in self.annotations:
            ann["category_id"] = cat_id[ann["category_id"]]
        by_image: dict[int, list[dict]] = {}
        for ann in self.annotations:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for split in summary.splits:
            ims = [im for im in self.images if (im.split or "train") == split]
            doc = {
                "info": {"description": f"imported by segbench from {fmt}: {self.source}"},
                "images": [
                    {"id": im.id, "file_name": im.file_name, "height": im.height, "width": im.width}
                    for im in ims
                ],
                "annotations": [a for im in ims for a in by_image.get(im.id, [])],
                "categories": categories,
            }
            write_json(self.out / "annotations" / f"instances_{split}.json", doc, indent=None)
        if summary.skipped:
            log.warning(
                "skipped %d item(s): %s; the log says which, why and the fix: %s",
                sum(summary.skipped.values()),
                count_text(summary.skipped),
                summary.log_file,
            )
        return summary

    def _assign_splits(self, val_fraction: float, seed: int) -> str:
        for im in self.images:
            im.split = im.split or "train"
        has_val = any(im.split == "val" for im in self.images)
        if self.source_has_splits and has_val:
            rule = "the source's own splits"
            if val_fraction:
                rule += f" (val_fraction={val_fraction} ignored: the source has a val split)"
            return rule
        if not val_fraction:
            base = "the source's own splits" if self.source_has_splits else "the source has no splits"
            return (
                f"{base}, no val split and val_fraction=0: every image is in train "
                "(pass val_fraction=0.2 to hold out 20% as val)"
            )
        train = sorted((im for im in self.images if im.split == "train"), key=lambda im: im.file_name)
        k = max(1, round(val_fraction * len(train))) if len(train) >= 2 else 0
        for im in random.Random(seed).sample(train, k):
            im.split = "val"
        return (
            f"no val split in the source: {k} of {len(train)} train images moved to val at random "
            f"(val_fraction={val_fraction}, seed={seed})"
        )


def _outside(parts: list[list[float]], h: int, w: int) -> bool:
    xs = [v for p in parts for v in p[0::2]]
    ys = [v for p in parts for v in p[1::2]]
    return max(xs) <= 0 or max(ys) <= 0 or min(xs) >= w or min(ys) >= h


def _reaches_out(parts: list[list[float]], h: int, w: int) -> bool:
    xs = [v for p in parts for v in p[0::2]]
    ys = [v for p in parts for v in p[1::2]]
    return min(xs) < 0 or min(ys) < 0 or max(xs) > w or max(ys) > h
