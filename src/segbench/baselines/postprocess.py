"""Shared post-processing of the classical baselines: foreground map -> labelled regions -> Instances.

Every baseline produces a boolean foreground map; the functions here turn it into instances the same
way for all of them (connected components, optional distance-transform watershed split of touching
objects, minimum area, top-``max_instances`` by score) and compute the per-region proxy scores
(vectorised with :func:`numpy.bincount`; no Python loop over pixels).

Label images are ``int32 (H, W)`` arrays with 0 for background and ``1..n`` for the regions.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed

from segbench.types import Instances

logger = logging.getLogger(__name__)

__all__ = [
    "boundary_scores",
    "contrast_scores",
    "instances_from_labels",
    "label_regions",
    "percentile_u8",
    "region_means",
    "regions_from_foreground",
    "remove_small_regions",
    "split_touching_regions",
]


def label_regions(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (4-connectivity) of a boolean ``(H, W)`` map.

    Returns
    -------
    labels : int32 (H, W)
        0 for background, ``1..n`` for the components.
    n : int
    """
    labels, n = ndimage.label(np.asarray(foreground, dtype=bool))
    return labels.astype(np.int32, copy=False), int(n)


def remove_small_regions(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """Drop regions with fewer than ``min_area`` pixels and renumber the rest ``1..n`` (order kept).

    >>> lab = np.array([[1, 1, 0, 2], [1, 0, 0, 3]], np.int32)
    >>> out, n = remove_small_regions(lab, 2)
    >>> n, out.tolist()
    (1, [[1, 1, 0, 0], [1, 0, 0, 0]])
    """
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    new_ids = np.cumsum(keep, dtype=np.int32) * keep
    return new_ids.astype(np.int32)[labels], int(keep.sum())


def split_touching_regions(labels: np.ndarray, *, min_distance: int) -> tuple[np.ndarray, int]:
    """Split touching objects with a watershed on the distance transform.

    Markers are the peaks of the Euclidean distance to the background (at least ``min_distance``
    pixels apart, found per region); the watershed of the negated distance, restricted to the
    foreground, divides each region between its markers. A region without a peak is kept whole.

    Parameters
    ----------
    labels : int32 (H, W)
        Regions to split (0 = background).
    min_distance : int
        Smallest distance in pixels between two markers; objects narrower than about twice this are
        not split.

    Returns
    -------
    labels : int32 (H, W), n : int
        The split regions, numbered ``1..n``.
    """
    fg = labels > 0
    if not fg.any():
        return labels, 0
    dist = ndimage.distance_transform_edt(fg)
    coords = peak_local_max(dist, min_distance=int(min_distance), labels=labels, exclude_border=False)
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1, dtype=np.int32)
    split = watershed(-dist, markers, mask=fg).astype(np.int32, copy=False)
    missing = fg & (split == 0)
    if missing.any():  # regions that got no marker stay whole
        split[missing] = labels[missing] + len(coords)
    split, _, _ = relabel_sequential(split)
    return split.astype(np.int32, copy=False), int(split.max())


def regions_from_foreground(
    foreground: np.ndarray, *, split_touching: bool, min_distance: int, min_area: int
) -> tuple[np.ndarray, int]:
    """Foreground map -> labelled instances: components, optional split, minimum area.

    Small regions are removed before splitting (so noise costs nothing) and again after it.

    Parameters
    ----------
    foreground : bool (H, W)
    split_touching : bool
        Split touching objects with :func:`split_touching_regions`.
    min_distance : int
        Marker spacing for the split.
    min_area : int
        Regions with fewer pixels are dropped.

    Returns
    -------
    labels : int32 (H, W), n : int
    """
    labels, n = label_regions(foreground)
    if n:
        labels, n = remove_small_regions(labels, min_area)
    if n and split_touching:
        labels, n = split_touching_regions(labels, min_distance=min_distance)
        labels, n = remove_small_regions(labels, min_area)
    return labels, n


def region_means(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values (H, W)`` over each region ``1..n`` of ``labels``; float64 ``(n,)`` (0 if empty)."""
    flat = labels.ravel()
    sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n + 1)[1 : n + 1]
    counts = np.bincount(flat, minlength=n + 1)[1 : n + 1]
    return sums / np.maximum(counts, 1)


def percentile_u8(grey: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100, lower value) of a uint8 image, from its histogram."""
    cdf = np.cumsum(np.bincount(grey.ravel(), minlength=256))
    return float(np.searchsorted(cdf, q / 100.0 * cdf[-1], side="left"))


def contrast_scores(labels: np.ndarray, n: int, grey: np.ndarray, *, ring_width: int = 3) -> np.ndarray:
    """Score = |mean inside - mean of the surrounding background ring| / image dynamic range.

    The ring is the background (label 0) within ``ring_width`` pixels (Chebyshev distance) of the
    region; a region with no background around it is compared with the whole background, and one
    in an image without background scores 0. The dynamic range is the 99th minus the 1st percentile
    of ``grey`` (at least 1), so the score is in [0, 1].

    Parameters
    ----------
    labels : int32 (H, W)
    n : int
    grey : uint8 (H, W)

    Returns
    -------
    float32 (n,)
    """
    inside = region_means(labels, grey, n)
    size = 2 * int(ring_width) + 1
    near = ndimage.grey_dilation(labels, size=(size, size), mode="nearest")
    ring = np.where(labels == 0, near, 0)
    flat_ring = ring.ravel()
    ring_sum = np.bincount(flat_ring, weights=grey.ravel().astype(np.float64), minlength=n + 1)[1 : n + 1]
    ring_count = np.bincount(flat_ring, minlength=n + 1)[1 : n + 1]
    bg = labels == 0
    bg_mean = float(grey[bg].mean()) if bg.any() else np.nan
    outside = np.where(ring_count > 0, ring_sum / np.maximum(ring_count, 1), bg_mean)
    contrast = np.abs(inside - outside)
    contrast = np.where(np.isfinite(contrast), contrast, 0.0)
    dyn = max(percentile_u8(grey, 99) - percentile_u8(grey, 1), 1.0)
    return np.clip(contrast / dyn, 0.0, 1.0).astype(np.float32)


def boundary_scores(labels: np.ndarray, n: int, strength: np.ndarray) -> np.ndarray:
    """Score = mean edge strength on each region's inner boundary / 99th percentile of the edge map.

    The inner boundary is the region's pixels with a 3x3 neighbour of another label (the image border
    does not count as a boundary); a region without boundary uses its mean over the whole region.

    Parameters
    ----------
    labels : int32 (H, W)
    n : int
    strength : float (H, W), >= 0
        The edge map.

    Returns
    -------
    float32 (n,), in [0, 1]
    """
    lo = ndimage.grey_erosion(labels, size=(3, 3), mode="nearest")
    hi = ndimage.grey_dilation(labels, size=(3, 3), mode="nearest")
    boundary = (labels > 0) & ((lo != labels) | (hi != labels))
    on_b = np.where(boundary, labels, 0)
    b_mean = region_means(on_b, strength, n)
    b_count = np.bincount(on_b.ravel(), minlength=n + 1)[1 : n + 1]
    mean = np.where(b_count > 0, b_mean, region_means(labels, strength, n))
    norm = float(np.percentile(strength, 99))
    if not norm > 0:
        norm = float(strength.max())
    if not norm > 0:
        return np.zeros(n, np.float32)
    return np.clip(mean / norm, 0.0, 1.0).astype(np.float32)


def instances_from_labels(labels: np.ndarray, n: int, scores: np.ndarray, *, max_instances: int) -> Instances:
    """Instances (best score first, at most ``max_instances``) from a label image and region scores.

    Parameters
    ----------
    labels : int32 (H, W)
        Regions ``1..n``.
    n : int
    scores : float (n,)
        Score of region ``i + 1`` at index ``i``; clipped to [0, 1].
    max_instances : int

    Returns
    -------
    Instances
        bool masks ``(N, H, W)``, XYXY boxes, labels all 1, float32 scores.
    """
    h, w = labels.shape
    if n == 0:
        return Instances.empty((h, w), with_scores=True)
    scores = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0), 0.0, 1.0)
    order = np.argsort(-scores, kind="stable")[:max_instances]
    slices = ndimage.find_objects(labels, max_label=n)
    masks = np.zeros((len(order), h, w), dtype=bool)
    for j, i in enumerate(order):  # one pass per instance (<= max_instances), inside its box only
        sl = slices[i]
        if sl is not None:
            masks[j][sl] = labels[sl] == i + 1
    return Instances.from_masks(masks, scores=scores[order].astype(np.float32))
