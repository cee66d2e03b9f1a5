"""K-means colour clustering baseline (optionally colour + position)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.filters import threshold_otsu
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits

from segbench.baselines import postprocess as pp
from segbench.baselines.base import (
    BaseSegmenter,
    foreground_side,
    to_grey,
)
from segbench.options import check_bool, check_float, check_int

logger = logging.getLogger(__name__)

#: Luma weights (as :func:`segbench.baselines.base.to_grey`) for a centroid's grey level.
_LUMA = np.array([77, 150, 29], dtype=np.float64) / 256.0


@dataclass
class _ClusterAnalysis:
    grey: np.ndarray  # uint8 (H, W)
    clusters: np.ndarray  # int (H, W): nearest centroid of each pixel
    colours: np.ndarray  # float64 (k, 3): centroid colours, RGB in [0, 1]
    margin: np.ndarray  # float32 (H, W) in [0, 1]: (d2 - d1) / (d2 + d1)
    polarity: str


class KMeansSegmenter(BaseSegmenter):
    """Cluster each image's pixels by colour with k-means; the foreground clusters make the objects.

    Per image, :class:`sklearn.cluster.MiniBatchKMeans` is fitted on at most ``max_fit_pixels``
    pixels drawn at random (fixed ``random_state``: the same image always gives the same clusters),
    then every pixel is assigned to its nearest centroid. Features are RGB in [0, 1], plus
    ``position_weight * (y / H, x / W)`` when ``use_position``. ``k`` is lowered to the number of
    distinct colours when an image has fewer.

    Which clusters are foreground is decided by colour. After :meth:`fit`: the centroids of the
    training images' clusters are stored as a foreground profile (clusters more than half inside
    the ground-truth masks) and a background profile (the rest); in a new image a cluster is
    foreground when its centroid colour is nearer the foreground profile than the background one
    (nearest stored centroid). Before fitting: clusters whose centroid grey level is on the object
    side (polarity) of the image's Otsu threshold.

    **Score** of a region: the mean over its pixels of the membership margin
    ``(d2 - d1) / (d2 + d1)``, where ``d1`` / ``d2`` are the distances to the nearest / second-nearest
    centroid: 1 for pixels sitting on their centroid, 0 on the border between two clusters.

    Parameters
    ----------
    k : int
        Number of clusters (5, as in the classic tutorial).
    use_position : bool
        Add the scaled pixel coordinates to the colour features.
    position_weight : float
        Weight of the ``(y / H, x / W)`` coordinates relative to colour (both in [0, 1]).
    max_fit_pixels : int
        Pixels sampled per image to fit the centroids.
    random_state : int
        Seed of the pixel sample and of k-means.
    n_init : int
        k-means restarts on the sample (best inertia kept).
    **kwargs
        The shared options of :class:`~segbench.baselines.base.BaseSegmenter`.
    """

    name = "kmeans"

    def __init__(
        self,
        *,
        k: int = 5,
        use_position: bool = False,
        position_weight: float = 1.0,
        max_fit_pixels: int = 20000,
        random_state: int = 0,
        n_init: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.k = check_int("k", k, minimum=2, maximum=64)
        self.use_position = check_bool("use_position", use_position)
        self.position_weight = check_float("position_weight", position_weight, minimum=0.0, maximum=100.0)
        self.max_fit_pixels = check_int("max_fit_pixels", max_fit_pixels, minimum=100)
        self.random_state = check_int("random_state", random_state, minimum=0, maximum=2**32 - 1)
        self.n_init = check_int("n_init", n_init, minimum=1, maximum=100)

    def _method_config(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "use_position": self.use_position,
            "position_weight": self.position_weight,
            "max_fit_pixels": self.max_fit_pixels,
            "random_state": self.random_state,
            "n_init": self.n_init,
        }

    def _features(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        colour = rgb.reshape(-1, 3).astype(np.float32) / np.float32(255.0)
        if not self.use_position:
            return colour
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        pos = np.stack([yy.ravel() / max(h - 1, 1), xx.ravel() / max(w - 1, 1)], axis=1)
        return np.hstack([colour, np.float32(self.position_weight) * pos])

    def _analyse(self, rgb: np.ndarray) -> _ClusterAnalysis | None:
        h, w = rgb.shape[:2]
        flat = rgb.reshape(-1, 3)
        if (flat == flat[0]).all():
            return None
        feats = self._features(rgb)
        rng = np.random.default_rng(self.random_state)
        n = h * w
        idx = (
            np.sort(rng.choice(n, size=self.max_fit_pixels, replace=False))
            if n > self.max_fit_pixels
            else None
        )
        sample = feats if idx is None else feats[idx]
        sample_rgb = flat if idx is None else flat[idx]
        packed = (
            (sample_rgb[:, 0].astype(np.int32) << 16)
            | (sample_rgb[:, 1].astype(np.int32) << 8)
            | sample_rgb[:, 2]
        )
        distinct = len(np.unique(packed)) if not self.use_position else len(sample)
        k = min(self.k, distinct)
        if k < 2:
            return None
        # Small problems (<= max_fit_pixels samples, k centroids) run faster on one thread: OpenMP
        # start-up per mini-batch dominates otherwise (10-50x slower on a busy machine). The limit
        # holds inside this block only.
        with threadpool_limits(limits=1, user_api="openmp"):
            km = MiniBatchKMeans(
                n_clusters=k,
                random_state=self.random_state,
                n_init=self.n_init,
                batch_size=min(1024, len(sample)),
            ).fit(sample)
            dist = km.transform(feats)  # (n, k)
        clusters = np.argmin(dist, axis=1)
        two = np.partition(dist, 1, axis=1)[:, :2]
        d1, d2 = two[:, 0], two[:, 1]
        denom = d1 + d2
        margin = np.divide(d2 - d1, denom, out=np.zeros_like(denom), where=denom > 0)
        grey = to_grey(rgb)
        return _ClusterAnalysis(
            grey=grey,
            clusters=clusters.reshape(h, w).astype(np.int32),
            colours=np.asarray(km.cluster_centers_[:, :3], dtype=np.float64),
            margin=np.clip(margin, 0.0, 1.0).reshape(h, w).astype(np.float32),
            polarity=self._polarity(grey),
        )

    def _fg_clusters(self, a: _ClusterAnalysis) -> np.ndarray:
        """bool (k,): which of this image's clusters are foreground."""
        fg_prof = self._fitted("fg_colours")
        bg_prof = self._fitted("bg_colours")
        if fg_prof:
            fg_d = np.linalg.norm(a.colours[:, None, :] - np.asarray(fg_prof)[None], axis=2).min(axis=1)
            if not bg_prof:
                return np.ones(len(a.colours), dtype=bool)
            bg_d = np.linalg.norm(a.colours[:, None, :] - np.asarray(bg_prof)[None], axis=2).min(axis=1)
            return fg_d < bg_d
        centroid_grey = (a.colours @ _LUMA) * 255.0
        return foreground_side(centroid_grey, float(threshold_otsu(a.grey)), a.polarity)

    def _foreground(self, a: _ClusterAnalysis) -> np.ndarray:
        return self._fg_clusters(a)[a.clusters]

    def _scores(self, a: _ClusterAnalysis, labels: np.ndarray, n: int) -> np.ndarray:
        return np.clip(pp.region_means(labels, a.margin, n), 0.0, 1.0).astype(np.float32)

    def _fit_method(self, rgbs: list[np.ndarray], unions: list[np.ndarray], analyses: list[Any]) -> dict:
        fg_colours: list[list[float]] = []
        bg_colours: list[list[float]] = []
        for a, u in zip(analyses, unions, strict=False):
            if a is None:
                continue
            k = len(a.colours)
            inside = np.bincount(a.clusters[u], minlength=k)
            total = np.bincount(a.clusters.ravel(), minlength=k)
            is_fg = inside * 2 > total
            for c in range(k):
                if total[c]:
                    (fg_colours if is_fg[c] else bg_colours).append([float(v) for v in a.colours[c]])
        if not fg_colours:
            logger.warning(
                "KMeansSegmenter.fit: no cluster lies mostly inside the ground truth; keeping the "
                "polarity rule for foreground clusters"
            )
            return {}
        return {"fg_colours": fg_colours, "bg_colours": bg_colours}
