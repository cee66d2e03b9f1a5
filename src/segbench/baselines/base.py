"""What every classical baseline shares: input checks, fitting of the free choices, parameters I/O.

A baseline is a *segmenter* (``image (H, W, 3) uint8 -> Instances``). Subclasses implement three
steps: ``_analyse`` (the expensive per-image work that does not depend on fitted state, e.g. the edge
map or the k-means clustering), ``_foreground`` (analysis -> boolean foreground map, using the fitted
choices) and ``_scores`` (one proxy confidence in [0, 1] per region). This module then does the rest
the same way for all of them (see :mod:`segbench.baselines.postprocess`).

Free choices are *fitted* on the training split, never hand-tuned: an option left at ``"auto"`` /
``None`` is chosen by :meth:`BaseSegmenter.fit`; an option given explicitly is used as given and
never overwritten. Before fitting, ``"auto"`` options fall back to documented per-image heuristics.
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from segbench.baselines import postprocess as pp
from segbench.options import check_bool, check_choice, check_int
from segbench.types import Instances

logger = logging.getLogger(__name__)

POLARITIES = ("auto", "bright", "dark")
PARAMS_FORMAT_VERSION = 1
#: Used before fitting when ``min_area=None``.
DEFAULT_MIN_AREA = 16
#: Used before fitting when ``min_distance=None``.
DEFAULT_MIN_DISTANCE = 7


# --------------------------------------------------------------------------------------------------
# Option checks (errors name the option, the value received and the valid choices)
# --------------------------------------------------------------------------------------------------
#: Scores a fit candidate: ``scorer(targets, predictions) -> float``, higher is better. The baselines sit
#: below :mod:`segbench.eval` and never import it: the caller passes one in (``compare`` passes
#: :func:`segbench.eval.metrics.f1_scorer`, F1 of one-to-one matching at mask IoU 0.5).
Scorer = Callable[[Sequence[Instances], Sequence[Instances]], float]


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def as_rgb(image: Any) -> np.ndarray:
    """Check an input image and return it as ``(H, W, 3) uint8`` RGB.

    Greyscale ``(H, W)`` / ``(H, W, 1)`` is repeated to three channels; the alpha channel of RGBA
    ``(H, W, 4)`` is dropped.

    Raises
    ------
    TypeError
        Not a numpy array, or not uint8.
    ValueError
        Any other shape, or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) of uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"image must have dtype uint8 (values 0..255), got {image.dtype}; pass uint8, e.g. "
            "skimage.util.img_as_ubyte(image) for floats in [0, 1]"
        )
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[:, :, :3]
    elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        rgb = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    else:
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(rgb)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma ``(77 R + 150 G + 29 B) / 256`` (ITU-R BT.601, integer) of ``(H, W, 3) uint8`` -> ``(H, W) uint8``.

    The weights sum to 256, so a grey image converted to RGB comes back unchanged.

    >>> to_grey(np.full((1, 1, 3), 200, np.uint8)).item()
    200
    """
    r, g, b = (rgb[:, :, i].astype(np.uint16) for i in range(3))
    return ((r * 77 + g * 150 + b * 29 + 128) >> 8).astype(np.uint8)


def guess_polarity(grey: np.ndarray) -> str:
    """Per-image polarity guess used before fitting: the image border is mostly background.

    Objects are ``"bright"`` when the median of the border pixels is at most the image mean (the
    objects pull the mean away from the background), else ``"dark"``.
    """
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return "bright" if float(np.median(border)) <= float(grey.mean()) else "dark"


def foreground_side(grey: np.ndarray, threshold: float, polarity: str) -> np.ndarray:
    """``grey > threshold`` for bright objects, ``grey <= threshold`` for dark ones (bool (H, W))."""
    return grey > threshold if polarity == "bright" else grey <= threshold


def _gt_union(target: Instances) -> np.ndarray:
    h, w = target.image_size
    if len(target) == 0:
        return np.zeros((h, w), dtype=bool)
    return target.get_masks().any(axis=0)


# --------------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------------
class BaseSegmenter(ABC):
    """Base of the classical baselines (see the module docstring for the contract).

    Parameters (keyword-only, shared by all baselines)
    ----------
    polarity : {"auto", "bright", "dark"}
        Whether objects are brighter or darker than the background. ``"auto"``: fitted (mean grey of
        the ground-truth masks vs the background over the training images); before fitting,
        guessed per image by :func:`guess_polarity`.
    min_area : int or None
        Regions smaller than this (pixels) are dropped. ``None``: fitted as
        ``0.5 x`` the 2nd percentile of the training objects' areas; before fitting 16.
    split_touching : bool or None
        Split touching objects with a distance-transform watershed. ``None``: fitted (both tried on
        up to ``n_fit_images`` training images; splitting is kept only if the fit's scorer — F1 at IoU
        0.5 in ``compare`` — is higher); before fitting ``False``.
    min_distance : int or None
        Smallest distance between two split markers (pixels). ``None``: fitted as 0.7 x the median
        equivalent radius of the training objects (at least 2); before fitting 7.
    max_instances : int
        At most this many instances per image (the highest scores).
    n_fit_images : int
        How many training images (the first ones) the costly fitting steps use.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        polarity: str = "auto",
        min_area: int | None = None,
        split_touching: bool | None = None,
        min_distance: int | None = None,
        max_instances: int = 100,
        n_fit_images: int = 20,
    ) -> None:
        self.polarity = check_choice("polarity", polarity, POLARITIES)
        self.min_area = check_int("min_area", min_area, minimum=1, allow_none=True)
        self.split_touching = check_bool("split_touching", split_touching, allow_none=True)
        self.min_distance = check_int("min_distance", min_distance, minimum=1, allow_none=True)
        self.max_instances = check_int("max_instances", max_instances, minimum=1)
        self.n_fit_images = check_int("n_fit_images", n_fit_images, minimum=1)
        #: What :meth:`fit` chose (JSON-serialisable), or None before fitting.
        self.fitted_: dict[str, Any] | None = None

    # -- subclass hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _analyse(self, rgb: np.ndarray) -> Any:
        """Per-image work that does not depend on method-specific fitted state; None if degenerate."""

    @abstractmethod
    def _foreground(self, analysis: Any) -> np.ndarray:
        """Boolean ``(H, W)`` foreground map."""

    @abstractmethod
    def _scores(self, analysis: Any, labels: np.ndarray, n: int) -> np.ndarray:
        """float32 ``(n,)`` in [0, 1]: the proxy confidence of regions ``1..n``."""

    def _fit_method(self, rgbs: list[np.ndarray], unions: list[np.ndarray], analyses: list[Any]) -> dict:
        """Method-specific fitted values (JSON-serialisable); ``analyses`` cover the first images."""
        return {}

    def _method_config(self) -> dict[str, Any]:
        """The subclass's own constructor options (JSON-serialisable)."""
        return {}

    # -- resolved choices -------------------------------------------------------------------------
    def _fitted(self, key: str) -> Any:
        return None if self.fitted_ is None else self.fitted_.get(key)

    def _polarity(self, grey: np.ndarray) -> str:
        if self.polarity != "auto":
            return self.polarity
        return self._fitted("polarity") or guess_polarity(grey)

    def _min_area(self) -> int:
        if self.min_area is not None:
            return self.min_area
        return int(self._fitted("min_area") or DEFAULT_MIN_AREA)

    def _min_distance(self) -> int:
        if self.min_distance is not None:
            return self.min_distance
        return int(self._fitted("min_distance") or DEFAULT_MIN_DISTANCE)

    def _split(self) -> bool:
        if self.split_touching is not None:
            return self.split_touching
        return bool(self._fitted("split_touching") or False)

    @property
    def is_fitted(self) -> bool:
        return self.fitted_ is not None

    # -- prediction -------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray) -> Instances:
        """Segment one image.

        Parameters
        ----------
        image : uint8 (H, W, 3)
            Also accepted: greyscale (H, W) or (H, W, 1) and RGBA (H, W, 4) (alpha dropped).

        Returns
        -------
        Instances
            bool masks (N, H, W), XYXY boxes, labels all 1, float32 scores in [0, 1], best first.
        """
        rgb = as_rgb(image)
        return self._predict(self._analyse(rgb), rgb.shape[:2], split=self._split())

    def _predict(self, analysis: Any, size: tuple[int, int], *, split: bool) -> Instances:
        if analysis is None:
            return Instances.empty(size, with_scores=True)
        fg = self._foreground(analysis)
        labels, n = pp.regions_from_foreground(
            fg, split_touching=split, min_distance=self._min_distance(), min_area=self._min_area()
        )
        if n == 0:
            return Instances.empty(size, with_scores=True)
        scores = self._scores(analysis, labels, n)
        return pp.instances_from_labels(labels, n, scores, max_instances=self.max_instances)

    # -- fitting ----------------------------------------------------------------------------------
    def fit(
        self, images: Iterable[np.ndarray], targets: Iterable[Instances], *, scorer: Scorer | None = None
    ) -> BaseSegmenter:
        """Choose the free options left at ``"auto"`` / ``None`` from training images and ground truth.

        Steps, in order: polarity; minimum area and marker distance (from the ground-truth areas);
        the method's own choices (see the subclass); whether to split touching objects (``scorer`` with
        and without, on the first ``n_fit_images`` images). Options given explicitly are kept.

        Parameters
        ----------
        images : iterable of uint8 (H, W, 3) arrays
            The training split only.
        targets : iterable of Instances
            Ground truth of the same images, in the same order.
        scorer : callable, optional
            ``scorer(targets, predictions) -> float`` (higher is better), e.g.
            :func:`segbench.eval.metrics.f1_scorer`. Needed when ``split_touching`` is left to the fit.

        Returns
        -------
        self
        """
        images = list(images)
        targets = list(targets)
        if len(images) != len(targets):
            raise ValueError(
                f"fit got {len(images)} images but {len(targets)} targets; pass one target per image"
            )
        if not images:
            raise ValueError("fit needs at least one training image with its ground truth")
        rgbs, greys, unions, areas = [], [], [], []
        for i, (img, tgt) in enumerate(zip(images, targets, strict=True)):
            try:
                rgb = as_rgb(img)
            except (TypeError, ValueError) as e:
                raise type(e)(f"training image {i}: {e}") from None
            if not isinstance(tgt, Instances):
                raise TypeError(f"target {i} must be segbench.types.Instances, got {type(tgt).__name__}")
            if tgt.image_size != rgb.shape[:2]:
                raise ValueError(
                    f"target {i} is for an image of size {tgt.image_size}, but image {i} is {rgb.shape[:2]}"
                )
            rgbs.append(rgb)
            greys.append(to_grey(rgb))
            unions.append(_gt_union(tgt))
            if len(tgt):
                areas.append(tgt.areas()[~tgt.iscrowd])
        all_areas = np.concatenate(areas) if areas else np.zeros(0)
        all_areas = all_areas[all_areas > 0]

        if self.split_touching is None and scorer is None:
            raise ValueError(
                "split_touching=None is fitted by scoring both choices: pass scorer= (e.g. "
                "segbench.eval.metrics.f1_scorer) or set split_touching=true/false"
            )
        previous = self.fitted_
        self.fitted_ = fitted = {}  # filled step by step: later steps predict with earlier choices
        try:
            self._fit_steps(fitted, rgbs, greys, unions, all_areas, targets, scorer)
        except BaseException:
            self.fitted_ = previous
            raise
        shown = {
            k: (f"<{len(v)} values>" if isinstance(v, list | tuple) and len(v) > 6 else v)
            for k, v in fitted.items()
        }
        logger.info("%s fitted on %d images: %s", type(self).__name__, len(rgbs), shown)
        return self

    def _fit_steps(
        self,
        fitted: dict[str, Any],
        rgbs: list[np.ndarray],
        greys: list[np.ndarray],
        unions: list[np.ndarray],
        all_areas: np.ndarray,
        targets: list[Instances],
        scorer: Scorer | None,
    ) -> None:
        if self.polarity == "auto":
            pol = _fit_polarity(greys, unions)
            if pol is None:
                logger.warning(
                    "%s.fit: no ground-truth foreground to learn the polarity from", type(self).__name__
                )
            else:
                fitted["polarity"] = pol
        if len(all_areas):
            if self.min_area is None:
                fitted["min_area"] = max(1, int(0.5 * np.percentile(all_areas, 2)))
            if self.min_distance is None:
                radius = math.sqrt(float(np.median(all_areas)) / math.pi)
                fitted["min_distance"] = max(2, int(round(0.7 * radius)))

        first = list(range(min(len(rgbs), self.n_fit_images)))
        analyses = [self._analyse(rgbs[i]) for i in first]
        fitted.update(self._fit_method(rgbs, unions, analyses))

        if self.split_touching is None:
            gts = [targets[i] for i in first]
            score = {}
            for split in (False, True):
                preds = [
                    self._predict(a, rgbs[i].shape[:2], split=split)
                    for i, a in zip(first, analyses, strict=True)
                ]
                score[split] = float(scorer(gts, preds))
            fitted["split_touching"] = bool(score[True] > score[False])
            fitted["split_score"] = {"no_split": score[False], "split": score[True]}

    # -- parameters -------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Everything needed to rebuild this baseline exactly (JSON-serialisable).

        Returns
        -------
        dict
            ``{"name": ..., "format_version": 1, "config": {constructor options}, "fitted": {...} or None}``
        """
        config = {
            "polarity": self.polarity,
            "min_area": self.min_area,
            "split_touching": self.split_touching,
            "min_distance": self.min_distance,
            "max_instances": self.max_instances,
            "n_fit_images": self.n_fit_images,
            **self._method_config(),
        }
        params = {
            "name": self.name,
            "format_version": PARAMS_FORMAT_VERSION,
            "config": config,
            "fitted": self.fitted_,
        }
        return json.loads(json.dumps(params))  # a deep, JSON-clean copy

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BaseSegmenter:
        """Rebuild a baseline from :meth:`get_params` output.

        Called on :class:`BaseSegmenter` it builds whichever baseline ``params["name"]`` names;
        called on a subclass the name must match it.
        """
        from segbench.baselines import BASELINES  # the registry lives in the package (no import cycle)

        if not isinstance(params, Mapping) or "name" not in params:
            raise ValueError("baseline params must be a dict with a 'name' key (as written by get_params)")
        name = params["name"]
        if name not in BASELINES:
            raise ValueError(
                f"unknown baseline {name!r} in params; valid names: {', '.join(sorted(BASELINES))}"
            )
        target = BASELINES[name]
        if cls is not BaseSegmenter and target is not cls:
            raise ValueError(f"params are for baseline {name!r}, not {cls.name!r}")
        version = params.get("format_version", PARAMS_FORMAT_VERSION)
        if version != PARAMS_FORMAT_VERSION:
            raise ValueError(
                f"baseline params format_version {version!r} is not supported (expected {PARAMS_FORMAT_VERSION})"
            )
        obj = target(**dict(params.get("config") or {}))
        fitted = params.get("fitted")
        obj.fitted_ = None if fitted is None else json.loads(json.dumps(dict(fitted)))
        return obj

    def save(self, path: str | Path) -> Path:
        """Write :meth:`get_params` as JSON to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.get_params(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BaseSegmenter:
        """Read a baseline written by :meth:`save`."""
        path = Path(path)
        try:
            params = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a baseline params JSON file ({e})") from None
        return cls.from_params(params)

    def __repr__(self) -> str:
        cfg = self.get_params()["config"]
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        return f"{type(self).__name__}({args}){' [fitted]' if self.is_fitted else ''}"


def _fit_polarity(greys: list[np.ndarray], unions: list[np.ndarray]) -> str | None:
    """``"bright"`` if ground-truth pixels are brighter than background on average over images."""
    diffs = []
    for g, u in zip(greys, unions, strict=True):
        if u.any() and not u.all():
            diffs.append(float(g[u].mean()) - float(g[~u].mean()))
    if not diffs:
        return None
    return "bright" if float(np.mean(diffs)) > 0 else "dark"
