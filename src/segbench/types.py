"""Core value types shared by every part of segbench (numpy only, no torch).

Every method — the learned model and each classical baseline — is a *segmenter*: a callable
``image (H, W, 3) uint8 -> Instances``. Ground truth is an :class:`Instances` too, so one piece of
evaluation code scores them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from pycocotools import mask as mask_utils


class SegbenchError(Exception):
    """A problem with the user's data, config or files, worded for the user (no traceback shown)."""


class BoxFormat(str, Enum):
    """The layout of a box. segbench keeps boxes as ``XYXY`` internally; COCO JSON uses ``XYWH``."""

    XYXY = "xyxy"  # x1, y1, x2, y2 (exclusive corner), pixels
    XYWH = "xywh"  # x, y, width, height, pixels (COCO)


def convert_boxes(boxes: np.ndarray, src: BoxFormat, dst: BoxFormat) -> np.ndarray:
    """Convert ``(N, 4)`` boxes between formats. Returns a new float array.

    >>> convert_boxes(np.array([[1, 2, 3, 4]]), BoxFormat.XYWH, BoxFormat.XYXY).tolist()
    [[1.0, 2.0, 4.0, 6.0]]
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    src, dst = BoxFormat(src), BoxFormat(dst)
    if src == dst:
        return b
    if src == BoxFormat.XYWH:
        b[:, 2:] += b[:, :2]
    else:
        b[:, 2:] -= b[:, :2]
    return b


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """Encode ``(N, H, W)`` boolean/uint8 masks as COCO compressed RLE (``counts`` as str)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


def rles_to_masks(rles: Sequence[dict], image_size: tuple[int, int]) -> np.ndarray:
    """Decode COCO RLEs to a ``(N, H, W)`` bool array."""
    h, w = image_size
    if len(rles) == 0:
        return np.zeros((0, h, w), dtype=bool)
    return mask_utils.decode(list(rles)).transpose(2, 0, 1).astype(bool)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``XYXY`` boxes of ``(N, H, W)`` masks (exclusive right/bottom); zeros for empty masks."""
    masks = np.asarray(masks, dtype=bool)
    n = len(masks)
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    y1 = np.argmax(rows, axis=1)
    y2 = h - np.argmax(rows[:, ::-1], axis=1)
    x1 = np.argmax(cols, axis=1)
    x2 = w - np.argmax(cols[:, ::-1], axis=1)
    boxes[:] = np.stack([x1, y1, x2, y2], axis=1)
    boxes[~nonempty] = 0
    return boxes


@dataclass
class Instances:
    """The instances of one image: ground truth or predictions.

    Masks are held either dense (``masks``) or as COCO RLE (``rles``) — whichever the producer has —
    and converted on demand, so that an image with hundreds of objects need not hold hundreds of
    full-size arrays.

    Attributes
    ----------
    image_size : (H, W)
    boxes : float32 (N, 4), ``BoxFormat.XYXY`` in pixels.
    labels : int64 (N,), contiguous class labels ``1..K`` (0 is background, never used). Class-agnostic
        producers (the baselines) use 1 for every instance.
    scores : float32 (N,) or None (ground truth).
    masks : bool (N, H, W) or None.
    rles : list of N COCO compressed RLE dicts or None.
    iscrowd : bool (N,): crowd regions (ground truth only); ignored by matching, never used as targets.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    masks: np.ndarray | None = None
    rles: list[dict] | None = None
    iscrowd: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.iscrowd is None:
            self.iscrowd = np.zeros(n, dtype=bool)
        else:
            self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if self.masks is not None:
            self.masks = np.asarray(self.masks)
            if self.masks.dtype != bool:
                self.masks = self.masks.astype(bool)
            if self.masks.ndim != 3 or self.masks.shape[1:] != self.image_size:
                raise ValueError(
                    f"masks must have shape (N, {self.image_size[0]}, {self.image_size[1]}), got {self.masks.shape}"
                )
        for name in ("labels", "scores", "masks", "rles", "iscrowd"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"Instances: {name} has {len(v)} entries but boxes has {n}")

    @classmethod
    def empty(cls, image_size: tuple[int, int], *, with_scores: bool = False) -> Instances:
        h, w = image_size
        return cls(
            image_size=(h, w),
            boxes=np.zeros((0, 4), np.float32),
            labels=np.zeros(0, np.int64),
            scores=np.zeros(0, np.float32) if with_scores else None,
            masks=np.zeros((0, h, w), bool),
        )

    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> Instances:
        """Instances from ``(N, H, W)`` masks; boxes are the masks' tight boxes, labels default to 1."""
        masks = np.asarray(masks, dtype=bool)
        n = len(masks)
        return cls(
            image_size=masks.shape[1:],
            boxes=masks_to_boxes(masks),
            labels=np.ones(n, np.int64) if labels is None else labels,
            scores=scores,
            masks=masks,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def get_masks(self) -> np.ndarray:
        """Dense ``(N, H, W)`` bool masks (decoded from RLE when needed, not cached)."""
        if self.masks is not None:
            return self.masks
        if self.rles is not None:
            return rles_to_masks(self.rles, self.image_size)
        raise ValueError("these Instances have no masks")

    def get_rles(self) -> list[dict]:
        """COCO compressed RLEs (encoded from dense masks when needed, then cached)."""
        if self.rles is None:
            if self.masks is None:
                raise ValueError("these Instances have no masks")
            self.rles = masks_to_rles(self.masks)
        return self.rles

    @property
    def has_masks(self) -> bool:
        return self.masks is not None or self.rles is not None

    def areas(self) -> np.ndarray:
        """Mask areas in pixels (float64, (N,))."""
        if len(self) == 0:
            return np.zeros(0)
        if self.masks is not None:
            return self.masks.reshape(len(self), -1).sum(axis=1).astype(np.float64)
        rles = self.get_rles()
        # pycocotools 2.0.11 sizes an internal uint8 array by the list length: > 255 masks overflow.
        return np.concatenate(
            [np.asarray(mask_utils.area(rles[i : i + 255]), np.float64) for i in range(0, len(rles), 255)]
        )

    def select(self, keep: np.ndarray | Sequence[int] | Sequence[bool]) -> Instances:
        """A subset, by boolean mask or indices."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            idx = np.flatnonzero(keep)
        else:
            idx = keep.astype(np.int64).reshape(-1)
        return Instances(
            image_size=self.image_size,
            boxes=self.boxes[idx],
            labels=self.labels[idx],
            scores=None if self.scores is None else self.scores[idx],
            masks=None if self.masks is None else self.masks[idx],
            rles=None if self.rles is None else [self.rles[i] for i in idx],
            iscrowd=self.iscrowd[idx],
            extra=dict(self.extra),
        )


#: Every method, learned or classical: an ``(H, W, 3) uint8`` RGB image in, :class:`Instances` out.
Segmenter = Callable[[np.ndarray], Instances]
