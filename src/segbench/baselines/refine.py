"""Classical refinement of learned masks: each mask is snapped to the image's edges near its outline.

A Mask R-CNN mask is predicted at 28 x 28 (or 56 x 56) per box and resized, so the outline of a large
object is blurred by up to half a cell of that grid. :class:`EdgeRefiner` re-draws it with a
marker-controlled watershed (scikit-image) on the image's gradient, inside the box:

* markers: the mask eroded by ``ring`` pixels is the object, everything farther than ``ring`` pixels
  outside the mask (within the box grown by ``2 * ring``) is the background;
* the band of ``2 * ring`` pixels around the outline is left to the watershed, which floods it from both
  sides and meets where the gradient (``sobel`` or ``scharr`` magnitude of the grey image, smoothed by
  ``sigma``) is highest: the object's edge;
* where the edge is weak — the mean gradient on the refined outline below ``min_edge`` times the mean
  gradient of the band — the mask is kept as it was.

Its free choices (``enabled``, ``ring``, ``gradient``) are fitted on the training split
(:meth:`EdgeRefiner.fit`) against a scorer passed in (as for the baselines, so this room never imports
:mod:`segbench.eval`); where refinement does not help the fit turns it off. Masks, boxes and RLE stay
consistent: boxes are recomputed from the refined masks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import gaussian, scharr, sobel
from skimage.segmentation import watershed

from segbench.baselines.base import Scorer, as_rgb, to_grey
from segbench.options import check_bool, check_choice, check_float, check_int
from segbench.types import Instances, masks_to_boxes

log = logging.getLogger(__name__)

GRADIENTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"sobel": sobel, "scharr": scharr}
#: What :meth:`EdgeRefiner.fit` tries: ring widths (pixels) and gradients.
FIT_RINGS = (2, 3, 5, 8)


@dataclass
class EdgeRefiner:
    """Snap masks to the image's edges (see the module docstring).

    Parameters
    ----------
    enabled : bool
        ``False``: masks pass through unchanged (what the fit chooses where edges do not help).
    ring : int
        Half-width of the band around each outline that the watershed may move (pixels).
    gradient : {"sobel", "scharr"}
    sigma : float
        Gaussian smoothing of the grey image before the gradient (pixels).
    min_edge : float
        Keep a mask unchanged when the mean gradient on its refined outline is below ``min_edge`` x the
        band's mean gradient (no edge there to snap to).
    min_area : int
        Masks smaller than this (pixels) are left alone: their band would be the whole object.

    Examples
    --------
    A 20 x 20 square predicted 2 px off (IoU 0.74) comes back on its edges (all but its 4 corner pixels):

    >>> img = np.zeros((40, 40, 3), np.uint8); img[10:30, 10:30] = 200
    >>> rough = np.zeros((1, 40, 40), bool); rough[0, 12:31, 9:28] = True
    >>> out = EdgeRefiner(ring=4, sigma=0)(img, Instances.from_masks(rough, scores=[0.9])).get_masks()[0]
    >>> int(out[10:30, 10:30].sum()), int(out.sum())
    (396, 396)
    """

    enabled: bool = True
    ring: int = 3
    gradient: str = "sobel"
    sigma: float = 1.0
    min_edge: float = 1.2
    min_area: int = 64

    name = "refine"

    def __post_init__(self) -> None:
        self.enabled = bool(check_bool("enabled", self.enabled))
        self.ring = int(check_int("ring", self.ring, minimum=1, maximum=64))
        self.gradient = check_choice("gradient", self.gradient, tuple(GRADIENTS))
        self.sigma = float(check_float("sigma", self.sigma, minimum=0.0, maximum=10.0))
        self.min_edge = float(check_float("min_edge", self.min_edge, minimum=0.0))
        self.min_area = int(check_int("min_area", self.min_area, minimum=1))

    # -- refinement ---------------------------------------------------------------------------------
    def _strength(self, image: np.ndarray) -> np.ndarray:
        grey = to_grey(as_rgb(image)).astype(np.float64) / 255.0
        if self.sigma > 0:
            grey = gaussian(grey, sigma=self.sigma)
        return GRADIENTS[self.gradient](grey)

    def refine_mask(self, mask: np.ndarray, strength: np.ndarray) -> np.ndarray:
        """One ``(H, W)`` bool mask snapped to the edges of ``strength`` (the gradient image)."""
        if not self.enabled or mask.sum() < self.min_area:
            return mask
        ys, xs = np.nonzero(mask)
        pad = 2 * self.ring + 1
        h, w = mask.shape
        y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, h)
        x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, w)
        m, g = mask[y0:y1, x0:x1], strength[y0:y1, x0:x1]
        inner = ndimage.binary_erosion(m, iterations=self.ring)
        if not inner.any():
            return mask
        outer = ~ndimage.binary_dilation(m, iterations=self.ring)
        markers = np.zeros(m.shape, np.int32)
        markers[outer] = 1
        markers[inner] = 2
        refined = watershed(g, markers) == 2
        band = ~inner & ~outer
        outline = refined & ~ndimage.binary_erosion(refined) & band
        if band.any() and outline.any() and g[outline].mean() < self.min_edge * g[band].mean():
            return mask  # no edge stronger than the band's average: nothing to snap to
        out = mask.copy()
        out[y0:y1, x0:x1] = refined
        return out

    def __call__(self, image: np.ndarray, inst: Instances) -> Instances:
        """``inst`` (the image's detections) with every mask refined; boxes follow the masks."""
        if not self.enabled or len(inst) == 0 or not inst.has_masks:
            return inst
        strength = self._strength(image)
        masks = np.stack([self.refine_mask(m, strength) for m in inst.get_masks()])
        keep = masks.reshape(len(masks), -1).any(axis=1)
        return Instances(
            image_size=inst.image_size,
            boxes=masks_to_boxes(masks),
            labels=inst.labels,
            scores=inst.scores,
            masks=masks,
            iscrowd=inst.iscrowd,
        ).select(keep)

    # -- fitting ------------------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[np.ndarray],
        predictions: Sequence[Instances],
        targets: Sequence[Instances],
        *,
        scorer: Scorer,
        tolerance: float = 0.0,
    ) -> EdgeRefiner:
        """Choose ``enabled``, ``ring`` and ``gradient`` on training images: every combination of
        :data:`FIT_RINGS` x :data:`GRADIENTS` refines the model's ``predictions`` and is scored by
        ``scorer(targets, refined)``; the best is kept if it beats the unrefined predictions by more than
        ``tolerance``, else refinement is turned off."""
        if not (len(images) == len(predictions) == len(targets)) or not images:
            raise ValueError(
                f"fit needs as many images ({len(images)}), predictions ({len(predictions)}) and targets "
                f"({len(targets)}), at least one"
            )
        base = float(scorer(list(targets), list(predictions)))
        best, best_score, tried = None, base, {}
        for gradient in GRADIENTS:
            for ring in FIT_RINGS:
                cand = EdgeRefiner(ring=ring, gradient=gradient, sigma=self.sigma, min_edge=self.min_edge,
                                   min_area=self.min_area)  # fmt: skip
                refined = [cand(im, p) for im, p in zip(images, predictions, strict=True)]
                score = float(scorer(list(targets), refined))
                tried[f"{gradient}/{ring}"] = round(score, 6)
                if score > best_score + tolerance:
                    best, best_score = cand, score
        self.enabled = best is not None
        if best is not None:
            self.ring, self.gradient = best.ring, best.gradient
        self.fit_scores_ = {"unrefined": round(base, 6), **tried}
        log.info(
            "refine fitted on %d images: %s (score %.4f, unrefined %.4f)",
            len(images),
            f"{self.gradient}, ring {self.ring}" if self.enabled else "off",
            best_score,
            base,
        )
        return self

    # -- parameters ---------------------------------------------------------------------------------
    def get_params(self) -> dict:
        """JSON-ready parameters (and the fit's scores when fitted)."""
        out = {"name": self.name, "config": asdict(self)}
        if getattr(self, "fit_scores_", None) is not None:
            out["fit_scores"] = dict(self.fit_scores_)
        return out

    @classmethod
    def from_params(cls, params: Mapping) -> EdgeRefiner:
        if params.get("name") != cls.name or not isinstance(params.get("config"), Mapping):
            raise ValueError(f"not refine parameters (written by EdgeRefiner.save): {dict(params)!r:.200}")
        obj = cls(**params["config"])
        if "fit_scores" in params:
            obj.fit_scores_ = dict(params["fit_scores"])
        return obj

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.get_params(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EdgeRefiner:
        try:
            return cls.from_params(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read refine parameters {path}: {e}") from None


class RefinedSegmenter:
    """A segmenter followed by :class:`EdgeRefiner`: ``image -> refiner(image, segmenter(image))``."""

    def __init__(self, segmenter: Callable[[np.ndarray], Instances], refiner: EdgeRefiner, *, name: str):
        self.segmenter, self.refiner, self.name = segmenter, refiner, name

    def __call__(self, image: np.ndarray) -> Instances:
        return self.refiner(image, self.segmenter(image))

    def get_params(self) -> dict:
        return self.refiner.get_params()
