"""Intensity thresholding baselines: one global threshold, or several levels (multi-Otsu).

Both work on the grey intensity (:func:`segbench.baselines.base.to_grey`, uint8) and score each
region by its contrast with the background ring around it
(:func:`segbench.baselines.postprocess.contrast_scores`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.filters import threshold_multiotsu, threshold_otsu

from segbench.baselines import postprocess as pp
from segbench.baselines.base import (
    BaseSegmenter,
    foreground_side,
    to_grey,
)
from segbench.options import check_choice, check_float, check_int

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("mean", "otsu", "fixed")
#: multi-Otsu cost grows as 256 ** (classes - 1); 5 classes already take seconds per image.
MAX_CLASSES = 4


@dataclass
class _GreyAnalysis:
    grey: np.ndarray  # uint8 (H, W)
    polarity: str


class ThresholdSegmenter(BaseSegmenter):
    """Global threshold on grey intensity, then connected components.

    Foreground is ``grey > t`` for bright objects and ``grey <= t`` for dark ones, where ``t`` is
    the image mean (``method="mean"``, as in the classic tutorial), Otsu's threshold (``"otsu"``) or
    a fixed value (``"fixed"``).

    **Score** of a region: ``|mean grey inside - mean grey of the background within 3 px| /
    (p99 - p1 of the image's grey)``, clipped to [0, 1] — a high-contrast blob is a confident one.

    Parameters
    ----------
    method : {"otsu", "mean", "fixed"}
    value : float in [0, 255] or None
        The threshold for ``method="fixed"``. ``None``: fitted as the level that maximises the
        foreground IoU of the pooled training pixels (must be fitted or given before predicting).
    **kwargs
        The shared options of :class:`~segbench.baselines.base.BaseSegmenter` (``polarity``,
        ``min_area``, ``split_touching``, ``min_distance``, ``max_instances``, ``n_fit_images``).

    Examples
    --------
    >>> img = np.zeros((64, 64), np.uint8); img[10:30, 10:30] = 200; img[40:60, 35:60] = 200
    >>> inst = ThresholdSegmenter(method="otsu")(img)
    >>> len(inst), inst.areas().tolist()
    (2, [400.0, 500.0])
    """

    name = "threshold"

    def __init__(self, *, method: str = "otsu", value: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method = check_choice("method", method, THRESHOLD_METHODS)
        self.value = check_float("value", value, minimum=0.0, maximum=255.0, allow_none=True)

    def _method_config(self) -> dict[str, Any]:
        return {"method": self.method, "value": self.value}

    def _threshold(self, grey: np.ndarray) -> float:
        if self.method == "mean":
            return float(grey.mean())
        if self.method == "otsu":
            return float(threshold_otsu(grey))
        value = self.value if self.value is not None else self._fitted("value")
        if value is None:
            raise ValueError(
                "ThresholdSegmenter(method='fixed') needs a threshold: pass value=... or call fit() first"
            )
        return float(value)

    def _analyse(self, rgb: np.ndarray) -> _GreyAnalysis | None:
        grey = to_grey(rgb)
        if grey.min() == grey.max():
            return None
        return _GreyAnalysis(grey=grey, polarity=self._polarity(grey))

    def _foreground(self, analysis: _GreyAnalysis) -> np.ndarray:
        return foreground_side(analysis.grey, self._threshold(analysis.grey), analysis.polarity)

    def _scores(self, analysis: _GreyAnalysis, labels: np.ndarray, n: int) -> np.ndarray:
        return pp.contrast_scores(labels, n, analysis.grey)

    def _fit_method(self, rgbs: list[np.ndarray], unions: list[np.ndarray], analyses: list[Any]) -> dict:
        if self.method != "fixed" or self.value is not None:
            return {}
        fg_hist = np.zeros(256, np.int64)
        bg_hist = np.zeros(256, np.int64)
        pols = []
        for rgb, u in zip(rgbs, unions, strict=True):
            grey = to_grey(rgb)
            fg_hist += np.bincount(grey[u], minlength=256)
            bg_hist += np.bincount(grey[~u], minlength=256)
            pols.append(self._polarity(grey))
        if fg_hist.sum() == 0:
            logger.warning(
                "ThresholdSegmenter.fit: no ground-truth foreground; the fixed level is not fitted"
            )
            return {}
        bright = max(set(pols), key=pols.count) == "bright"
        value = _best_level(fg_hist, bg_hist, bright=bright)
        logger.debug("fixed threshold fitted: %s", value)
        return {"value": value}


def _best_level(fg_hist: np.ndarray, bg_hist: np.ndarray, *, bright: bool) -> float:
    """Threshold ``k + 0.5`` (k = 0..254) maximising the pooled foreground IoU.

    ``fg_hist`` / ``bg_hist`` are 256-bin histograms of ground-truth foreground / background grey
    levels; foreground is predicted as ``grey > t`` (bright) or ``grey <= t`` (dark).
    """
    total_fg = fg_hist.sum()
    # predicted foreground for t = k + 0.5: levels k+1.. (bright) or ..k (dark)
    fg_le = np.cumsum(fg_hist)[:-1]
    bg_le = np.cumsum(bg_hist)[:-1]
    if bright:
        tp, fp = total_fg - fg_le, bg_hist.sum() - bg_le
    else:
        tp, fp = fg_le, bg_le
    iou = tp / (total_fg + fp)
    return float(np.argmax(iou)) + 0.5


@dataclass
class _ClassAnalysis:
    grey: np.ndarray  # uint8 (H, W)
    classes: np.ndarray  # int (H, W), 0 (darkest) .. n_classes - 1 (brightest)
    polarity: str


class MultiThresholdSegmenter(BaseSegmenter):
    """Several intensity levels split the grey image into classes; some classes are foreground.

    Levels are multi-Otsu thresholds of each image (``skimage.filters.threshold_multiotsu``,
    ``classes`` classes) or the given ``thresholds``. Class 0 is the darkest, ``classes - 1`` the
    brightest. An image with fewer distinct grey levels than ``classes`` falls back to Otsu's single
    threshold, mapped to the darkest and brightest classes.

    **Score** of a region: as :class:`ThresholdSegmenter` — contrast with the surrounding background
    ring over the image's dynamic range, in [0, 1].

    Parameters
    ----------
    classes : int in [2, 4] or None
        Number of multi-Otsu classes; ``None``: 3 (or ``len(thresholds) + 1``).
    thresholds : sequence of float or None
        Fixed increasing levels in [0, 255] instead of multi-Otsu.
    foreground_classes : sequence of int or None
        Which classes are foreground. ``None``: fitted as the set of classes whose union best matches
        the training ground truth (pooled pixel IoU); before fitting the brightest class (bright
        polarity) or the darkest (dark).
    **kwargs
        The shared options of :class:`~segbench.baselines.base.BaseSegmenter`.
    """

    name = "multi_threshold"

    def __init__(
        self,
        *,
        classes: int | None = None,
        thresholds: Sequence[float] | None = None,
        foreground_classes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if thresholds is not None:
            if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) or not thresholds:
                raise ValueError(
                    f"thresholds={thresholds!r} is not valid; expected a non-empty list of increasing "
                    "numbers in [0, 255], or None for multi-Otsu"
                )
            thresholds = [
                check_float(f"thresholds[{i}]", t, minimum=0.0, maximum=255.0)
                for i, t in enumerate(thresholds)
            ]
            if any(b <= a for a, b in itertools.pairwise(thresholds)):
                raise ValueError(
                    f"thresholds={thresholds!r} is not valid; the levels must be strictly increasing"
                )
            n_classes = len(thresholds) + 1
            if classes is not None and classes != n_classes:
                raise ValueError(
                    f"classes={classes!r} does not match thresholds (len {len(thresholds)} gives "
                    f"{n_classes} classes); leave classes=None when giving thresholds"
                )
        else:
            n_classes = check_int(
                "classes", 3 if classes is None else classes, minimum=2, maximum=MAX_CLASSES
            )
        self.classes = classes if classes is None else int(classes)
        self.thresholds = thresholds
        self.n_classes = n_classes
        if foreground_classes is not None:
            if isinstance(foreground_classes, (str, bytes)) or not isinstance(foreground_classes, Sequence):
                raise ValueError(
                    f"foreground_classes={foreground_classes!r} is not valid; expected a list of class "
                    f"indices in [0, {n_classes - 1}] or None (fitted)"
                )
            foreground_classes = sorted(
                {
                    check_int(f"foreground_classes[{i}]", c, minimum=0, maximum=n_classes - 1)
                    for i, c in enumerate(foreground_classes)
                }
            )
            if not foreground_classes:
                raise ValueError(
                    "foreground_classes=[] is not valid; give at least one class, or None (fitted)"
                )
        self.foreground_classes = foreground_classes

    def _method_config(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "thresholds": self.thresholds,
            "foreground_classes": self.foreground_classes,
        }

    def _levels(self, grey: np.ndarray) -> np.ndarray:
        if self.thresholds is not None:
            return np.asarray(self.thresholds, dtype=np.float64)
        hist = np.bincount(grey.ravel(), minlength=256)
        if np.count_nonzero(hist) > self.n_classes:
            return np.asarray(threshold_multiotsu(grey, classes=self.n_classes), dtype=np.float64)
        # Too few grey levels for multi-Otsu: one Otsu level between the darkest and brightest class.
        t = float(threshold_otsu(grey))
        return np.array([t] + [np.inf] * (self.n_classes - 2), dtype=np.float64)

    def _analyse(self, rgb: np.ndarray) -> _ClassAnalysis | None:
        grey = to_grey(rgb)
        if grey.min() == grey.max():
            return None
        levels = self._levels(grey)
        # class c holds levels[c-1] < grey <= levels[c] (as "grey > t" is the bright side)
        cls = np.searchsorted(levels, grey, side="left").astype(np.int8)
        if np.isinf(levels[-1]):  # fallback: the bright side of the Otsu level is the brightest class
            cls[cls == 1] = self.n_classes - 1
        return _ClassAnalysis(grey=grey, classes=cls, polarity=self._polarity(grey))

    def _fg_classes(self, polarity: str) -> list[int]:
        if self.foreground_classes is not None:
            return self.foreground_classes
        fitted = self._fitted("foreground_classes")
        if fitted is not None:
            return list(fitted)
        return [self.n_classes - 1] if polarity == "bright" else [0]

    def _foreground(self, analysis: _ClassAnalysis) -> np.ndarray:
        lut = np.zeros(self.n_classes, dtype=bool)
        lut[self._fg_classes(analysis.polarity)] = True
        return lut[analysis.classes]

    def _scores(self, analysis: _ClassAnalysis, labels: np.ndarray, n: int) -> np.ndarray:
        return pp.contrast_scores(labels, n, analysis.grey)

    def _fit_method(self, rgbs: list[np.ndarray], unions: list[np.ndarray], analyses: list[Any]) -> dict:
        if self.foreground_classes is not None:
            return {}
        k = self.n_classes
        fg_count = np.zeros(k, np.int64)
        bg_count = np.zeros(k, np.int64)
        for i, (rgb, u) in enumerate(zip(rgbs, unions, strict=True)):
            a = analyses[i] if i < len(analyses) else self._analyse(rgb)
            if a is None:
                continue
            fg_count += np.bincount(a.classes[u], minlength=k)
            bg_count += np.bincount(a.classes[~u], minlength=k)
        total_fg = fg_count.sum()
        if total_fg == 0:
            return {}
        # every non-empty proper subset of the classes (k <= 4: at most 14)
        subsets = np.array(list(itertools.product([False, True], repeat=k))[1:-1], dtype=bool)
        tp = subsets @ fg_count
        fp = subsets @ bg_count
        iou = tp / (total_fg + fp)
        best = subsets[int(np.argmax(iou))]
        chosen = [int(c) for c in np.flatnonzero(best)]
        logger.debug("multi-threshold foreground classes fitted: %s (IoU %.3f)", chosen, float(iou.max()))
        return {"foreground_classes": chosen}
