"""Edge-based baselines: Sobel gradient magnitude or absolute Laplace response, then regions.

The edge maps use the classic tutorial's 3x3 kernels with :func:`scipy.ndimage.convolve` on the grey
image (optionally Gaussian-smoothed first):

* Sobel: ``sqrt(gx**2 + gy**2)`` with ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and its transpose;
* Laplace: ``|[[1, 1, 1], [1, -8, 1], [1, 1, 1]] * grey|``.

The absolute Laplace response has two lobes with a zero between them, on the edge itself; regions
are built from its 3x3 grey closing, which fills that notch (the scores use the response itself).

Regions come from the edge map by one of two ``region_method`` s:

* ``"watershed"`` (default): markers are the low-edge pixels (edge <= Otsu level of the edge map),
  labelled object or background by the side of the intensity split they are on (polarity; the
  split is the midpoint of the two Otsu class means); the marker-controlled watershed of the edge map then places each boundary on the edge ridge.
* ``"fill"``: strong edges (edge > Otsu level of the edge map) are closed with a disk of
  ``closing_radius`` and their holes filled; of the edge band itself only the half nearer the
  filled interior is kept (so the boundary falls in the middle of the band), and edges that enclose
  nothing are dropped. Objects need closed outlines.

Either way holes in the objects are filled when ``fill_holes`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import watershed

from segbench.baselines import postprocess as pp
from segbench.baselines.base import (
    BaseSegmenter,
    foreground_side,
    to_grey,
)
from segbench.options import check_bool, check_choice, check_float, check_int

logger = logging.getLogger(__name__)

REGION_METHODS = ("watershed", "fill")
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
SOBEL_Y = SOBEL_X.T.copy()
LAPLACE = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=np.float32)


def sobel_magnitude(grey: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of a ``(H, W)`` image; float32 ``(H, W)`` >= 0."""
    g = np.asarray(grey, dtype=np.float32)
    gx = ndimage.convolve(g, SOBEL_X, mode="nearest")
    gy = ndimage.convolve(g, SOBEL_Y, mode="nearest")
    return np.hypot(gx, gy)


def laplace_magnitude(grey: np.ndarray) -> np.ndarray:
    """Absolute response to the 3x3 (8-neighbour) Laplace kernel; float32 ``(H, W)`` >= 0."""
    return np.abs(ndimage.convolve(np.asarray(grey, dtype=np.float32), LAPLACE, mode="nearest"))


def _split_level(grey: np.ndarray) -> float:
    """Midpoint of the two Otsu class means of a uint8 image.

    Otsu's threshold of a two-valued image is its lower value, which would put every smoothed edge
    pixel on the bright side; the midpoint of the class means is the symmetric split.
    """
    t = float(threshold_otsu(grey))
    below, above = grey <= t, grey > t
    if not below.any() or not above.any():
        return t
    return 0.5 * (float(grey[below].mean()) + float(grey[above].mean()))


@dataclass
class _EdgeAnalysis:
    grey: np.ndarray  # uint8 (H, W)
    edge: np.ndarray  # float32 (H, W) >= 0: the edge map (scores)
    elevation: np.ndarray  # float32 (H, W) >= 0: what the regions are built from
    edge_level: float  # Otsu level of the elevation
    level: float  # intensity split for the markers (see _split_level)
    smooth: np.ndarray  # float32 (H, W): the smoothed grey the edges come from
    polarity: str


class _EdgeSegmenter(BaseSegmenter):
    """Shared implementation of :class:`SobelSegmenter` and :class:`LaplaceSegmenter`."""

    def __init__(
        self,
        *,
        region_method: str = "watershed",
        sigma: float = 1.0,
        closing_radius: int = 2,
        fill_holes: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.region_method = check_choice("region_method", region_method, REGION_METHODS)
        self.sigma = check_float("sigma", sigma, minimum=0.0, maximum=50.0)
        self.closing_radius = check_int("closing_radius", closing_radius, minimum=0, maximum=50)
        self.fill_holes = check_bool("fill_holes", fill_holes)

    def _method_config(self) -> dict[str, Any]:
        return {
            "region_method": self.region_method,
            "sigma": self.sigma,
            "closing_radius": self.closing_radius,
            "fill_holes": self.fill_holes,
        }

    def _edge_map(self, smooth: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _elevation(self, edge: np.ndarray) -> np.ndarray:
        """The map regions are built from (the edge map unless a subclass reshapes it)."""
        return edge

    def _analyse(self, rgb: np.ndarray) -> _EdgeAnalysis | None:
        grey = to_grey(rgb)
        if grey.min() == grey.max():
            return None
        smooth = grey.astype(np.float32)
        if self.sigma > 0:
            smooth = ndimage.gaussian_filter(smooth, self.sigma, mode="nearest")
        edge = self._edge_map(smooth)
        if not edge.max() > 0:
            return None
        elevation = self._elevation(edge)
        return _EdgeAnalysis(
            grey=grey,
            edge=edge,
            elevation=elevation,
            edge_level=float(threshold_otsu(elevation)),
            level=_split_level(grey),
            smooth=smooth,
            polarity=self._polarity(grey),
        )

    def _foreground(self, a: _EdgeAnalysis) -> np.ndarray:
        if self.region_method == "watershed":
            low = a.elevation <= a.edge_level
            obj = foreground_side(a.smooth, a.level, a.polarity)
            markers = np.zeros(a.elevation.shape, dtype=np.int32)
            markers[low & ~obj] = 1
            markers[low & obj] = 2
            # Flood only the unmarked band (plus the marker pixels bordering it): same result as a
            # whole-image watershed, without pushing every marker pixel through the priority queue.
            work = ndimage.binary_dilation(markers == 0, structure=np.ones((3, 3), bool))
            fg = (markers == 2) | (watershed(a.elevation, markers, mask=work) == 2)
        else:
            strong = a.elevation > a.edge_level
            if self.closing_radius > 0:
                r = self.closing_radius
                # pad so that closing does not erode edges at the image border
                strong = ndimage.binary_closing(np.pad(strong, r), structure=disk(r))[r:-r, r:-r]
            filled = ndimage.binary_fill_holes(strong)
            interior = filled & ~strong
            if not interior.any():
                return np.zeros(a.edge.shape, dtype=bool)
            d_in = ndimage.distance_transform_edt(~interior)
            d_out = ndimage.distance_transform_edt(filled)
            fg = filled & (d_in <= d_out)
        if self.fill_holes:
            fg = ndimage.binary_fill_holes(fg)
        return fg

    def _scores(self, a: _EdgeAnalysis, labels: np.ndarray, n: int) -> np.ndarray:
        return pp.boundary_scores(labels, n, a.edge)


_EDGE_DOC = """{title}

    {edge}, then regions by ``region_method`` (see :mod:`segbench.baselines.edges`), connected
    components, optional split of touching objects and minimum area.

    **Score** of a region: the mean edge strength on its inner boundary divided by the 99th
    percentile of the image's edge map, clipped to [0, 1] — a region outlined by strong edges is a
    confident one.

    Parameters
    ----------
    region_method : {{"watershed", "fill"}}
    sigma : float
        Gaussian smoothing of the grey image before the kernel (0: none, as in the tutorial).
    closing_radius : int
        Disk radius of the binary closing that joins broken edges (``"fill"`` only).
    fill_holes : bool
        Fill holes inside the found objects.
    **kwargs
        The shared options of :class:`~segbench.baselines.base.BaseSegmenter` (``polarity`` decides
        which watershed markers are objects).
"""


class SobelSegmenter(_EdgeSegmenter):
    __doc__ = _EDGE_DOC.format(
        title="Sobel gradient magnitude edges -> regions.",
        edge="Sobel magnitude ``hypot(gx, gy)`` of the (smoothed) grey image",
    )
    name = "sobel"

    def _edge_map(self, smooth: np.ndarray) -> np.ndarray:
        return sobel_magnitude(smooth)


class LaplaceSegmenter(_EdgeSegmenter):
    __doc__ = _EDGE_DOC.format(
        title="Absolute Laplace response edges -> regions.",
        edge="Absolute 3x3 Laplace response of the (smoothed) grey image",
    )
    name = "laplace"

    def _edge_map(self, smooth: np.ndarray) -> np.ndarray:
        return laplace_magnitude(smooth)

    def _elevation(self, edge: np.ndarray) -> np.ndarray:
        # |Laplace| has two lobes with a zero between them, on the edge itself; a 3x3 grey closing
        # fills that notch so that regions see one ridge (and the notch is not taken for a flat area).
        return ndimage.grey_closing(edge, size=(3, 3), mode="nearest")
