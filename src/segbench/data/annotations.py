"""The annotation rulebook: decode a COCO annotation's mask, and name what is wrong with it.

Everything that reads COCO annotations goes through these pure functions (numpy and pycocotools only):
the loader (:class:`~segbench.data.coco.CocoDataset`) drops what :func:`check_annotation` finds
unusable, the doctor (:mod:`segbench.data.doctor`) reports every problem it finds, statistics and the
result scorer decode masks with :func:`decode_annotation` / :func:`decode_segmentation`. A problem has one
name, its *kind*, wherever it is seen: the loader's drop reasons are kinds of :data:`KINDS`.

A COCO ``segmentation`` is one of

* a list of polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixel coordinates (several parts are one
  object; parts with fewer than 3 points or an odd number of coordinates are left out, a flat polygon
  ``[x1, y1, ...]`` is read as one part, everything is clipped to the image);
* an uncompressed RLE ``{"size": [h, w], "counts": [run, run, ...]}`` (column-major runs, background
  first), as written for ``iscrowd=1`` objects;
* a compressed RLE ``{"size": [h, w], "counts": "..."}`` (pycocotools' string encoding);
* nothing (``None`` or ``[]``): the box ``[x, y, width, height]`` is the mask.

Problem kinds
-------------

========================= ======== ==================================================== =====================
kind                      severity what                                                 ``fix=true`` does
========================= ======== ==================================================== =====================
malformed_json            error    not JSON, not an object, no images/categories list    nothing (refuses)
malformed_entry           error    a record without id / file_name / image_id ...       drops it (annotation
                                                                                        without id: new id)
unsafe_file_name          error    file_name absolute outside the dataset, or ``..``    renames to the one
                                   leaving the image folder                             file of its base
                                                                                        name in the image
                                                                                        folder, else drops
                                                                                        the image
missing_image             error    the image file does not exist                        as unsafe_file_name:
                                                                                        one file of its base
                                                                                        name: renamed; else
                                                                                        drops image + anns
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
indirect_file_name        warning  file_name found, but not relative to the image        rewrites it relative
                                   folder (backslashes, ``file://``, relative to the    to the image folder
                                   dataset or JSON folder, absolute inside the dataset)
unused_category           warning  a category no annotation uses: not trained as a      leaves it (logged)
                                   class (unless ``data.keep_empty_classes=true``)
duplicate_category_name   warning  two category ids with one name                       merges them into the
                                                                                        first id
area_mismatch             warning  ``area`` far from the mask's pixel area              sets the mask area
                                   (:data:`AREA_TOLERANCE`, :data:`AREA_SLACK`)
untrained_category        warning  (loader only) annotation of a category that is not   leaves it
                                   a class of the training split: dropped
leak_same_file            warning  (across splits) one file in train and val/test        leaves it
leak_same_pixels          warning  (across splits) the same decoded pixels in train     leaves it
                                   and val/test under another name or format
leak_near_duplicate       warning  (across splits) perceptual hashes closer than the     leaves it
                                   near-duplicate threshold
========================= ======== ==================================================== =====================

``missing_image`` and ``unsafe_file_name`` are repaired when the file can be found: relative to the dataset
folder or the JSON's folder, or by its base name under the image folder. One candidate: ``fix=true``
rewrites ``file_name``; several: they are listed and nothing is guessed (the image is dropped).

Errors make the loader refuse the file, drop annotations or train and score on wrong targets; warnings are
legal COCO that is often a mistake. The loader drops an annotation only when no mask can be made of it
(:attr:`AnnotationCheck.unusable`): it reads the good parts of a polygon, wraps a flat one and ignores a
wrong ``bbox`` (boxes are recomputed from the masks), as ``fix=true`` would.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Kind:
    """A problem kind: its severity (:data:`ERROR` or :data:`WARNING`), a one-line title and a fix hint."""

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
        "name images relative to the image folder (fix=true uses the one file of that base name in the "
        "image folder when there is one, else drops the image)",
    ),
    "missing_image": Kind(
        ERROR,
        "image file not found",
        "copy the file into the image folder or point data.image_root at the right folder (fix=true "
        "rewrites file_name when one file of its base name is in the image folder, else drops the image "
        "and its annotations)",
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
    "indirect_file_name": Kind(
        WARNING,
        "file_name not relative to the image folder",
        "the loader finds the file (Windows backslashes, file://, a name relative to the dataset or JSON "
        "folder, an absolute path inside the dataset); fix=true rewrites file_name relative to the image "
        "folder so that other tools find it too",
    ),
    "unused_category": Kind(
        WARNING,
        "category that no annotation uses",
        "it keeps its id but is not trained as a class (data.keep_empty_classes=true trains it anyway); "
        "label objects of it or remove it (fix=true leaves it)",
    ),
    "duplicate_category_name": Kind(
        WARNING,
        "two category ids with one name",
        "the model would learn two classes for one thing: merge them (fix=true gives their annotations "
        "the first id and drops the other categories)",
    ),
    "area_mismatch": Kind(
        WARNING,
        "area far from the mask's pixel area",
        "COCO evaluation sorts objects into small / medium / large by 'area': set it to the mask's pixel "
        "count (fix=true does)",
    ),
    "untrained_category": Kind(
        WARNING,
        "annotation of a category that is not a class of the training split",
        "the training split has no annotation of this category, so the model has no such class: label "
        "some training images of it, or set data.keep_empty_classes=true",
    ),
    "leak_same_file": Kind(
        WARNING,
        "one image file in train and in an evaluation split",
        "the evaluation split's scores are inflated (the model saw the image in training): remove the "
        "image from one of the two splits",
    ),
    "leak_same_pixels": Kind(
        WARNING,
        "the same pixels in train and in an evaluation split",
        "the same picture under another name or format: the evaluation split's scores are inflated; "
        "remove it from one of the two splits",
    ),
    "leak_near_duplicate": Kind(
        WARNING,
        "near-duplicate images in train and in an evaluation split",
        "a recompressed, resized, brightened copy or the next frame of the same scene: the evaluation "
        "split's scores are inflated; keep the pair in one split (look at the two files first)",
    ),
}

#: kinds that ``fix=true`` leaves as they are (it only notes some of them in its log)
LEFT_ALONE = frozenset(
    {
        "duplicate_file_name",
        "category_id_zero",
        "no_segmentation",
        "too_many_objects",
        "unused_category",
        "untrained_category",
        "leak_same_file",
        "leak_same_pixels",
        "leak_near_duplicate",
    }
)

#: kinds only a look at several splits at once finds (:func:`segbench.data.doctor.check_leakage`)
CROSS_SPLIT = frozenset({"leak_same_file", "leak_same_pixels", "leak_near_duplicate"})

#: ``area`` and the mask's pixel count may differ by this fraction of the larger of the two (plus
#: :data:`AREA_SLACK`) before ``area_mismatch`` is reported. Exporters that write the polygon's own area
#: (the shoelace formula) differ from the rasterised mask by up to ~11 % for objects of radius >= 6 px and
#: up to ~80 % below 3 px (measured on random polygons); dsb2018 and nuts differ by 0. A factor of two
#: finds areas in wrong units, of another object or of the whole image, and not the polygon-vs-pixels
#: difference, nor the common habit of writing the box's area (a disc fills 79 % of its box).
AREA_TOLERANCE = 0.5
#: absolute slack in pixels added to the tolerance (tiny objects: rasterisation changes a few pixels)
AREA_SLACK = 10.0

#: a box may reach this far past the border (rounding in exporters) before it is reported
BOX_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    """One problem of one record: its kind (a key of :data:`KINDS`) and a sentence saying what is wrong.

    >>> p = Problem("bad_polygon", "polygon part 0 has 2 point(s)")
    >>> p.severity
    'error'
    >>> Problem("no_such_kind", "")
    Traceback (most recent call last):
    ...
    ValueError: unknown problem kind 'no_such_kind'; the kinds are the keys of KINDS
    """

    kind: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; the kinds are the keys of KINDS")

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity


# --------------------------------------------------------------------------------------------------
# Small predicates
# --------------------------------------------------------------------------------------------------
def is_number(v: Any) -> bool:
    """A finite int or float (not a bool).

    >>> is_number(3), is_number(2.5), is_number(True), is_number(float("nan")), is_number("3")
    (True, True, False, False, False)
    """
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_valid_id(v: Any) -> bool:
    """COCO ids are integers; non-empty strings are accepted too (pycocotools and the loader take them).

    >>> is_valid_id(7), is_valid_id("img-7"), is_valid_id(None), is_valid_id(True), is_valid_id("")
    (True, True, False, False, False)
    """
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def is_hashable(v: Any) -> bool:
    """Whether ``v`` can be a dict key (a JSON list or object cannot).

    >>> is_hashable(3), is_hashable([3])
    (True, False)
    """
    try:
        hash(v)
    except TypeError:
        return False
    return True


_PLAIN_NUMBERS = frozenset({int, float})


def _all_numbers(values: list | tuple) -> bool:
    """``all(is_number(v) for v in values)``, fast for the plain ints and floats of parsed JSON."""
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        return all(map(math.isfinite, values))
    return all(is_number(v) for v in values)


def image_entry_size(im: dict) -> tuple[str, tuple[int, int] | None]:
    """``("ok", (H, W))``, ``("missing", None)`` or ``("invalid", None)`` from a COCO image entry.

    >>> image_entry_size({"height": 32, "width": 48.0})
    ('ok', (32, 48))
    >>> image_entry_size({}), image_entry_size({"height": 0, "width": 4})
    (('missing', None), ('invalid', None))
    """
    h, w = im.get("height"), im.get("width")
    if h is None and w is None:
        return "missing", None
    if is_number(h) and is_number(w) and float(h).is_integer() and float(w).is_integer() and h > 0 and w > 0:
        return "ok", (int(h), int(w))
    return "invalid", None


def area_mismatch(area: float, mask_area: float) -> bool:
    """Whether a JSON ``area`` is far from the mask's pixel count: more than :data:`AREA_TOLERANCE` of
    the larger of the two, plus :data:`AREA_SLACK` pixels, apart.

    >>> area_mismatch(100, 90), area_mismatch(100, 30), area_mismatch(0.0012, 1500), area_mismatch(3, 9)
    (False, True, True, False)
    """
    return (
        abs(float(area) - float(mask_area)) > AREA_TOLERANCE * max(float(area), float(mask_area)) + AREA_SLACK
    )


# --------------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------------
def placeholder_category_ids(categories: Sequence[dict], used: Collection) -> set:
    """Ids of categories that only name the dataset: no annotation in ``used`` refers to them and they
    are the ``supercategory`` of every other category (Roboflow's category 0, named after the project).

    >>> cats = [{"id": 0, "name": "nuts-x", "supercategory": "none"},
    ...         {"id": 1, "name": "date", "supercategory": "nuts-x"}, {"id": 2, "name": "fig", "supercategory": "nuts-x"}]
    >>> placeholder_category_ids(cats, used={1, 2})
    {0}
    >>> placeholder_category_ids(cats, used={0, 1, 2}), placeholder_category_ids(cats[:1], used=set())
    (set(), set())
    """
    out = set()
    for c in categories:
        others = [o for o in categories if o is not c]
        if c["id"] in used or not others:
            continue
        if all(o.get("supercategory") == c.get("name") for o in others):
            out.add(c["id"])
    return out


def class_category_ids(categories: Sequence[dict], used: Collection, *, keep_empty: bool = False) -> list:
    """The ids of the categories that are trained as classes, in the order of ``categories``.

    A category no annotation uses (``used``: the category ids the annotations refer to) is not a class,
    unless ``keep_empty``; a placeholder (:func:`placeholder_category_ids`) never is.

    >>> cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    >>> class_category_ids(cats, used={1, 3}), class_category_ids(cats, used={1, 3}, keep_empty=True)
    ([1, 3], [1, 2, 3])
    """
    placeholders = placeholder_category_ids(categories, used)
    return [c["id"] for c in categories if c["id"] not in placeholders and (keep_empty or c["id"] in used)]


# --------------------------------------------------------------------------------------------------
# Boxes (COCO XYWH, in pixels)
# --------------------------------------------------------------------------------------------------
def clip_box(b: Sequence[float], h: int, w: int) -> list[float]:
    """An XYWH box clipped to an image of ``h`` x ``w`` pixels.

    >>> clip_box([40, 20, 12, 10], 32, 48)
    [40, 20, 8, 10]
    """
    x1, y1 = min(max(b[0], 0.0), w), min(max(b[1], 0.0), h)
    x2, y2 = min(max(b[0] + b[2], 0.0), w), min(max(b[1] + b[3], 0.0), h)
    return [x1, y1, x2 - x1, y2 - y1]


def format_box(b: Sequence[float]) -> str:
    """A box for messages: ``[x, y, w, h]`` with short numbers.

    >>> format_box([1.0, 2.5, 3, 4])
    '[1, 2.5, 3, 4]'
    """
    return "[" + ", ".join(f"{float(v):g}" for v in b) + "]"


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two XYWH boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _parse_box(bbox: Any) -> list[float] | None:
    """A well-formed ``[x, y, width, height]`` of finite numbers as floats, else None."""
    if isinstance(bbox, list | tuple) and len(bbox) == 4 and all(is_number(v) for v in bbox):
        return [float(v) for v in bbox]
    return None


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------
@dataclass
class PolygonParts:
    """A polygon segmentation split into the parts that can be drawn and the problems of the others."""

    parts: list[list[float]]  # the usable parts (at least 3 points, an even number of numbers), as given
    flat: bool  # a flat list of coordinates, read as one part
    problems: list[Problem]


def polygon_parts(seg: list) -> PolygonParts:
    """The usable parts of a polygon segmentation, and what is wrong with the others.

    Parameters
    ----------
    seg : list
        ``[[x1, y1, x2, y2, ...], ...]``, or one flat ``[x1, y1, ...]`` (read as one part, reported as
        ``malformed_segmentation``: pycocotools cannot read it).

    Examples
    --------
    >>> pp = polygon_parts([[0, 0, 4, 0, 4, 4, 0, 4], [1, 1, 2, 2]])
    >>> len(pp.parts), [p.kind for p in pp.problems]
    (1, ['bad_polygon'])
    >>> pp.problems[0].message
    'polygon part 1 has 2 point(s) (1 of 2 part(s) usable)'
    >>> polygon_parts([0, 0, 4, 0, 4, 4]).flat
    True
    """
    flat = bool(seg) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in seg)
    raw_parts = [seg] if flat else seg
    problems: list[Problem] = []
    if flat:
        problems.append(
            Problem(
                "malformed_segmentation",
                "a flat list of coordinates instead of a list of polygons [[x1, y1, ...]] "
                "(pycocotools cannot read it)",
            )
        )
    parts: list[list[float]] = []
    bad: list[str] = []
    for j, part in enumerate(raw_parts):
        if not isinstance(part, list | tuple) or not _all_numbers(part):
            problems.append(Problem("malformed_segmentation", f"polygon part {j} is not a list of numbers"))
        elif len(part) % 2:
            bad.append(f"part {j} has an odd number of coordinates ({len(part)})")
        elif len(part) < 6:
            bad.append(f"part {j} has {len(part) // 2} point(s)")
        else:
            parts.append(list(part))
    if bad:
        left = f"{len(parts)} of {len(raw_parts)} part(s) usable"
        problems.append(Problem("bad_polygon", "polygon " + "; ".join(bad) + f" ({left})"))
    return PolygonParts(parts, flat, problems)


def rle_string_counts(s: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``); None if malformed.

    >>> rle_string_counts("04400000P1")  # a 4x4 square in the corner of an 8x8 mask
    [0, 4, 4, 4, 4, 4, 4, 4, 36]
    >>> rle_string_counts("~") is None
    True
    """
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


def _rle_header_problem(seg: dict, h: int, w: int) -> Problem | None:
    """What is wrong with an RLE's ``size`` / ``counts`` fields (the runs themselves are not read)."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
    ):
        return Problem("malformed_segmentation", f"RLE without a valid size (got {size!r})")
    if counts is None:
        return Problem("malformed_segmentation", "RLE without counts")
    if not isinstance(counts, list | str | bytes):
        return Problem(
            "malformed_segmentation", f"RLE counts must be a list or a string, got {type(counts).__name__}"
        )
    if (size[0], size[1]) != (h, w):
        return Problem("rle_size_mismatch", f"RLE size {size[0]}x{size[1]} (HxW) but the image is {h}x{w}")
    return None


def _rle_counts_problem(seg: dict) -> Problem | None:
    """Whether an RLE's runs describe a mask of its size (reads every run: for the doctor, not the loader)."""
    (rh, rw), counts = seg["size"], seg["counts"]
    if isinstance(counts, list):
        runs = counts if all(isinstance(v, int) and not isinstance(v, bool) for v in counts) else None
    else:
        runs = rle_string_counts(counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts)
    if runs is None or any(v < 0 for v in runs) or sum(runs) != rh * rw:
        return Problem("malformed_segmentation", f"RLE counts do not describe a {rh}x{rw} (HxW) mask")
    return None


def _str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _empty_rle(h: int, w: int) -> dict:
    """The compressed RLE of an empty ``h`` x ``w`` mask.

    >>> _empty_rle(2, 3)
    {'size': [2, 3], 'counts': '6'}
    """
    return _str_counts(mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0])


def _polygons_to_rle(parts: list[list[float]], h: int, w: int) -> dict:
    """The union of polygon parts (each of at least 3 points) drawn at (h, w), clipped to the image."""
    return _str_counts(mask_utils.merge(mask_utils.frPyObjects(parts, h, w)))


def box_to_rle(bbox: Sequence[float], h: int, w: int) -> dict:
    """The mask of an XYWH box, clipped to the image, as a compressed RLE.

    >>> from pycocotools import mask as mask_utils
    >>> int(mask_utils.area(box_to_rle([40, 20, 30, 30], 32, 48)))  # 8 x 12 pixels are inside
    96
    """
    x, y, bw, bh = (float(v) for v in bbox)
    box = clip_box([x, y, bw, bh], h, w)
    if box[2] <= 0 or box[3] <= 0:
        return _empty_rle(h, w)
    return _str_counts(mask_utils.frPyObjects(np.asarray([box], dtype=np.float64), h, w)[0])


def decode_segmentation(seg: list | dict, h: int, w: int) -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a compressed RLE of (h, w).

    Parameters
    ----------
    seg : list or dict
        Polygons ``[[x1, y1, ...], ...]`` (clipped to the image; unusable parts are left out, see
        :func:`polygon_parts`; none left: an empty mask) or an RLE ``{"size": [h, w], "counts": ...}``.
    h, w : int
        The image size. An RLE must have this size.

    Returns
    -------
    dict
        ``{"size": [h, w], "counts": str}`` (pycocotools' compressed RLE, ``counts`` as text as in JSON).
        Its runs are not checked: :func:`check_annotation` does that.

    Raises
    ------
    ValueError
        For an RLE without a valid size or counts, of another size than (h, w), or a ``seg`` that is
        neither a list nor a dict.

    Examples
    --------
    >>> from pycocotools import mask as mask_utils
    >>> square = decode_segmentation([[0, 0, 4, 0, 4, 4, 0, 4]], 8, 8)
    >>> square
    {'size': [8, 8], 'counts': '04400000P1'}
    >>> int(mask_utils.area(square))
    16
    >>> decode_segmentation({"size": [8, 8], "counts": [0, 4, 4, 4, 4, 4, 4, 4, 36]}, 8, 8) == square
    True
    """
    if isinstance(seg, dict):
        problem = _rle_header_problem(seg, h, w)
        if problem is not None:
            raise ValueError(f"{problem.message}; {KINDS[problem.kind].hint}")
        if isinstance(seg["counts"], list):
            return _str_counts(mask_utils.frPyObjects({"size": [h, w], "counts": seg["counts"]}, h, w))
        return _str_counts({"size": [h, w], "counts": seg["counts"]})
    if isinstance(seg, list):
        parts = polygon_parts(seg).parts
        return _polygons_to_rle(parts, h, w) if parts else _empty_rle(h, w)
    raise ValueError(
        f"segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}; "
        + KINDS["malformed_segmentation"].hint
    )


def decode_annotation(ann: dict, h: int, w: int) -> dict:
    """One annotation's mask as a compressed RLE of (h, w): its segmentation, or else its box.

    See :func:`decode_segmentation`; an annotation without a segmentation (``None`` or ``[]``) is its
    ``bbox`` clipped to the image (:func:`box_to_rle`).

    Raises
    ------
    ValueError
        When the segmentation cannot be decoded, or there is neither a segmentation nor a bbox.

    Examples
    --------
    >>> from pycocotools import mask as mask_utils
    >>> int(mask_utils.area(decode_annotation({"segmentation": [], "bbox": [1, 1, 3, 2]}, 8, 8)))
    6
    """
    seg = ann.get("segmentation")
    if seg is None or (isinstance(seg, list) and not seg):
        bbox = _parse_box(ann.get("bbox"))
        if bbox is None:
            raise ValueError(
                f"no segmentation and no valid bbox (got {ann.get('bbox')!r}); {KINDS['bad_box'].hint}"
            )
        return box_to_rle(bbox, h, w)
    return decode_segmentation(seg, h, w)


def annotation_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """One annotation's mask as a dense ``(h, w)`` bool array (see :func:`decode_annotation`).

    >>> annotation_mask({"segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}, 3, 3).astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 0]])
    """
    return mask_utils.decode(decode_annotation(ann, h, w)).astype(bool)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def document_problem(data: Any) -> Problem | None:
    """What keeps a parsed JSON document from being a COCO instances file (``malformed_json``), if anything.

    >>> document_problem([]).message
    "a COCO file is a JSON object with 'images', 'annotations', 'categories'"
    >>> document_problem({"images": []}).message
    "missing the 'categories' list; is this a COCO instances file?"
    >>> document_problem({"images": [], "categories": []}) is None
    True
    """
    if not isinstance(data, dict):
        return Problem(
            "malformed_json", "a COCO file is a JSON object with 'images', 'annotations', 'categories'"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            return Problem("malformed_json", f"missing the '{key}' list; is this a COCO instances file?")
    if not isinstance(data.get("annotations", []), list):
        return Problem("malformed_json", "'annotations' must be a list")
    return None


def reference_problem(ann: dict, image_ids: Collection, category_ids: Collection) -> Problem | None:
    """What is wrong with the image and category an annotation refers to (``malformed_entry``,
    ``unknown_image``, ``unknown_category``), if anything.

    >>> reference_problem({"image_id": 99, "category_id": 1}, {1, 2}, {1}).message
    "image_id 99 is not in 'images'"
    >>> reference_problem({"image_id": 1, "category_id": 7}, {1, 2}, {1}).kind
    'unknown_category'
    >>> reference_problem({"category_id": 1}, {1}, {1}).kind
    'malformed_entry'
    """
    iid, cid = ann.get("image_id"), ann.get("category_id")
    if not is_valid_id(iid):
        return Problem("malformed_entry", f"no valid image_id ({iid!r})")
    if iid not in image_ids:
        return Problem("unknown_image", f"image_id {iid} is not in 'images'")
    if not (is_hashable(cid) and cid in category_ids):
        return Problem(
            "unknown_category",
            f"category_id {cid!r} is not in 'categories' (ids {sorted(category_ids)[:10]})",
        )
    return None


@dataclass
class AnnotationCheck:
    """What :func:`check_annotation` found in one annotation."""

    problems: list[Problem] = field(default_factory=list)
    unusable: Problem | None = None  # set when no mask can be made of it: the loader drops it for this
    rle: dict | None = None  # the decoded mask (compressed RLE at the image size); only with decode=True
    area: float = 0.0  # of the decoded mask
    parts: list[list[float]] | None = None  # the usable parts of a polygon segmentation
    flat_polygon: bool = False
    box_only: bool = False  # no segmentation: the box is the mask
    bbox: list[float] | None = None  # the JSON bbox when well formed
    single_crowd: bool = False  # iscrowd=1 on one ordinary connected object

    @property
    def has_error(self) -> bool:
        return any(p.severity == ERROR for p in self.problems)

    def first(self, kind: str) -> Problem | None:
        """The first problem of ``kind``, if any."""
        return next((p for p in self.problems if p.kind == kind), None)


def _polygon_geometry_problem(parts: list[list[float]], h: int, w: int) -> Problem | None:
    """``empty_mask`` for polygons that draw nothing, judged from their coordinates without drawing them
    (plain Python: this runs once per annotation when a dataset is indexed, and beats numpy on short lists)."""
    xs = [v for p in parts for v in p[0::2]]
    ys = [v for p in parts for v in p[1::2]]
    if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= w or min(ys) >= h:
        return Problem("empty_mask", f"the polygon lies entirely outside the {w}x{h} (WxH) image")
    area = 0.0
    for p in parts:  # the shoelace formula, part by part
        x, y = p[0::2], p[1::2]
        area += 0.5 * abs(sum(map(operator.mul, x, y[1:] + y[:1])) - sum(map(operator.mul, y, x[1:] + x[:1])))
    if area <= 0:
        return Problem("empty_mask", "the polygon has zero area")
    return None


def check_annotation(
    ann: dict,
    h: int,
    w: int,
    *,
    decode: bool = True,
    box_iou: float = 0.7,
    crowd_max_fraction: float = 0.25,
) -> AnnotationCheck:
    """Every problem of one annotation (a dict) on an image of ``h`` x ``w`` pixels.

    Its references (image, category: :func:`reference_problem`) and id are not looked at here.

    Parameters
    ----------
    ann : dict
        A COCO annotation.
    h, w : int
        The size of its image.
    decode : bool
        Decode the mask (``AnnotationCheck.rle``) and run the checks that need it: the runs of an RLE, an
        empty mask, the box against the mask's box, one connected object marked ``iscrowd=1``. False (the
        loader's index: nothing decoded) judges emptiness from the polygon's coordinates alone.
    box_iou : float
        A bbox whose IoU with its mask's tight box is below this (and more than 2 px off) is an error.
    crowd_max_fraction : float
        An ``iscrowd=1`` mask of one connected component covering at most this fraction of the image is
        reported as an ordinary object.

    Returns
    -------
    AnnotationCheck
        ``problems`` in the order found, ``unusable`` when no mask can be made of it.

    Examples
    --------
    >>> ann = {"segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]], "bbox": [2, 2, 8, 8], "area": 64}
    >>> c = check_annotation(ann, 32, 48)
    >>> c.problems, c.area
    ([], 64.0)
    >>> c = check_annotation({**ann, "segmentation": [[1, 1, 5, 1]]}, 32, 48)
    >>> [p.kind for p in c.problems], c.unusable.kind
    (['bad_polygon'], 'bad_polygon')
    >>> c = check_annotation({**ann, "bbox": [30, 20, 5, 5]}, 32, 48)
    >>> [p.kind for p in c.problems], c.unusable  # the loader ignores the box: it uses the mask's
    (['box_mask_mismatch'], None)
    """
    a = AnnotationCheck()
    seg = ann.get("segmentation")
    mask_ok = False  # a mask can be decoded from the segmentation

    # -- segmentation ---------------------------------------------------------------------------------
    if seg is None or (isinstance(seg, list) and not seg):
        a.box_only = True
    elif isinstance(seg, dict):
        problem = _rle_header_problem(seg, h, w)
        if problem is None and decode:
            problem = _rle_counts_problem(seg)
        if problem is not None:
            a.problems.append(problem)
            a.unusable = problem
        else:
            mask_ok = True
            if decode:
                a.rle = decode_segmentation(seg, h, w)
    elif isinstance(seg, list):
        pp = polygon_parts(seg)
        a.problems.extend(pp.problems)
        a.parts, a.flat_polygon = pp.parts, pp.flat
        if pp.parts:
            mask_ok = True
            if decode:
                a.rle = _polygons_to_rle(pp.parts, h, w)
            else:
                problem = _polygon_geometry_problem(pp.parts, h, w)
                if problem is not None:
                    a.problems.append(problem)
                    a.unusable = problem
        else:
            # a non-empty list without a usable part always has a problem: name the most specific one
            a.unusable = next((p for p in pp.problems if p.kind == "bad_polygon"), pp.problems[-1])
    else:
        problem = Problem(
            "malformed_segmentation",
            f"segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}",
        )
        a.problems.append(problem)
        a.unusable = problem
    if a.rle is not None:
        a.area = float(mask_utils.area(a.rle))
        if a.area == 0:
            problem = Problem(
                "empty_mask", "the mask is empty after clipping to the image (outside it, or of zero area)"
            )
            a.problems.append(problem)
            a.unusable = problem

    # -- box ------------------------------------------------------------------------------------------
    bbox = ann.get("bbox")
    a.bbox = _parse_box(bbox)
    box_problem = None
    if a.bbox is None:
        if mask_ok or a.box_only:
            what = "no bbox" if bbox is None else f"malformed bbox {bbox!r}"
            if a.box_only:
                what += " and no segmentation: nothing to train on"
            box_problem = Problem("bad_box", what)
    else:
        x, y, bw, bh = a.bbox
        if bw <= 0 or bh <= 0:
            box_problem = Problem("bad_box", f"bbox {format_box(a.bbox)} has zero or negative size")
        elif x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            box_problem = Problem(
                "bad_box", f"bbox {format_box(a.bbox)} is entirely outside the {w}x{h} image"
            )
        else:
            t = BOX_TOLERANCE
            if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
                a.problems.append(
                    Problem(
                        "box_outside_image", f"bbox {format_box(a.bbox)} reaches past the {w}x{h} (WxH) image"
                    )
                )
            if a.rle is not None and a.area > 0:
                mb = [float(v) for v in mask_utils.toBbox(a.rle)]
                cb = clip_box(a.bbox, h, w)
                iou = _box_iou(cb, mb)
                diff = max(abs(cb[0] - mb[0]), abs(cb[1] - mb[1]))
                diff = max(diff, abs(cb[0] + cb[2] - mb[0] - mb[2]), abs(cb[1] + cb[3] - mb[1] - mb[3]))
                if iou < box_iou and diff > 2:
                    a.problems.append(
                        Problem(
                            "box_mask_mismatch",
                            f"bbox {format_box(a.bbox)} but the mask's box is {format_box(mb)} (IoU {iou:.2f})",
                        )
                    )
    if box_problem is not None:
        a.problems.append(box_problem)
        if a.box_only:
            a.unusable = box_problem
    if a.box_only and a.bbox is not None:
        a.problems.append(
            Problem("no_segmentation", "no segmentation: the box is used as a rectangular mask")
        )

    # -- area -----------------------------------------------------------------------------------------
    area = ann.get("area")
    if not is_number(area) or area < 0:
        a.problems.append(Problem("bad_area", f"area is {area!r}"))
    elif a.rle is not None and a.area > 0 and area_mismatch(area, a.area):
        a.problems.append(Problem("area_mismatch", f"area is {area:g} but the mask has {a.area:.0f} pixels"))

    # -- crowd ----------------------------------------------------------------------------------------
    if ann.get("iscrowd") and a.rle is not None and a.area > 0:
        _, n = ndimage.label(mask_utils.decode(a.rle), structure=np.ones((3, 3), bool))
        frac = a.area / float(h * w)
        if n == 1 and frac <= crowd_max_fraction:
            a.single_crowd = True
            a.problems.append(
                Problem(
                    "crowd_object",
                    f"iscrowd=1 on one connected object of {a.area:.0f} px ({100 * frac:.1f}% of the image)",
                )
            )
    return a
