"""The dataset doctor: every problem of a COCO instances file and its images, with ids and a fix.

:func:`check_dataset` reads the raw JSON itself (the loader, :class:`~segbench.data.coco.CocoDataset`,
refuses some files outright and drops bad annotations quietly; the doctor goes on and lists them all) and
returns a :class:`CheckReport`. :func:`fix_dataset` writes a corrected copy of the JSON beside the original
(never over it) with a log of every change.

Problem kinds
-------------

========================= ======== ==================================================== =====================
kind                      severity what                                                 ``fix=true`` does
========================= ======== ==================================================== =====================
malformed_json            error    not JSON, not an object, no images/categories list    nothing (refuses)
malformed_entry           error    a record without id / file_name / image_id ...       drops it (annotation
                                                                                        without id: new id)
unsafe_file_name          error    file_name absolute or with ``..``                     renames to the base
                                                                                        name if that file is
                                                                                        in the image folder,
                                                                                        else drops the image
missing_image             error    the image file does not exist                        drops image + anns
unreadable_image          error    corrupt, truncated or not an image                   drops image + anns
size_mismatch             error    file size differs from the JSON's width/height       sets them from file
missing_size              warning  no width/height in the JSON                          sets them from file
duplicate_image_id        error    two image entries with one id                        one file: keeps one;
                                                                                        several: drops all
                                                                                        (ambiguous anns)
duplicate_file_name       warning  one file listed under several image ids              leaves it (logged)
duplicate_ann_id          error    two annotations with one id                          renumbers
duplicate_category_id     error    two categories with one id                           keeps the first
category_id_zero          warning  a category with id 0 (often "background")            leaves it (logged)
unknown_image             error    annotation of an image id not in ``images``           drops it
unknown_category          error    annotation of an unknown category id                 drops it
bad_polygon               error    polygon part with < 3 points / odd coordinates       drops the part (the
                                                                                        annotation if none
                                                                                        is left)
rle_size_mismatch         error    RLE ``size`` differs from the image size              drops it
malformed_segmentation    error    RLE without size/counts, bad counts, flat polygon,   drops it (wraps a
                                   not a list or dict                                   flat polygon)
no_segmentation           warning  box only: the loader uses the box as the mask        leaves it
bad_box                   error    bbox missing, malformed, of zero/negative size or    recomputes it from
                                   entirely outside the image                           the mask (box only:
                                                                                        drops it)
box_outside_image         warning  bbox reaches past the image border (> 1 px)           clips it
box_mask_mismatch         error    bbox and the mask's tight box disagree (IoU < 0.7)   recomputes the bbox
empty_mask                error    zero area after decoding / clipping to the image     drops it
bad_area                  warning  ``area`` missing or not a number (COCOeval needs it)  sets the mask area
crowd_object              warning  ``iscrowd=1`` on one ordinary connected object       sets iscrowd=0
                                   (the CVAT export habit)
all_crowd                 warning  every annotation is ``iscrowd=1``                      sets iscrowd=0
too_many_objects          warning  more objects in an image than ``max_dets``           leaves it
========================= ======== ==================================================== =====================

Errors make the loader refuse the file, drop annotations or train and score on wrong targets; warnings are
legal COCO that is often a mistake. ``segbench data check`` exits with status 1 while errors remain.

Example
-------
>>> report = check_dataset("data/synth/annotations/instances_train.json")  # doctest: +SKIP
>>> print(report.format())  # doctest: +SKIP
>>> if report.errors:  # doctest: +SKIP
...     out, changes = fix_dataset(report.ann_file, report)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from segbench.data.coco import default_image_root, safe_join
from segbench.types import SegbenchError

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Kind:
    severity: str
    title: str
    hint: str


#: kind -> severity, one-line description and fix hint (the table of the module docstring)
KINDS: dict[str, Kind] = {
    "malformed_json": Kind(
        ERROR, "not a COCO instances file", "re-export the annotations as COCO instances JSON"
    ),
    "malformed_entry": Kind(
        ERROR,
        "record without a required field",
        "images need id + file_name, annotations id + image_id + category_id, categories an integer id "
        "(fix=true drops such records and gives annotations without an id a new one)",
    ),
    "unsafe_file_name": Kind(
        ERROR,
        "file_name outside the image folder",
        "name images relative to the image folder (fix=true uses the base name when that file is there, "
        "else drops the image)",
    ),
    "missing_image": Kind(
        ERROR,
        "image file not found",
        "copy the file into the image folder or point data.image_root at the right folder "
        "(fix=true drops the image and its annotations)",
    ),
    "unreadable_image": Kind(
        ERROR,
        "corrupt, truncated or unreadable image",
        "re-export or re-download the file (fix=true drops the image and its annotations)",
    ),
    "size_mismatch": Kind(
        ERROR,
        "image size differs from the JSON's width/height",
        "set width/height to the file's size (fix=true does); if the image was resized after labelling, "
        "label it again",
    ),
    "missing_size": Kind(
        WARNING, "no width/height in the JSON", "add them (fix=true reads them from the file)"
    ),
    "duplicate_image_id": Kind(
        ERROR,
        "image id used more than once",
        "give each image its own id (fix=true keeps one entry when they name the same file, else drops "
        "them all: their annotations cannot be told apart)",
    ),
    "duplicate_file_name": Kind(
        WARNING,
        "one file listed under several image ids",
        "the picture counts twice in training and evaluation: merge the entries (fix=true leaves them)",
    ),
    "duplicate_ann_id": Kind(
        ERROR, "annotation id used more than once", "give each annotation its own id (fix=true renumbers)"
    ),
    "duplicate_category_id": Kind(
        ERROR,
        "category id used more than once",
        "give each category its own id (fix=true keeps the first; its annotations all get that class)",
    ),
    "category_id_zero": Kind(
        WARNING,
        "category with id 0",
        "legal COCO, but often a 'background' class exported by mistake: remove it if it is one "
        "(fix=true leaves it)",
    ),
    "unknown_image": Kind(
        ERROR, "annotation of an unknown image id", "fix the image_id or add the image (fix=true drops it)"
    ),
    "unknown_category": Kind(
        ERROR,
        "annotation of an unknown category id",
        "add the category or fix category_id (fix=true drops it)",
    ),
    "bad_polygon": Kind(
        ERROR,
        "polygon part with fewer than 3 points or an odd number of coordinates",
        "redraw the object (fix=true drops the bad parts, and the annotation if none is left)",
    ),
    "rle_size_mismatch": Kind(
        ERROR,
        "RLE size differs from the image size",
        "export the mask at the image's size (fix=true drops the annotation)",
    ),
    "malformed_segmentation": Kind(
        ERROR,
        "segmentation that cannot be decoded",
        "use a list of polygons [[x1,y1,x2,y2,...], ...] or an RLE {size: [h,w], counts} "
        "(fix=true wraps a flat polygon and drops the rest)",
    ),
    "no_segmentation": Kind(
        WARNING,
        "box without a mask",
        "the loader uses the box as a rectangular mask: add the object's polygon or RLE",
    ),
    "bad_box": Kind(
        ERROR,
        "bbox missing, malformed, empty or outside the image",
        "bbox is [x, y, width, height] in pixels (fix=true recomputes it from the mask; drops box-only ones)",
    ),
    "box_outside_image": Kind(
        WARNING, "bbox reaches past the image border", "clip it to the image (fix=true does)"
    ),
    "box_mask_mismatch": Kind(
        ERROR,
        "bbox and mask disagree",
        "bbox must be the mask's tight box in [x, y, width, height] (fix=true recomputes it from the mask)",
    ),
    "empty_mask": Kind(
        ERROR,
        "empty mask after clipping to the image",
        "redraw the object inside the image (fix=true drops the annotation)",
    ),
    "bad_area": Kind(
        WARNING,
        "area missing or not a number",
        "COCO evaluation needs 'area' (fix=true sets the mask's area)",
    ),
    "crowd_object": Kind(
        WARNING,
        "ordinary object marked iscrowd=1",
        "set iscrowd=0 (fix=true does): crowd regions are ignored by training and evaluation "
        "(CVAT exports masks as iscrowd=1 RLE)",
    ),
    "all_crowd": Kind(
        WARNING,
        "every annotation is iscrowd=1",
        "set iscrowd=0 (fix=true does): otherwise nothing is learned or scored",
    ),
    "too_many_objects": Kind(
        WARNING,
        "more objects in an image than the detections cap",
        "raise model.net.box_detections_per_img (and eval max_dets / model.eval_max_dets) above the count",
    ),
}

#: kinds that fix_dataset leaves as they are (it only notes some of them in its log)
LEFT_ALONE = frozenset({"duplicate_file_name", "category_id_zero", "no_segmentation", "too_many_objects"})

#: a box may reach this far past the border (rounding in exporters) before it is reported
BOX_TOLERANCE = 1.0


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Issue:
    """One problem: its kind (see :data:`KINDS`), severity, a sentence, and where it is."""

    kind: str
    severity: str
    message: str
    image_id: Any = None
    ann_id: Any = None
    file_name: str | None = None

    @property
    def hint(self) -> str:
        return KINDS[self.kind].hint

    def where(self) -> str:
        parts = []
        if self.image_id is not None:
            parts.append(f"image {self.image_id}")
        if self.file_name is not None:
            parts.append(repr(self.file_name))
        if self.ann_id is not None:
            parts.append(f"ann {self.ann_id}")
        return " ".join(parts)


@dataclass
class _ImageFact:
    """What the check learned about ``images[index]`` (used by :func:`fix_dataset`)."""

    index: int
    image_id: Any = None
    file_name: Any = None
    status: str = "ok"  # ok | malformed | unsafe | missing | unreadable
    actual_hw: tuple[int, int] | None = None  # (H, W) of the file after EXIF orientation
    size_ok: bool = True  # the JSON's width/height match the file (or cannot be compared)
    rename_to: str | None = None  # for an unsafe name whose base name exists in the image folder


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found in one COCO file."""

    ann_file: Path
    image_root: Path
    issues: list[Issue] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    sha256: str = ""
    image_facts: list[_ImageFact] = field(default_factory=list, repr=False)

    def add(self, kind: str, message: str, *, image_id=None, ann_id=None, file_name=None) -> None:
        self.issues.append(Issue(kind, KINDS[kind].severity, message, image_id, ann_id, file_name))

    @property
    def errors(self) -> int:
        return sum(i.severity == ERROR for i in self.issues)

    @property
    def warnings(self) -> int:
        return sum(i.severity == WARNING for i in self.issues)

    @property
    def fixable(self) -> int:
        """How many issues :func:`fix_dataset` would change something for."""
        return sum(i.kind not in LEFT_ALONE for i in self.issues)

    def by_kind(self) -> dict[str, list[Issue]]:
        """Issues grouped by kind: errors first, then warnings, each in the order of :data:`KINDS`."""
        groups: dict[str, list[Issue]] = defaultdict(list)
        for i in self.issues:
            groups[i.kind].append(i)
        order = list(KINDS)
        keys = sorted(groups, key=lambda k: (KINDS[k].severity != ERROR, order.index(k)))
        return {k: groups[k] for k in keys}

    def format(self, *, title: str | None = None, max_examples: int = 5) -> str:
        """Human-readable: a summary line, then per kind its count, fix hint and a few examples."""
        head = f"[{title}] " if title else ""
        lines = [
            f"{head}{self.ann_file} (images in {self.image_root})",
            f"  {self.num_images} images, {self.num_annotations} annotations, {self.num_categories} categories: "
            f"{self.errors} error(s), {self.warnings} warning(s)",
        ]
        if not self.issues:
            lines.append("  no problems found")
        for kind, issues in self.by_kind().items():
            k = KINDS[kind]
            lines.append(f"  {k.severity.upper():7} {kind} ({len(issues)}): {k.title}")
            lines.append(f"          fix: {k.hint}")
            for i in issues[:max_examples]:
                where = i.where()
                lines.append(f"          - {where + ': ' if where else ''}{i.message}")
            if len(issues) > max_examples:
                lines.append(f"          ... and {len(issues) - max_examples} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-serialisable summary: counts, per-kind totals with hints, every issue."""
        return {
            "ann_file": str(self.ann_file),
            "image_root": str(self.image_root),
            "images": self.num_images,
            "annotations": self.num_annotations,
            "categories": self.num_categories,
            "errors": self.errors,
            "warnings": self.warnings,
            "kinds": {
                k: {"severity": KINDS[k].severity, "count": len(v), "hint": KINDS[k].hint}
                for k, v in self.by_kind().items()
            },
            "issues": [asdict(i) for i in self.issues],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _valid_id(v) -> bool:
    """COCO ids are integers; strings are accepted too (pycocotools and the loader take them)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def _hashable(v) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _json_size(im: dict) -> tuple[str, tuple[int, int] | None]:
    """('ok', (H, W)) | ('missing', None) | ('invalid', None) from an image entry."""
    h, w = im.get("height"), im.get("width")
    if h is None and w is None:
        return "missing", None
    if (
        _is_number(h)
        and _is_number(w)
        and float(h).is_integer()
        and float(w).is_integer()
        and h > 0
        and w > 0
    ):
        return "ok", (int(h), int(w))
    return "invalid", None


def _rle_string_counts(s: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``); None if malformed."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return counts


def _box_iou(a, b) -> float:
    """IoU of two XYWH boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _clip_box(b, h: int, w: int) -> list[float]:
    x1, y1 = min(max(b[0], 0.0), w), min(max(b[1], 0.0), h)
    x2, y2 = min(max(b[0] + b[2], 0.0), w), min(max(b[1] + b[3], 0.0), h)
    return [x1, y1, x2 - x1, y2 - y1]


def _fmt_box(b) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in b) + "]"


def _inspect_image(path: Path, *, read_pixels: bool) -> tuple[str, str, tuple | None, tuple | None]:
    """(status, message, oriented (H, W), stored (H, W)) of an image file."""
    if not path.is_file():
        return "missing", f"not found: {path}", None, None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if read_pixels:
                im.load()
                exif = im.getexif()
            elif im.format == "PNG":  # PNG's getexif() reads the whole file; use the chunks seen so far
                exif = Image.Exif()
                if im.info.get("exif"):
                    exif.load(im.info["exif"])
            else:
                exif = im.getexif()
            orientation = exif.get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 - any failure to read the file is the finding
        return "unreadable", f"cannot read {path.name}: {type(e).__name__}: {e}", None, None
    oriented = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    return "ok", "", oriented, (h, w)


def _base_name(file_name: str) -> str:
    return PureWindowsPath(file_name).name  # splits on / and \


# --------------------------------------------------------------------------------------------------
# One annotation
# --------------------------------------------------------------------------------------------------
@dataclass
class _AnnCheck:
    problems: list[tuple[str, str]] = field(default_factory=list)
    rle: dict | None = None  # the decoded mask (compressed RLE at the image size) when usable
    area: float = 0.0
    parts: list | None = None  # the valid parts of a polygon segmentation
    flat_polygon: bool = False
    box_only: bool = False
    bbox: list[float] | None = None  # the JSON bbox when well formed
    single_crowd: bool = False  # iscrowd=1 on one ordinary connected object

    @property
    def has_error(self) -> bool:
        return any(KINDS[k].severity == ERROR for k, _ in self.problems)


def _analyse_annotation(
    ann: dict, hw: tuple[int, int], *, box_iou: float = 0.7, crowd_max_fraction: float = 0.25
) -> _AnnCheck:
    """Every problem of one annotation on an image of size ``hw`` (H, W), and its decoded mask."""
    h, w = hw
    a = _AnnCheck()
    seg = ann.get("segmentation")

    # -- segmentation -------------------------------------------------------------------------------
    if seg is None or (isinstance(seg, list) and not seg):
        a.box_only = True
    elif isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
        ):
            a.problems.append(("malformed_segmentation", f"RLE without a valid size (got {size!r})"))
        elif counts is None:
            a.problems.append(("malformed_segmentation", "RLE without counts"))
        else:
            rh, rw = size
            if isinstance(counts, list):
                runs = counts if all(isinstance(v, int) and not isinstance(v, bool) for v in counts) else None
            elif isinstance(counts, str):
                runs = _rle_string_counts(counts)
            else:
                runs = None
            if runs is None or any(v < 0 for v in runs) or sum(runs) != rh * rw:
                a.problems.append(
                    ("malformed_segmentation", f"RLE counts do not describe a {rh}x{rw} (HxW) mask")
                )
            elif (rh, rw) != (h, w):
                a.problems.append(("rle_size_mismatch", f"RLE size {rh}x{rw} (HxW) but the image is {h}x{w}"))
            elif isinstance(counts, list):
                a.rle = mask_utils.frPyObjects(seg, h, w)
            else:
                a.rle = {"size": [h, w], "counts": counts.encode("ascii")}
    elif isinstance(seg, list):
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in seg):
            a.flat_polygon = True
            a.problems.append(
                (
                    "malformed_segmentation",
                    "a flat list of coordinates instead of a list of polygons [[x1, y1, ...]] "
                    "(pycocotools cannot read it)",
                )
            )
            raw_parts = [seg]
        else:
            raw_parts = seg
        valid, bad = [], []
        for j, part in enumerate(raw_parts):
            if not isinstance(part, list | tuple) or not all(_is_number(v) for v in part):
                a.problems.append(("malformed_segmentation", f"polygon part {j} is not a list of numbers"))
            elif len(part) % 2:
                bad.append(f"part {j} has an odd number of coordinates ({len(part)})")
            elif len(part) < 6:
                bad.append(f"part {j} has {len(part) // 2} point(s)")
            else:
                valid.append(part)
        if bad:
            left = f"{len(valid)} of {len(raw_parts)} part(s) usable"
            a.problems.append(("bad_polygon", "polygon " + "; ".join(bad) + f" ({left})"))
        a.parts = valid
        if valid:
            a.rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in valid], h, w))
    else:
        a.problems.append(
            (
                "malformed_segmentation",
                f"segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}",
            )
        )
    if a.rle is not None:
        a.area = float(mask_utils.area(a.rle))
        if a.area == 0:
            a.problems.append(
                ("empty_mask", "the mask is empty after clipping to the image (outside it, or of zero area)")
            )

    # -- box ------------------------------------------------------------------------------------------
    bbox = ann.get("bbox")
    if isinstance(bbox, list | tuple) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
        a.bbox = [float(v) for v in bbox]
    if a.bbox is None:
        if a.rle is not None or a.box_only:
            what = "no bbox" if bbox is None else f"malformed bbox {bbox!r}"
            if a.box_only:
                what += " and no segmentation: nothing to train on"
            a.problems.append(("bad_box", what))
    else:
        x, y, bw, bh = a.bbox
        if bw <= 0 or bh <= 0:
            a.problems.append(("bad_box", f"bbox {_fmt_box(a.bbox)} has zero or negative size"))
        elif x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            a.problems.append(("bad_box", f"bbox {_fmt_box(a.bbox)} is entirely outside the {w}x{h} image"))
        else:
            t = BOX_TOLERANCE
            if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
                a.problems.append(
                    ("box_outside_image", f"bbox {_fmt_box(a.bbox)} reaches past the {w}x{h} (WxH) image")
                )
            if a.rle is not None and a.area > 0:
                mb = [float(v) for v in mask_utils.toBbox(a.rle)]
                cb = _clip_box(a.bbox, h, w)
                iou = _box_iou(cb, mb)
                diff = max(abs(cb[0] - mb[0]), abs(cb[1] - mb[1]))
                diff = max(diff, abs(cb[0] + cb[2] - mb[0] - mb[2]), abs(cb[1] + cb[3] - mb[1] - mb[3]))
                if iou < box_iou and diff > 2:
                    a.problems.append(
                        (
                            "box_mask_mismatch",
                            f"bbox {_fmt_box(a.bbox)} but the mask's box is {_fmt_box(mb)} (IoU {iou:.2f})",
                        )
                    )
    if a.box_only and a.bbox is not None:
        a.problems.append(("no_segmentation", "no segmentation: the box is used as a rectangular mask"))

    # -- area -----------------------------------------------------------------------------------------
    area = ann.get("area")
    if not _is_number(area) or area < 0:
        a.problems.append(("bad_area", f"area is {area!r}"))

    # -- crowd ----------------------------------------------------------------------------------------
    if ann.get("iscrowd") and a.rle is not None and a.area > 0:
        _, n = ndimage.label(mask_utils.decode(a.rle), structure=np.ones((3, 3), bool))
        frac = a.area / float(h * w)
        if n == 1 and frac <= crowd_max_fraction:
            a.single_crowd = True
            a.problems.append(
                (
                    "crowd_object",
                    f"iscrowd=1 on one connected object of {a.area:.0f} px ({100 * frac:.1f}% of the image)",
                )
            )
    return a


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------
def _read_raw(ann_file: Path) -> tuple[bytes, dict | None, str | None]:
    try:
        raw = ann_file.read_bytes()
    except FileNotFoundError:
        raise SegbenchError(f"annotation file not found: {ann_file}") from None
    except OSError as e:
        raise SegbenchError(f"cannot read {ann_file}: {e}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return raw, None, f"not a UTF-8 text file ({e})"
    except json.JSONDecodeError as e:
        return raw, None, f"not valid JSON ({e})"
    if not isinstance(data, dict):
        return raw, None, "a COCO file is a JSON object with 'images', 'annotations', 'categories'"
    missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if missing:
        return raw, None, f"no {' and no '.join(repr(k) for k in missing)} list"
    if not isinstance(data.get("annotations", []), list):
        return raw, None, "'annotations' is not a list"
    return raw, data, None


def check_dataset(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    max_dets: int | None = 100,
    read_images: bool = True,
    box_iou: float = 0.7,
    crowd_max_fraction: float = 0.25,
) -> CheckReport:
    """Check a COCO instances JSON and its images; report every problem (see the module docstring).

    Parameters
    ----------
    ann_file : path
        The COCO instances JSON.
    image_root : path, optional
        The folder ``file_name`` is relative to (default: as :class:`~segbench.data.coco.CocoDataset`).
    max_dets : int or None
        Warn about images with more (non-crowd) objects than this; None or 0 turns it off.
    read_images : bool
        Decode every image's pixels (finds truncated files). False: check existence and read headers only.
    box_iou : float
        A bbox whose IoU with its mask's tight box is below this (and more than 2 px off) is an error.
    crowd_max_fraction : float
        An ``iscrowd=1`` mask of one connected component covering at most this fraction of the image is
        reported as an ordinary object.

    Returns
    -------
    CheckReport

    Raises
    ------
    SegbenchError
        Only when ``ann_file`` cannot be read at all (missing, permissions).
    """
    ann_file = Path(ann_file)
    root = Path(image_root) if image_root is not None else default_image_root(ann_file)
    raw, data, why = _read_raw(ann_file)
    rep = CheckReport(ann_file=ann_file, image_root=root, sha256=hashlib.sha256(raw).hexdigest())
    if data is None:
        rep.add("malformed_json", f"{ann_file.name}: {why}")
        return rep
    images, cats, anns = data["images"], data["categories"], data.get("annotations", [])
    rep.num_images, rep.num_annotations, rep.num_categories = len(images), len(anns), len(cats)

    # -- categories -----------------------------------------------------------------------------------
    cat_names: dict[int, str] = {}
    for k, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, dict) else None
        if not (isinstance(cid, int) and not isinstance(cid, bool)):
            rep.add("malformed_entry", f"categories[{k}] needs an integer 'id', got {str(c)[:120]}")
            continue
        name = str(c.get("name", cid))
        if cid in cat_names:
            rep.add(
                "duplicate_category_id",
                f"category id {cid} names both {cat_names[cid]!r} and {name!r} (categories[{k}])",
            )
            continue
        cat_names[cid] = name

    # -- images ---------------------------------------------------------------------------------------
    first_by_id: dict = {}  # image id -> index of its first entry
    files_seen: dict[str, Any] = {}  # file name -> first image id
    eff_hw: dict = {}  # image id -> (H, W) the annotations are checked against
    for k, im in enumerate(images):
        fact = _ImageFact(index=k)
        rep.image_facts.append(fact)
        iid = im.get("id") if isinstance(im, dict) else None
        fn = im.get("file_name") if isinstance(im, dict) else None
        fact.image_id, fact.file_name = iid, fn
        if not _valid_id(iid) or not isinstance(fn, str) or not fn:
            fact.status = "malformed"
            rep.add(
                "malformed_entry",
                f"images[{k}] needs an id and a non-empty file_name, got {str(im)[:120]}",
                image_id=iid if _hashable(iid) else None,
            )
            continue
        if iid in first_by_id:
            first = rep.image_facts[first_by_id[iid]]
            same = first.file_name == fn
            rep.add(
                "duplicate_image_id",
                f"images[{k}] repeats id {iid} of images[{first.index}] "
                + (
                    "(the same file listed twice)"
                    if same
                    else f"({first.file_name!r}): annotations of id {iid} are ambiguous"
                ),
                image_id=iid,
                file_name=fn,
            )
        if fn in files_seen and files_seen[fn] != iid:
            rep.add(
                "duplicate_file_name",
                f"also listed as image id {files_seen[fn]}",
                image_id=iid,
                file_name=fn,
            )
        files_seen.setdefault(fn, iid)

        path: Path | None
        try:
            path = safe_join(root, fn, where=f"image id {iid}")
        except SegbenchError as e:
            base = _base_name(fn)
            cand = root / base if base not in ("", ".", "..") else None
            fact.rename_to = base if cand is not None and cand.is_file() else None
            msg = str(e).split(": ", 1)[-1]
            if fact.rename_to:
                msg += f" ({base!r} is in the image folder: fix=true renames it)"
            rep.add("unsafe_file_name", msg, image_id=iid, file_name=fn)
            path = cand if fact.rename_to else None
            if path is None:
                fact.status = "unsafe"

        size_state, json_hw = _json_size(im)
        if path is not None:
            status, msg, oriented, stored = _inspect_image(path, read_pixels=read_images)
            if status != "ok":
                fact.status = status
                rep.add(f"{status}_image", msg, image_id=iid, file_name=fn)
            else:
                fact.actual_hw = oriented
                if size_state == "missing":
                    fact.size_ok = False
                    rep.add(
                        "missing_size",
                        f"no width/height; the file is {oriented[1]}x{oriented[0]} (WxH)",
                        image_id=iid,
                        file_name=fn,
                    )
                elif size_state == "invalid":
                    fact.size_ok = False
                    rep.add(
                        "size_mismatch",
                        f"width/height {im.get('width')!r}x{im.get('height')!r} are not positive integers; "
                        f"the file is {oriented[1]}x{oriented[0]} (WxH)",
                        image_id=iid,
                        file_name=fn,
                    )
                elif json_hw not in (oriented, stored):
                    fact.size_ok = False
                    rep.add(
                        "size_mismatch",
                        f"the JSON says {json_hw[1]}x{json_hw[0]} (WxH) but the file is "
                        f"{oriented[1]}x{oriented[0]}",
                        image_id=iid,
                        file_name=fn,
                    )
        if iid not in first_by_id:
            first_by_id[iid] = k
            eff_hw[iid] = json_hw if (fact.size_ok and json_hw) else (fact.actual_hw or json_hw)

    # -- annotations ----------------------------------------------------------------------------------
    seen_ann: set = set()
    per_image: Counter = Counter()
    crowd_issues: list[Issue] = []
    n_valid = n_crowd = 0
    cat_usage: Counter = Counter()
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            rep.add("malformed_entry", f"annotations[{k}] is not an object: {str(ann)[:120]}")
            continue
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        aid_ok = _valid_id(aid)
        show_aid = aid if aid_ok else None
        fn = images[first_by_id[iid]].get("file_name") if _hashable(iid) and iid in first_by_id else None
        if not aid_ok:
            rep.add("malformed_entry", f"annotations[{k}] has no valid id ({aid!r})", image_id=iid)
        elif aid in seen_ann:
            rep.add(
                "duplicate_ann_id",
                f"annotations[{k}] repeats id {aid}",
                image_id=iid,
                ann_id=aid,
                file_name=fn,
            )
        if aid_ok:
            seen_ann.add(aid)
        if not _valid_id(iid):
            rep.add("malformed_entry", f"annotations[{k}] has no valid image_id ({iid!r})", ann_id=show_aid)
            continue
        if iid not in first_by_id:
            rep.add("unknown_image", f"image_id {iid} is not in 'images'", image_id=iid, ann_id=show_aid)
            continue
        if not (_hashable(cid) and cid in cat_names):
            rep.add(
                "unknown_category",
                f"category_id {cid!r} is not in 'categories' (ids {sorted(cat_names)[:10]})",
                image_id=iid,
                ann_id=show_aid,
                file_name=fn,
            )
            continue
        cat_usage[cid] += 1
        hw = eff_hw.get(iid)
        if hw is None:  # no size in the JSON and no readable file: reported with the image
            continue
        a = _analyse_annotation(ann, hw, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
        for kind, msg in a.problems:
            issue = Issue(kind, KINDS[kind].severity, msg, iid, show_aid, fn)
            (crowd_issues if kind == "crowd_object" else rep.issues).append(issue)
        if not a.has_error:
            n_valid += 1
            if ann.get("iscrowd"):
                n_crowd += 1
            else:
                per_image[iid] += 1

    if n_valid and n_crowd == n_valid:
        rep.add(
            "all_crowd",
            f"all {n_valid} usable annotations are iscrowd=1: training and evaluation would ignore them all",
        )
    else:
        rep.issues.extend(crowd_issues)
    if 0 in cat_names:
        rep.add(
            "category_id_zero",
            f"category 0 {cat_names[0]!r} is used by {cat_usage[0]} annotation(s)",
        )
    if max_dets:
        for iid, n in per_image.items():
            if n > max_dets:
                rep.add(
                    "too_many_objects",
                    f"{n} objects > max_dets={max_dets}",
                    image_id=iid,
                    file_name=images[first_by_id[iid]].get("file_name"),
                )
    return rep


# --------------------------------------------------------------------------------------------------
# The fix
# --------------------------------------------------------------------------------------------------
def fixes_log_path(ann_file: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """``<stem>.fixes.log`` beside the fixed JSON."""
    return Path(out_file).with_name(f"{Path(ann_file).stem}.fixes.log")


def _repair_annotation(
    ann: dict, hw: tuple[int, int], *, crowd_to_zero: bool, box_iou: float, crowd_max_fraction: float
) -> tuple[dict | None, list[str]]:
    """A corrected copy of one annotation and what changed, or (None, [why]) when it must go."""
    a = _analyse_annotation(ann, hw, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
    kinds = {k for k, _ in a.problems}
    msgs = dict(reversed(a.problems))  # first message of each kind
    new, notes = dict(ann), []
    h, w = hw
    for fatal in ("rle_size_mismatch", "empty_mask"):
        if fatal in kinds:
            return None, [msgs[fatal]]
    if a.rle is None and not a.box_only:
        why = next((m for k, m in a.problems if KINDS[k].severity == ERROR), "unusable segmentation")
        return None, [why]
    if a.parts is not None:
        raw_parts = [ann["segmentation"]] if a.flat_polygon else ann["segmentation"]
        if a.flat_polygon or len(a.parts) != len(raw_parts):
            new["segmentation"] = [list(p) for p in a.parts]
            if a.flat_polygon:
                notes.append("flat polygon wrapped in a list")
            if len(a.parts) != len(raw_parts):
                notes.append(
                    f"dropped {len(raw_parts) - len(a.parts)} bad polygon part(s) ({msgs['bad_polygon']})"
                )
    if a.rle is not None:
        mb = [round(float(v), 2) for v in mask_utils.toBbox(a.rle)]
        if a.bbox is None or kinds & {"bad_box", "box_mask_mismatch"}:
            new["bbox"] = mb
            was = _fmt_box(a.bbox) if a.bbox is not None else repr(ann.get("bbox"))
            notes.append(f"bbox {was} -> {_fmt_box(mb)} (the mask's box)")
        elif "box_outside_image" in kinds:
            new["bbox"] = _clip_box(a.bbox, h, w)
            notes.append(f"bbox {_fmt_box(a.bbox)} clipped to {_fmt_box(new['bbox'])}")
        area = a.area
    else:  # box only
        if "bad_box" in kinds:
            return None, [msgs["bad_box"]]
        if "box_outside_image" in kinds:
            new["bbox"] = _clip_box(a.bbox, h, w)
            notes.append(f"bbox {_fmt_box(a.bbox)} clipped to {_fmt_box(new['bbox'])}")
        area = float(new["bbox"][2] * new["bbox"][3])
    if "bad_area" in kinds:
        new["area"] = area
        notes.append(f"area {ann.get('area')!r} -> {area:g}")
    if ann.get("iscrowd") and (crowd_to_zero or a.single_crowd):
        new["iscrowd"] = 0
        notes.append(f"iscrowd {ann.get('iscrowd')!r} -> 0")
    again = _analyse_annotation(new, hw, box_iou=box_iou, crowd_max_fraction=crowd_max_fraction)
    if again.has_error:  # defensive: a repair must leave nothing the check calls an error
        return None, ["still invalid after repair: " + "; ".join(m for _, m in again.problems)]
    return new, notes


def fix_dataset(
    ann_file: str | os.PathLike,
    report: CheckReport,
    out_file: str | os.PathLike | None = None,
    *,
    box_iou: float = 0.7,
    crowd_max_fraction: float = 0.25,
) -> tuple[Path, list[str]]:
    """Write a corrected copy of ``ann_file`` and a log of every change (see the module docstring).

    Parameters
    ----------
    ann_file : path
        The checked COCO JSON (left untouched).
    report : CheckReport
        What :func:`check_dataset` found in this very file (its image facts are reused: no image is read
        again).
    out_file : path, optional
        Default ``<stem>.fixed.json`` beside ``ann_file``. The log is ``<stem>.fixes.log`` beside it.

    Returns
    -------
    (Path, list of str)
        The fixed JSON and one line per change, with ids.

    Raises
    ------
    SegbenchError
        When ``out_file`` is ``ann_file``, the report is of another file or of an older version of it,
        or the file is not COCO JSON at all.
    """
    ann_file = Path(ann_file)
    out = Path(out_file) if out_file is not None else ann_file.with_name(f"{ann_file.stem}.fixed.json")
    if out.resolve() == ann_file.resolve():
        raise SegbenchError(f"refusing to overwrite the original {ann_file}; write the fixed JSON elsewhere")
    if Path(report.ann_file).resolve() != ann_file.resolve():
        raise SegbenchError(f"the report is of {report.ann_file}, not of {ann_file}; check {ann_file} first")
    raw, data, why = _read_raw(ann_file)
    if hashlib.sha256(raw).hexdigest() != report.sha256:
        raise SegbenchError(f"{ann_file} changed since it was checked; check it again before fixing")
    if data is None:
        raise SegbenchError(f"cannot fix {ann_file}: {why}; re-export the annotations")
    changes: list[str] = []

    # -- categories -----------------------------------------------------------------------------------
    cats, cat_names = [], {}
    for k, c in enumerate(data["categories"]):
        cid = c.get("id") if isinstance(c, dict) else None
        if not (isinstance(cid, int) and not isinstance(cid, bool)):
            changes.append(f"dropped categories[{k}] {str(c)[:80]}: no integer id")
            continue
        if cid in cat_names:
            changes.append(
                f"dropped category {cid} {c.get('name')!r} (categories[{k}]): duplicate id; its annotations "
                f"now count as {cat_names[cid]!r}"
            )
            continue
        cat_names[cid] = c.get("name", cid)
        cats.append(c)
    if 0 in cat_names:
        changes.append(
            f"note: category 0 {cat_names[0]!r} left alone (legal COCO; remove it if it is background)"
        )

    # -- images ---------------------------------------------------------------------------------------
    facts = report.image_facts
    if len(facts) != len(data["images"]):
        raise SegbenchError(f"the report does not match {ann_file}; check it again before fixing")
    files_by_id: dict = defaultdict(set)
    for f in facts:
        if f.status != "malformed":
            files_by_id[f.image_id].add(f.file_name)
    kept_images, hw_by_id, dropped_ids = [], {}, {}
    for f, im in zip(facts, data["images"], strict=True):
        where = f"image {f.image_id} {f.file_name!r}"
        if f.status == "malformed":
            changes.append(f"dropped images[{f.index}] {str(im)[:80]}: no id or file_name")
            continue
        if len(files_by_id[f.image_id]) > 1:
            changes.append(
                f"dropped {where}: id {f.image_id} names several files (its annotations are ambiguous)"
            )
            dropped_ids[f.image_id] = "its image id names several files"
            continue
        if f.image_id in hw_by_id:
            changes.append(f"dropped images[{f.index}] ({where}): the same image listed again")
            continue
        if f.status in ("missing", "unreadable", "unsafe"):
            what = {
                "missing": "file not found",
                "unreadable": "unreadable file",
                "unsafe": "unsafe file_name",
            }
            changes.append(f"dropped {where} and its annotations: {what[f.status]}")
            dropped_ids.setdefault(f.image_id, f"its image was dropped ({what[f.status]})")
            continue
        new = dict(im)
        if f.rename_to:
            new["file_name"] = f.rename_to
            changes.append(f"{where}: file_name -> {f.rename_to!r}")
        if not f.size_ok and f.actual_hw:
            h, w = f.actual_hw
            was = (
                "no width/height"
                if _json_size(im)[0] == "missing"
                else f"{im.get('width')!r}x{im.get('height')!r}"
            )
            changes.append(f"{where}: {was} -> {w}x{h} (WxH, from the file)")
            new["height"], new["width"] = h, w
        _, json_hw = _json_size(new)
        hw = json_hw or f.actual_hw
        if hw is None:
            changes.append(f"dropped {where}: its size is unknown")
            dropped_ids.setdefault(f.image_id, "its image was dropped (size unknown)")
            continue
        hw_by_id[f.image_id] = hw
        kept_images.append(new)
    seen_files: dict = {}
    for im in kept_images:
        first = seen_files.setdefault(im["file_name"], im["id"])
        if first != im["id"]:
            changes.append(
                f"note: image {im['id']} {im['file_name']!r} left alone although image {first} names the "
                "same file; merge them by hand"
            )

    # -- annotations ----------------------------------------------------------------------------------
    anns = data.get("annotations", [])
    all_crowd = any(i.kind == "all_crowd" for i in report.issues)
    int_ids = [a["id"] for a in anns if isinstance(a, dict) and isinstance(a.get("id"), int)]
    next_id = max(int_ids, default=0) + 1
    used: set = set()
    kept_anns = []
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            changes.append(f"dropped annotations[{k}]: not an object")
            continue
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        where = f"annotation {aid} (annotations[{k}], image {iid})"
        if not (_valid_id(iid) and iid in hw_by_id):
            why = dropped_ids.get(iid, "unknown image id") if _hashable(iid) else "unknown image id"
            changes.append(f"dropped {where}: {why}")
            continue
        if not (_hashable(cid) and cid in cat_names):
            changes.append(f"dropped {where}: unknown category id {cid!r}")
            continue
        new, notes = _repair_annotation(
            ann,
            hw_by_id[iid],
            crowd_to_zero=all_crowd,
            box_iou=box_iou,
            crowd_max_fraction=crowd_max_fraction,
        )
        if new is None:
            changes.append(f"dropped {where}: {notes[0]}")
            continue
        if not _valid_id(aid) or aid in used:
            new["id"] = next_id
            changes.append(
                f"{where}: id {aid!r} -> {next_id} ({'duplicate' if _valid_id(aid) else 'missing'} id)"
            )
            next_id += 1
        used.add(new["id"])
        changes.extend(f"{where}: {n}" for n in notes)
        kept_anns.append(new)

    data = {**data, "images": kept_images, "annotations": kept_anns, "categories": cats}
    try:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, out)
        log_file = fixes_log_path(ann_file, out)
        log_file.write_text(
            f"# segbench data check fix=true: {ann_file} -> {out}, {len(changes)} line(s)\n"
            + "".join(c + "\n" for c in changes),
            encoding="utf-8",
        )
    except OSError as e:
        raise SegbenchError(f"cannot write the fixed dataset beside {ann_file}: {e}") from None
    log.info("wrote %s (%d change(s), log %s)", out, len(changes), log_file)
    return out, changes
