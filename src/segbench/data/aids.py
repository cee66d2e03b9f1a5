"""Training aids of the data pipeline: copy-paste of instances and repeat-factor sampling.

- :func:`paste_instances` is Simple Copy-Paste (Ghiasi et al., CVPR 2021) without its scale jitter: a random
  subset of another train image's instances is pasted, pixels and masks, onto the image; the masks they
  cover are cut away from the image's own instances (an instance hidden below ``min_area`` pixels is dropped
  later with the others, and boxes are computed from the masks after it), so masks, boxes and labels stay
  in sync. Written here on NumPy: albumentations and torchvision's ``transforms.v2`` have no transform that
  reads a second sample of the dataset.
- :func:`repeat_factors` is the LVIS rule (Gupta et al., 2019; detectron2's
  ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency``): a class in a fraction ``f_c`` of
  the images gets ``r_c = max(1, sqrt(t / f_c))``, an image the largest ``r_c`` of its classes.
  :class:`RepeatFactorSampler` draws each image ``floor(r)`` or ``ceil(r)`` times per epoch (stochastic
  rounding), shuffled; written here because torch has no sampler for it (``WeightedRandomSampler`` draws
  with replacement and cannot keep every image once per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from segbench.types import SegbenchError


def _window(size: int, room: int, rng: np.random.Generator) -> int:
    return int(rng.integers(0, max(room - size, 0) + 1))


def paste_instances(
    image: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    source_image: np.ndarray,
    source_masks: np.ndarray,
    source_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    max_objects: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste a random subset of the source's instances onto ``image``.

    Parameters
    ----------
    image, masks, labels
        The image ``uint8[H, W, 3]``, its instance masks ``uint8[N, H, W]`` and labels ``[N]``.
    source_image, source_masks, source_labels
        Another image of the train split, any size: a random window of ``H x W`` of it (all of it when it
        is smaller, placed at a random offset) gives the objects.
    rng
        Draws the window, the offset and the subset.
    max_objects
        At most this many objects pasted (``None``: a random number from 1 to all of them).

    Returns
    -------
    image, masks, labels
        New arrays: the pasted objects' masks and labels come last.
    """
    h, w = image.shape[:2]
    hs, ws = source_image.shape[:2]
    if source_masks.shape[1:] != (hs, ws) or len(source_masks) != len(source_labels):
        raise ValueError("source masks must be [N, H, W] of the source image, one label each")
    ch, cw = min(h, hs), min(w, ws)
    sy, sx = _window(h, hs, rng), _window(w, ws, rng)  # where the window starts in the source
    ty, tx = _window(hs, h, rng), _window(ws, w, rng)  # where it lands in the image (a smaller source)
    window = source_masks[:, sy : sy + ch, sx : sx + cw]
    present = np.flatnonzero(window.reshape(len(window), -1).any(axis=1)) if len(window) else np.zeros(0, int)
    if len(present) == 0:
        return image, masks, labels
    k = len(present) if max_objects is None else min(int(max_objects), len(present))
    k = int(rng.integers(1, k + 1))
    chosen = np.sort(rng.choice(present, size=k, replace=False))
    pasted = np.zeros((k, h, w), np.uint8)
    pasted[:, ty : ty + ch, tx : tx + cw] = window[chosen]
    cover = pasted.any(axis=0)
    out = image.copy()
    placed = np.zeros_like(image)
    placed[ty : ty + ch, tx : tx + cw] = source_image[sy : sy + ch, sx : sx + cw]
    out[cover] = placed[cover]
    kept = masks.copy()
    if len(kept):
        kept[:, cover] = 0
    return (
        out,
        np.concatenate([kept, pasted]).astype(np.uint8, copy=False),
        np.concatenate([np.asarray(labels), np.asarray(source_labels)[chosen]]).astype(np.int64),
    )


def repeat_factors(image_classes: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """The LVIS repeat factor of each image from the classes it holds (``[]`` for an image without objects:
    factor 1).

    >>> repeat_factors([[1], [1], [1], [2]], threshold=0.5).round(3).tolist()
    [1.0, 1.0, 1.0, 1.414]
    """
    t = float(threshold)
    if not t > 0:
        raise SegbenchError(f"data.repeat_factor_threshold must be > 0, got {threshold!r}")
    n = max(len(image_classes), 1)
    counts: dict[int, int] = {}
    for classes in image_classes:
        for c in set(classes):
            counts[c] = counts.get(c, 0) + 1
    r_class = {c: max(1.0, math.sqrt(t / (k / n))) for c, k in counts.items()}
    return np.array([max((r_class[c] for c in set(cs)), default=1.0) for cs in image_classes], np.float64)


class RepeatFactorSampler(Sampler[int]):
    """Each image ``floor(r)`` times per epoch plus once more with probability ``r - floor(r)``, shuffled;
    the draw depends on ``seed`` and the epoch only (a resumed run draws the same epochs). Lightning calls
    :meth:`set_epoch`; without it (a wrapper that does not pass it on) each pass counts as the next epoch."""

    def __init__(self, factors: Sequence[float], seed: int = 0) -> None:
        self.factors = np.asarray(factors, np.float64)
        if self.factors.ndim != 1 or len(self.factors) == 0 or (self.factors < 1).any():
            raise ValueError("repeat factors must be a non-empty list of numbers >= 1")
        self.seed = int(seed)
        self.epoch = 0
        self._drawn: tuple[int, list[int]] | None = None
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def _indices(self) -> list[int]:
        if self._drawn is None or self._drawn[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            whole = np.floor(self.factors)
            extra = torch.rand(len(self.factors), generator=g).numpy() < (self.factors - whole)
            reps = (whole + extra).astype(np.int64)
            idx = np.repeat(np.arange(len(self.factors)), reps)
            order = torch.randperm(len(idx), generator=g).numpy()
            self._drawn = (self.epoch, idx[order].tolist())
        return self._drawn[1]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if not self._epoch_set:
            self.epoch += 1  # nobody sets the epoch: the next pass draws the next one
        self._epoch_set = False
        return iter(indices)
