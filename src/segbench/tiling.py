"""Large images by tiles: any segmenter run on overlapping windows, its instances merged across the seams.

A segmenter sees the image it is given at the resolution it works at: Mask R-CNN resizes every image to
its test scale (``min_size`` / ``max_size``), so a 4,000 px scan given whole shrinks 5x and its small
objects vanish; the classical baselines work per pixel, so their memory grows with the image. Cut into
tiles, each window runs at about the model's native scale, and memory is bounded by the tile:

* :func:`tile_grid` — the windows: at most ``tile`` px a side, neighbours sharing ``overlap`` px, the last
  window of each row and column flush with the border (so no window is a thin sliver);
* :func:`tile_mask_to_rle` — a window's mask as COCO RLE of the *whole* image, written from the window
  alone (no full-image array);
* :class:`TiledSegmenter` / :func:`tiled` — a segmenter run window by window, its instances shifted into
  image coordinates and merged where the windows overlap (:func:`merge_tile_instances`);
* :func:`auto_tile` — the ``tile=auto`` rule: whether an image is tiled, and the tile side.

**The seam rule** (:func:`merge_tile_instances`). Two instances from *different* windows with the *same*
label are the same object when, in the region their two windows share (where both windows saw the same
pixels), their masks have an IoU >= ``merge_iou`` (0.5), or when the intersection of their masks covers
>= ``merge_ios`` (0.8) of the smaller mask. The first catches an object seen whole in both windows (a
duplicate inside the overlap) and an object larger than the overlap, cut by both windows, whose two
parts agree in the shared strip; the second catches an object seen whole in one window and cut by the
border of the other (the cut part lies inside the whole one). Merges chain (union-find): an object
spanning three windows becomes one instance. A merged instance's mask is the union of its parts
(``pycocotools.mask.merge``), its box the union mask's box (``mask.toBbox``), its score the **highest**
of its parts' scores (the window that saw most of the object usually scores it best; an area-weighted
mean would let a low-scored sliver of the object pull the score down). Instances of the same window are
never merged with each other (the segmenter already decided they are two), nor instances of different
labels.

**Overlap.** Choose ``overlap`` larger than the objects: then every object lies wholly inside at least
one window and its cut parts in the other windows merge into it. An object that is larger than the
overlap is cut in every window that holds it; it is still merged when the parts agree in the shared
strip, but each part is what the segmenter made of a cut object (a model may miss or shorten a sliver).
With ``overlap=0`` neighbouring windows share no pixel: nothing can be compared, so **an object crossing
a seam comes out as two instances**, one per window, each cut at the seam. ``overlap=null`` (default)
is 1/8 of the tile.

**tile=auto** (:func:`auto_tile`). With a model that resizes its input (``min_size`` / ``max_size``),
an image is tiled when the model would shrink it by more than 2x: torchvision's
``GeneralizedRCNNTransform`` scale ``min(min_size / min(H, W), max_size / max(H, W))`` is below
:data:`AUTO_MIN_SCALE` (0.5). The tile side is then ``min(min_size, max_size)``, the side at which a
square window is resized by exactly 1.0, so the windows run at the image's native resolution. Without a
model scale — the baselines, and models built with ``keep_size=true`` (no resize) — an image is tiled
when it has more than :data:`AUTO_MAX_PIXELS` pixels (2048 x 2048), in windows of
:data:`AUTO_BASELINE_TILE` (1024) px: their memory grows with the pixels, not their accuracy with the
scale. Images at or below those limits run whole.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from segbench.types import BoxFormat, Instances, SegbenchError, Segmenter, convert_boxes

log = logging.getLogger(__name__)

__all__ = [
    "AUTO_BASELINE_TILE",
    "AUTO_MAX_PIXELS",
    "AUTO_MIN_SCALE",
    "MERGE_IOS",
    "MERGE_IOU",
    "TiledSegmenter",
    "auto_tile",
    "check_tiling",
    "merge_tile_instances",
    "model_size",
    "tile_grid",
    "tile_mask_to_rle",
    "tiled",
]

#: ``tile=auto`` with a model: tile when the model's resize scale of the whole image is below this.
AUTO_MIN_SCALE = 0.5
#: ``tile=auto`` without a model scale (baselines, ``keep_size`` models): tile above this many pixels ...
AUTO_MAX_PIXELS = 2048 * 2048
#: ... in windows of this side.
AUTO_BASELINE_TILE = 1024
#: ``overlap=None``: the tile side divided by this.
OVERLAP_DIVISOR = 8
#: Two instances of neighbouring windows are one object at this mask IoU in their shared region ...
MERGE_IOU = 0.5
#: ... or when their intersection covers this share of the smaller mask.
MERGE_IOS = 0.8

#: A window ``(y0, x0, y1, x1)``: rows ``y0..y1-1`` and columns ``x0..x1-1`` of the image.
Tile = tuple[int, int, int, int]
#: ``segment(images) -> instances`` (one per image), optionally ``segment(images, profile=timer)``.
BatchSegment = Callable[..., list[Instances]]


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_tiling(tile: Any, overlap: Any = None) -> tuple[int | str | None, int | None]:
    """The ``tile`` and ``overlap`` options, checked.

    Parameters
    ----------
    tile : None, int or "auto"
        ``None``: whole images; a positive int: the tile side in pixels; ``"auto"``: :func:`auto_tile`.
    overlap : None or int
        Pixels shared by neighbouring tiles, ``0 <= overlap < tile``; ``None``: 1/8 of the tile.

    Returns
    -------
    (tile, overlap)
        ``tile`` as an int, ``"auto"`` or None; ``overlap`` as an int or None.

    Raises
    ------
    SegbenchError
        Naming the key, the value received and how to fix it.

    Examples
    --------
    >>> check_tiling(512, 64)
    (512, 64)
    >>> check_tiling("AUTO")
    ('auto', None)
    """
    if isinstance(tile, str):
        text = tile.strip().lower()
        if text == "auto":
            tile = "auto"
        elif text in ("null", "none", ""):
            tile = None
        elif text.isdigit():
            tile = int(text)
    if tile is not None and tile != "auto" and (not _is_int(tile) or int(tile) < 1):
        raise SegbenchError(
            f"tile={tile!r} is not valid: pass the tile side in pixels (a positive integer, e.g. tile=1024), "
            "tile=auto (tile only the images the model would shrink by more than 2x, or, for a baseline, "
            "images above 2048 x 2048 pixels) or tile=null (whole images)"
        )
    if tile is not None and tile != "auto":
        tile = int(tile)
    if overlap is not None:
        if isinstance(overlap, str) and overlap.strip().isdigit():
            overlap = int(overlap.strip())
        if not _is_int(overlap) or int(overlap) < 0:
            raise SegbenchError(
                f"overlap={overlap!r} is not valid: pass the pixels neighbouring tiles share, an integer >= 0 "
                "larger than your objects (e.g. overlap=64), or overlap=null (1/8 of the tile)"
            )
        overlap = int(overlap)
        if isinstance(tile, int) and overlap >= tile:
            raise SegbenchError(
                f"overlap={overlap} must be smaller than tile={tile}: the tiles would not advance; pass a "
                f"smaller overlap (e.g. overlap={tile // OVERLAP_DIVISOR}) or a larger tile"
            )
        if tile is None:
            log.warning("overlap=%d has no effect without tile= (images run whole)", overlap)
    return tile, overlap


def _overlap_for(tile: int, overlap: int | None) -> int:
    return tile // OVERLAP_DIVISOR if overlap is None else overlap


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------
def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """The first pixel of each tile along one axis of ``length`` pixels."""
    if length <= tile:
        return [0]
    # every start whose tile ends before the border, then one tile flush with it (it overlaps the one
    # before by at least ``overlap``: the gap to the border was at most one stride)
    return [*range(0, length - tile, tile - overlap), length - tile]


def tile_grid(height: int, width: int, *, tile: int, overlap: int) -> list[Tile]:
    """The windows that cover an ``height x width`` image, row by row.

    Windows are ``tile x tile`` (or the image's side where it is smaller). Along each axis they start
    every ``tile - overlap`` px, so neighbours share exactly ``overlap`` px, except the last window of each
    row and column: it is moved back to end at the border (flush), and shares at least ``overlap`` px with
    the one before it. Every pixel is in at least one window; no window is narrower than ``tile``.

    Parameters
    ----------
    height, width : int
        The image size, > 0.
    tile : int
        The window side, > 0.
    overlap : int
        ``0 <= overlap < tile``.

    Returns
    -------
    list of (y0, x0, y1, x1)
        Rows ``y0..y1-1``, columns ``x0..x1-1``.

    Raises
    ------
    SegbenchError
        A size or option that is not a positive integer, or ``overlap >= tile`` (naming ``tile`` /
        ``overlap``).

    Examples
    --------
    >>> tile_grid(100, 60, tile=50, overlap=10)
    [(0, 0, 50, 50), (0, 10, 50, 60), (40, 0, 90, 50), (40, 10, 90, 60), (50, 0, 100, 50), (50, 10, 100, 60)]
    """
    for name, v in (("height", height), ("width", width)):
        if not _is_int(v) or int(v) < 1:
            raise SegbenchError(f"cannot tile an image of {name} {v!r}: the image size must be positive")
    tile_, overlap_ = check_tiling(tile, overlap)
    if not isinstance(tile_, int):
        raise SegbenchError(
            f"tile={tile!r}: tile_grid needs the tile side in pixels (auto_tile() chooses one)"
        )
    overlap_ = _overlap_for(tile_, overlap_)
    ys, xs = _axis_starts(int(height), tile_, overlap_), _axis_starts(int(width), tile_, overlap_)
    return [(y, x, min(y + tile_, height), min(x + tile_, width)) for y in ys for x in xs]


def model_size(build: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(min_size, max_size)`` that a model resizes its input to at test time, from the arguments of
    :func:`segbench.models.maskrcnn.build_maskrcnn` (a checkpoint's ``build_kwargs(card)``, an export's
    ``card["build"]``); ``None`` for ``keep_size`` (no resize). A multi-scale ``min_size`` list tests at
    its last value, as torchvision does.

    >>> model_size({"min_size": [640, 800], "max_size": 1333, "keep_size": False})
    (800, 1333)
    """
    if build.get("keep_size"):
        return None
    lo = build["min_size"]
    if isinstance(lo, Sequence) and not isinstance(lo, str):
        lo = lo[-1]
    return int(lo), int(build["max_size"])


def auto_tile(height: int, width: int, *, model_size: tuple[int, int] | None = None) -> int | None:
    """The ``tile=auto`` rule: the tile side for an ``height x width`` image, or None to run it whole.

    With ``model_size = (min_size, max_size)`` (a model that resizes its input): torchvision's test scale
    ``s = min(min_size / min(H, W), max_size / max(H, W))``; the image is tiled when ``s <``
    :data:`AUTO_MIN_SCALE` (the model would shrink it by more than 2x), in tiles of ``min(min_size,
    max_size)``, which the model resizes by exactly 1.0. Without (baselines, ``keep_size`` models): tiled
    when ``H * W >`` :data:`AUTO_MAX_PIXELS`, in tiles of :data:`AUTO_BASELINE_TILE`.

    Examples
    --------
    >>> auto_tile(4000, 3000, model_size=(800, 1333))  # s = min(800/3000, 1333/4000) = 0.27
    800
    >>> auto_tile(1200, 1600, model_size=(800, 1333))  # s = min(0.67, 0.83) = 0.67: whole
    >>> auto_tile(4000, 4000), auto_tile(2048, 2048)
    (1024, None)
    """
    h, w = int(height), int(width)
    if model_size is not None:
        lo, hi = model_size
        scale = min(lo / min(h, w), hi / max(h, w))
        return min(lo, hi) if scale < AUTO_MIN_SCALE else None
    return AUTO_BASELINE_TILE if h * w > AUTO_MAX_PIXELS else None


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------
def tile_mask_to_rle(mask: np.ndarray, *, offset: tuple[int, int], image_size: tuple[int, int]) -> dict:
    """A window's mask as the COCO compressed RLE of the whole image, without a full-image array.

    Parameters
    ----------
    mask : bool (h, w)
        The mask inside the window.
    offset : (y0, x0)
        The window's top-left pixel in the image.
    image_size : (H, W)

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}``, equal to ``pycocotools.mask.encode`` of the mask pasted into
        an ``H x W`` zero image.

    Examples
    --------
    >>> from pycocotools import mask as mask_utils
    >>> m = np.array([[0, 1], [1, 1]], bool)
    >>> full = np.zeros((4, 5), np.uint8, order="F"); full[1:3, 2:4] = m
    >>> tile_mask_to_rle(m, offset=(1, 2), image_size=(4, 5))["counts"] == (
    ...     mask_utils.encode(full)["counts"].decode())
    True
    """
    # Written here, not left to pycocotools: its encode() takes the whole image as one array, which is
    # what tiling exists to avoid (4,000 x 4,000 px x hundreds of objects). COCO RLE runs down the
    # columns (column-major), so each window column is one contiguous stretch of the image's run order,
    # starting at (x0 + column) * H + y0; the runs are found in the window, offset, joined where one
    # column's run reaches the next column's start (windows of full height), and compressed by pycocotools.
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {m.shape}")
    h, w = int(image_size[0]), int(image_size[1])
    y0, x0 = int(offset[0]), int(offset[1])
    th, tw = m.shape
    if y0 < 0 or x0 < 0 or y0 + th > h or x0 + tw > w:
        raise ValueError(f"a {th} x {tw} mask at (y0={y0}, x0={x0}) does not fit in a {h} x {w} image")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if len(rows) == 0:
        counts = [h * w]
    else:  # work in the mask's bounding box only
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = m[r0:r1, c0:c1]
        by_column = np.zeros((c1 - c0, r1 - r0 + 2), np.int8)  # a 0 above and below each column
        by_column[:, 1:-1] = crop.T
        col, row = np.nonzero(np.diff(by_column, axis=1))  # column by column: +1 run start, -1 run end
        pos = (x0 + c0 + col).astype(np.int64) * h + (y0 + r0) + row
        starts, ends = pos[0::2], pos[1::2]
        joined = ends[:-1] == starts[1:]  # a run that ends where the next one starts is one run
        starts = starts[np.concatenate([[True], ~joined])]
        ends = ends[np.concatenate([~joined, [True]])]
        edges = np.empty(2 * len(starts) + 2, np.int64)
        edges[0], edges[1:-1:2], edges[2:-1:2], edges[-1] = 0, starts, ends, h * w
        counts = np.diff(edges).tolist()
        if counts[-1] == 0:  # the mask reaches the last pixel: encode() ends on the run of ones
            counts.pop()
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _areas(rles: Sequence[dict]) -> np.ndarray:
    # pycocotools 2.0.11 overflows on lists of more than 255 RLEs in area() (see Instances.areas)
    if not rles:
        return np.zeros(0)
    return np.concatenate(
        [np.asarray(mask_utils.area(list(rles[i : i + 255])), np.float64) for i in range(0, len(rles), 255)]
    )


def _boxes_of(rles: Sequence[dict]) -> np.ndarray:
    """Tight ``XYXY`` boxes of RLE masks."""
    if not rles:
        return np.zeros((0, 4))
    return convert_boxes(np.asarray(mask_utils.toBbox(list(rles))), BoxFormat.XYWH, BoxFormat.XYXY)


def _ascii(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


# --------------------------------------------------------------------------------------------------
# Merging across seams
# --------------------------------------------------------------------------------------------------
def _intersecting(starts: Sequence[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Ordered pairs ``(a, b)`` of tile indices along one axis whose intervals share a pixel (a == b too)."""
    spans = [(s, min(s + tile, length)) for s in starts]
    return [
        (a, b) for a, (sa, ea) in enumerate(spans) for b, (sb, eb) in enumerate(spans) if sa < eb and sb < ea
    ]


def _reaching(idx: np.ndarray, mask_boxes: np.ndarray, areas: np.ndarray, window: Tile) -> np.ndarray:
    """The instances of ``idx`` with a non-empty mask whose box reaches into ``window``."""
    wy0, wx0, wy1, wx1 = window
    b = mask_boxes[idx]
    keep = (areas[idx] > 0) & (b[:, 0] < wx1) & (b[:, 2] > wx0) & (b[:, 1] < wy1) & (b[:, 3] > wy0)
    return idx[keep]


def merge_tile_instances(
    tiles: Sequence[Tile],
    found: Sequence[dict],
    image_size: tuple[int, int],
    *,
    merge_iou: float = MERGE_IOU,
    merge_ios: float = MERGE_IOS,
    neighbours: Sequence[tuple[int, int]] | None = None,
) -> Instances:
    """The instances of every window as one image's :class:`Instances`, merged across the seams.

    Parameters
    ----------
    tiles : list of (y0, x0, y1, x1)
        The windows.
    found : list of dict
        One per window: ``labels`` int (N,), ``scores`` float (N,) or None, ``boxes`` float (N, 4) XYXY in
        image coordinates, ``rles``: N COCO RLEs of the whole image (:func:`tile_mask_to_rle`).
    image_size : (H, W)
    merge_iou, merge_ios : float
        The seam rule (module docstring): same label, different windows, and mask IoU inside the two
        windows' shared region >= ``merge_iou`` or intersection / smaller mask >= ``merge_ios``.
    neighbours : list of (i, j), optional
        The pairs of windows ``i < j`` that share pixels (default: found from ``tiles``).

    Returns
    -------
    Instances
        RLE masks, best score first. A merged instance has the union mask, the union mask's box and the
        highest score of its parts; the others keep the segmenter's box (shifted) and score.
    """
    h, w = image_size
    tile_of = np.repeat(np.arange(len(found)), [len(f["labels"]) for f in found])
    n = len(tile_of)
    if n == 0:
        return Instances(
            image_size, np.zeros((0, 4)), np.zeros(0, np.int64), scores=np.zeros(0, np.float32), rles=[]
        )
    labels = np.concatenate([np.asarray(f["labels"], np.int64).reshape(-1) for f in found])
    has_scores = all(f.get("scores") is not None for f in found)
    scores = (
        np.concatenate([np.asarray(f["scores"], np.float64).reshape(-1) for f in found])
        if has_scores
        else None
    )
    boxes = np.concatenate([np.asarray(f["boxes"], np.float64).reshape(-1, 4) for f in found])
    rles = [r for f in found for r in f["rles"]]
    areas = _areas(rles)
    mask_boxes = _boxes_of(rles)
    by_tile = [np.flatnonzero(tile_of == t) for t in range(len(tiles))]

    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if neighbours is None:
        neighbours = [
            (i, j)
            for i in range(len(tiles))
            for j in range(i + 1, len(tiles))
            if tiles[i][0] < tiles[j][2]
            and tiles[j][0] < tiles[i][2]
            and tiles[i][1] < tiles[j][3]
            and tiles[j][1] < tiles[i][3]
        ]
    for i, j in neighbours:
        if not len(by_tile[i]) or not len(by_tile[j]):
            continue
        win = (
            max(tiles[i][0], tiles[j][0]),
            max(tiles[i][1], tiles[j][1]),
            min(tiles[i][2], tiles[j][2]),
            min(tiles[i][3], tiles[j][3]),
        )
        p, q = (_reaching(by_tile[t], mask_boxes, areas, win) for t in (i, j))
        if not len(p) or not len(q):
            continue
        same = labels[p][:, None] == labels[q][None, :]
        if not same.any():
            continue
        wy0, wx0, wy1, wx1 = win
        window = tile_mask_to_rle(np.ones((wy1 - wy0, wx1 - wx0), bool), offset=(wy0, wx0), image_size=(h, w))
        pw = [mask_utils.merge([rles[k], window], intersect=True) for k in p]
        qw = [mask_utils.merge([rles[k], window], intersect=True) for k in q]
        iou = np.asarray(mask_utils.iou(pw, qw, [0] * len(qw)), np.float64).reshape(len(p), len(q))
        # iou() against a "crowd" mask divides by the first mask's area: intersection / area(p in window)
        cover = np.asarray(mask_utils.iou(pw, qw, [1] * len(qw)), np.float64).reshape(len(p), len(q))
        inter = cover * _areas(pw)[:, None]  # every common pixel lies in the window
        smaller = np.minimum(areas[p][:, None], areas[q][None, :])
        hit = same & ((iou >= merge_iou) | (inter >= merge_ios * smaller - 1e-9))
        for a, b in zip(*np.nonzero(hit), strict=True):
            ra, rb = find(int(p[a])), find(int(q[b]))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    groups: dict[int, list[int]] = {}
    for k in range(n):
        groups.setdefault(find(k), []).append(k)
    out_boxes, out_labels, out_scores, out_rles = [], [], [], []
    for members in groups.values():
        k = members[0]
        out_labels.append(labels[k])
        if len(members) == 1:
            out_boxes.append(boxes[k])
            out_rles.append(_ascii(rles[k]))
            out_scores.append(scores[k] if scores is not None else 0.0)
            continue
        union = _ascii(mask_utils.merge([rles[m] for m in members], intersect=False))
        out_rles.append(union)
        out_boxes.append(_boxes_of([union])[0])
        out_scores.append(max(scores[m] for m in members) if scores is not None else 0.0)
    if len(groups) < n:
        log.debug("merged %d instance(s) of %d tiles into %d", n, len(tiles), len(groups))
    order = (
        np.argsort(-np.asarray(out_scores), kind="stable") if scores is not None else np.arange(len(groups))
    )
    return Instances(
        image_size=(h, w),
        boxes=np.asarray(out_boxes)[order],
        labels=np.asarray(out_labels)[order],
        scores=np.asarray(out_scores)[order] if scores is not None else None,
        rles=[out_rles[i] for i in order],
    )


# --------------------------------------------------------------------------------------------------
# The tiled segmenter
# --------------------------------------------------------------------------------------------------
class TiledSegmenter:
    """A segmenter run window by window on images that need it (:func:`tile_grid`), with its instances
    shifted into the image and merged across the seams (:func:`merge_tile_instances`).

    Memory is bounded by the window: each window's masks are converted to whole-image RLE
    (:func:`tile_mask_to_rle`) as soon as the window is done, and no full-image mask array is made.
    Images that fit in one window (or that ``tile="auto"`` leaves whole) run whole, as they would
    without tiling.

    Parameters
    ----------
    segment : callable
        ``segment(images) -> list of Instances`` (a batch of windows; ``segment(images, profile=timer)``
        when the run is profiled), e.g. ``MaskRCNNSegmenter.predict_batch``. :func:`tiled` wraps a
        one-image segmenter.
    tile : int or "auto"
        The window side in pixels, or ``"auto"`` (:func:`auto_tile`, decided per image).
    overlap : int or None
        Pixels shared by neighbouring windows; ``None``: 1/8 of the tile.
    model_size : (min_size, max_size) or None
        The model's test resize, for ``tile="auto"`` (None: a baseline or a ``keep_size`` model).
    merge_iou, merge_ios : float
        The seam rule (module docstring).
    tiles_per_call : int
        Windows per ``segment`` call (a batch; windows of one image all have the same size).
    name : str

    Examples
    --------
    >>> from scipy import ndimage
    >>> def blobs(image):
    ...     lab, n = ndimage.label(image[..., 0] > 127)
    ...     return Instances.from_masks(lab[None] == np.arange(1, n + 1)[:, None, None], scores=np.ones(n))
    >>> img = np.zeros((100, 100, 3), np.uint8); img[40:60, 10:90] = 255  # one bar across every seam
    >>> out = tiled(blobs, tile=50, overlap=20)(img)
    >>> len(out), out.areas().tolist(), out.boxes.tolist()
    (1, [1600.0], [[10.0, 40.0, 90.0, 60.0]])
    """

    def __init__(
        self,
        segment: BatchSegment,
        *,
        tile: int | str,
        overlap: int | None = None,
        model_size: tuple[int, int] | None = None,
        merge_iou: float = MERGE_IOU,
        merge_ios: float = MERGE_IOS,
        tiles_per_call: int = 1,
        name: str = "tiled",
    ) -> None:
        tile, overlap = check_tiling(tile, overlap)
        if tile is None:
            raise SegbenchError(
                "TiledSegmenter needs tile= (a side in pixels or auto); tile=null runs images whole"
            )
        if tile == "auto":  # the tile auto_tile() will choose is known now: check the overlap against it
            side = min(model_size) if model_size is not None else AUTO_BASELINE_TILE
            if overlap is not None and overlap >= side:
                raise SegbenchError(
                    f"overlap={overlap} must be smaller than the tile that tile=auto chooses here ({side} px: "
                    f"{'the model min_size' if model_size is not None else 'the baselines'}); pass a smaller "
                    f"overlap (e.g. overlap={side // OVERLAP_DIVISOR}) or tile=N"
                )
        for key, v in (("merge_iou", merge_iou), ("merge_ios", merge_ios)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < float(v) <= 1.0:
                raise SegbenchError(f"{key}={v!r} is not valid: expected a number in (0, 1]")
        if not _is_int(tiles_per_call) or tiles_per_call < 1:
            raise SegbenchError(
                f"tiles_per_call (predict's batch_size) must be a positive integer, got {tiles_per_call!r}"
            )
        self.segment = segment
        self.tile, self.overlap, self.model_size = tile, overlap, model_size
        self.merge_iou, self.merge_ios = float(merge_iou), float(merge_ios)
        self.tiles_per_call = int(tiles_per_call)
        self.name = name

    def describe(self) -> str:
        """One line for the logs: ``tiles of 512 px, overlap 64 px`` / ``tile=auto (...)``."""
        overlap = "1/8 of the tile" if self.overlap is None else f"{self.overlap} px"
        if self.tile == "auto":
            rule = (
                f"model scale < {AUTO_MIN_SCALE}: tiles of {min(self.model_size)} px"
                if self.model_size is not None
                else f"images over {AUTO_MAX_PIXELS:,} px: tiles of {AUTO_BASELINE_TILE} px"
            )
            return f"tile=auto ({rule}), overlap {overlap}"
        return f"tiles of {self.tile} px, overlap {overlap}"

    def tile_for(self, height: int, width: int) -> int | None:
        """The window side an ``height x width`` image is cut into, or None: it runs whole."""
        side = auto_tile(height, width, model_size=self.model_size) if self.tile == "auto" else self.tile
        if side is None or (height <= side and width <= side):
            return None
        return int(side)

    def _run(self, images: list[np.ndarray], profile) -> list[Instances]:
        out: list[Instances] = []
        for k in range(0, len(images), self.tiles_per_call):
            chunk = images[k : k + self.tiles_per_call]
            out += self.segment(chunk) if profile is None else self.segment(chunk, profile=profile)
        return out

    def predict_batch(self, images: Sequence[np.ndarray], *, profile=None) -> list[Instances]:
        """Predict a batch of ``(H, W, 3) uint8`` images: each image that needs it by windows, the others
        whole (together, in calls of ``tiles_per_call``). ``profile`` (a ``StageTimer``) is passed to
        ``segment`` and gets ``tiles``: cutting, shifting, encoding and merging."""
        out: list[Instances | None] = [None] * len(images)
        whole = []
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            side = self.tile_for(h, w)
            if side is None:
                whole.append(i)
            else:
                out[i] = self._tiled(image, side, profile)
        if whole:
            for i, inst in zip(whole, self._run([images[i] for i in whole], profile), strict=True):
                out[i] = inst
        return out  # type: ignore[return-value]

    def __call__(self, image: np.ndarray) -> Instances:
        return self.predict_batch([image])[0]

    def _tiled(self, image: np.ndarray, side: int, profile) -> Instances:
        h, w = image.shape[:2]
        overlap = _overlap_for(side, self.overlap)
        ys, xs = _axis_starts(h, side, overlap), _axis_starts(w, side, overlap)
        tiles = [(y, x, min(y + side, h), min(x + side, w)) for y in ys for x in xs]
        rows, cols = _intersecting(ys, side, h), _intersecting(xs, side, w)
        neighbours = sorted(
            {
                (ra * len(xs) + ca, rb * len(xs) + cb)
                for ra, rb in rows
                for ca, cb in cols
                if ra * len(xs) + ca < rb * len(xs) + cb
            }
        )
        log.debug("%d x %d image: %d tiles of %d px, overlap %d px", h, w, len(tiles), side, overlap)
        spent = 0.0
        found: list[dict] = []
        for k in range(0, len(tiles), self.tiles_per_call):
            chunk = tiles[k : k + self.tiles_per_call]
            crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for y0, x0, y1, x1 in chunk]
            results = self._run(crops, profile)
            t0 = time.perf_counter()
            found += [_to_image(inst, t, (h, w)) for inst, t in zip(results, chunk, strict=True)]
            spent += time.perf_counter() - t0
        t0 = time.perf_counter()
        merged = merge_tile_instances(
            tiles, found, (h, w), merge_iou=self.merge_iou, merge_ios=self.merge_ios, neighbours=neighbours
        )
        spent += time.perf_counter() - t0
        if profile is not None:
            profile.add("tiles", spent)
        return merged


def _to_image(inst: Instances, tile: Tile, image_size: tuple[int, int]) -> dict:
    """One window's instances in image coordinates: shifted boxes, whole-image RLEs (one mask at a time)."""
    y0, x0, y1, x1 = tile
    if tuple(inst.image_size) != (y1 - y0, x1 - x0):
        raise ValueError(
            f"the segmenter returned instances of a {inst.image_size[0]} x {inst.image_size[1]} image for a "
            f"{y1 - y0} x {x1 - x0} tile"
        )
    if len(inst) and not inst.has_masks:
        raise ValueError("tiling needs masks: the segmenter returned instances without masks")
    rles = []
    for k in range(len(inst)):
        if inst.masks is not None:
            m = inst.masks[k]
        else:
            m = mask_utils.decode(inst.rles[k]).astype(bool)
        rles.append(tile_mask_to_rle(m, offset=(y0, x0), image_size=image_size))
    return {
        "labels": inst.labels,
        "scores": inst.scores,
        "boxes": inst.boxes.astype(np.float64) + np.array([x0, y0, x0, y0], np.float64),
        "rles": rles,
    }


def tiled(
    segment: Segmenter,
    *,
    tile: int | str,
    overlap: int | None = None,
    model_size: tuple[int, int] | None = None,
    merge_iou: float = MERGE_IOU,
    merge_ios: float = MERGE_IOS,
    tiles_per_call: int = 1,
) -> TiledSegmenter:
    """``segment`` (``image -> Instances``) run by tiles: a segmenter of the same kind.

    A segmenter with a ``predict_batch`` method (the model) gets ``tiles_per_call`` windows per call; its
    ``name`` and ``get_params`` (a baseline's fitted parameters) are kept. The other arguments are those
    of :class:`TiledSegmenter`.
    """
    batch = getattr(segment, "predict_batch", None)
    if callable(batch):
        run: BatchSegment = batch
    else:

        def run(images: list[np.ndarray], profile=None) -> list[Instances]:
            with profile.stage("run") if profile is not None else contextlib.nullcontext():
                return [segment(im) for im in images]

    out = TiledSegmenter(
        run,
        tile=tile,
        overlap=overlap,
        model_size=model_size,
        merge_iou=merge_iou,
        merge_ios=merge_ios,
        tiles_per_call=tiles_per_call,
        name=str(getattr(segment, "name", type(segment).__name__)),
    )
    if hasattr(segment, "get_params"):
        out.get_params = segment.get_params  # type: ignore[attr-defined]
    return out
