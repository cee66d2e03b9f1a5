"""Classical instance segmenters (numpy, scipy, scikit-image, scikit-learn; never torch).

Each baseline is a segmenter ``image (H, W, 3) uint8 -> Instances`` whose free choices (polarity,
foreground classes / clusters, minimum area, splitting of touching objects) are fitted on the
training split with ``fit(images, targets)``, saved with ``save(path)`` and restored with
:func:`load_baseline`.

>>> seg = build_baseline("threshold", method="otsu")
>>> sorted(BASELINES)
['kmeans', 'laplace', 'multi_threshold', 'sobel', 'threshold']
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from segbench.baselines.base import BaseSegmenter
from segbench.baselines.edges import LaplaceSegmenter, SobelSegmenter
from segbench.baselines.kmeans import KMeansSegmenter
from segbench.baselines.threshold import MultiThresholdSegmenter, ThresholdSegmenter

__all__ = [
    "BASELINES",
    "BaseSegmenter",
    "KMeansSegmenter",
    "LaplaceSegmenter",
    "MultiThresholdSegmenter",
    "SobelSegmenter",
    "ThresholdSegmenter",
    "baseline_options",
    "build_baseline",
    "load_baseline",
]

#: name -> class of every classical baseline.
BASELINES: dict[str, type[BaseSegmenter]] = {
    cls.name: cls
    for cls in (
        ThresholdSegmenter,
        MultiThresholdSegmenter,
        SobelSegmenter,
        LaplaceSegmenter,
        KMeansSegmenter,
    )
}


def baseline_options(name: str) -> list[str]:
    """The keyword options accepted by baseline ``name`` (its own and the shared ones)."""
    cls = _lookup(name)
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return names


def _lookup(name: str) -> type[BaseSegmenter]:
    try:
        return BASELINES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown baseline {name!r}; valid names: {', '.join(sorted(BASELINES))}") from None


def build_baseline(name: str, **kwargs: Any) -> BaseSegmenter:
    """Build the baseline called ``name`` with keyword options ``kwargs``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names), unknown option (lists the valid options)
        or invalid option value (names the option, the value and the valid choices).
    """
    cls = _lookup(name)
    valid = baseline_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for baseline {name!r}; valid options: {', '.join(valid)}"
        )
    return cls(**kwargs)


def load_baseline(path: str | Path) -> BaseSegmenter:
    """Restore any baseline saved with ``save(path)``."""
    return BaseSegmenter.load(path)
