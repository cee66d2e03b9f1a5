"""The comparison report's figures (matplotlib, Agg canvas, PNG files).

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through ``pyplot``: no
global backend switch, no figure registry to leak, safe in threads and in a headless process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from segbench.types import Instances

#: Metrics drawn as bars for each method: (leaderboard key, label).
BAR_METRICS: tuple[tuple[str, str], ...] = (
    ("AP", "segm AP"),
    ("AP50", "AP50"),
    ("f1", "F1@0.5"),
    ("pq", "PQ"),
    ("fg_iou", "fg IoU"),
)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def instance_colours(n: int) -> np.ndarray:
    """``n`` RGB colours in [0, 1], shape (n, 3): tab10, or tab20 cycled beyond ten."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.asarray([cmap(i % cmap.N)[:3] for i in range(max(n, 1))])


def plot_leaderboard(
    rows: Sequence[Mapping], path: str | os.PathLike, *, metrics: Sequence[tuple[str, str]] = BAR_METRICS
) -> Path:
    """Grouped bars: one group per method (leaderboard order), one bar per metric in ``metrics``.

    Missing values (``None``) are drawn as no bar.
    """
    n_m, n_k = len(rows), len(metrics)
    fig = _figure(max(6.0, 1.2 + 1.1 * n_m), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(n_k, 1)
    x = np.arange(n_m)
    for k, ((key, label), colour) in enumerate(zip(metrics, instance_colours(n_k), strict=True)):
        vals = np.asarray([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        bars = ax.bar(x + (k - (n_k - 1) / 2) * width, np.nan_to_num(vals), width, label=label, color=colour)
        for b, v in zip(bars, vals, strict=True):
            if np.isnan(v):
                b.set_visible(False)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=20 if n_m > 4 else 0)
    ax.set_ylim(0, 1.18)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score (class-agnostic)")
    ax.set_title("Leaderboard")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=min(n_k, 5), fontsize="small", loc="upper right")
    return _save(fig, path)


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    title: str = "Precision-recall",
    ap: Mapping[str, float | None] | None = None,
) -> Path:
    """One precision-recall curve per method on one plot.

    Parameters
    ----------
    curves : mapping
        ``{method: (recall, precision)}`` — e.g. one IoU of :func:`segbench.eval.metrics.pr_curve`.
    ap : mapping, optional
        A number shown beside each method in the legend (e.g. its AP at that IoU).
    """
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    for (name, (r, p)), colour in zip(curves.items(), instance_colours(len(curves)), strict=False):
        value = None if ap is None else ap.get(name)
        label = name if value is None else f"{name} ({value:.3f})"
        if np.all(np.isnan(p)):
            label += " (no ground truth)"
        ax.plot(r, p, label=label, color=colour, linewidth=1.8, drawstyle="steps-post")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return _save(fig, path)


def draw_instances(image: np.ndarray, inst: Instances | None, *, alpha: float = 0.45) -> np.ndarray:
    """``image`` with each mask of ``inst`` filled in its own colour and outlined.

    Masks are painted lowest score first, so the most confident one is on top where they overlap.

    Parameters
    ----------
    image : uint8 (H, W, 3)
    inst : Instances or None
        Masks at the image's size.

    Returns
    -------
    uint8 (H, W, 3)
    """
    out = image.astype(np.float32) / 255.0
    if inst is None or len(inst) == 0 or not inst.has_masks:
        return image.copy()
    masks = inst.get_masks()
    order = np.arange(len(inst)) if inst.scores is None else np.argsort(inst.scores, kind="stable")
    colours = instance_colours(len(inst))
    h, w = masks.shape[1:]
    for i in order:
        m = masks[i]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            continue
        # work in the mask's box + 1 px (the outline needs the neighbours): the same pixels as on the whole
        # image, at the box's cost instead of the image's (51 masks of a 696x520 image: ~20x less work)
        y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
        x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
        box, crop = m[y0:y1, x0:x1], out[y0:y1, x0:x1]
        c = colours[int(i)]
        crop[box] = (1 - alpha) * crop[box] + alpha * c
        crop[find_boundaries(box, mode="inner")] = c
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def plot_overlay(
    image: np.ndarray,
    gt: Instances,
    predictions: Sequence[tuple[str, Instances]],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """A row of panels: the image with its ground truth, then each method's prediction.

    Parameters
    ----------
    image : uint8 (H, W, 3)
    gt : Instances
        Ground truth (crowd regions drawn like objects).
    predictions : sequence of (panel title, Instances)
    """
    panels = [(f"ground truth ({len(gt)})", gt), *predictions]
    n = len(panels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    h, w = image.shape[:2]
    panel_w = 3.2
    panel_h = panel_w * h / max(w, 1) + 0.4
    fig = _figure(panel_w * cols, panel_h * rows + (0.4 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        name, inst = panels[k]
        ax.imshow(draw_instances(image, inst), interpolation="nearest")
        ax.set_title(name, fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return _save(fig, path)


def plot_confusion(confusion: Mapping, path: str | os.PathLike, *, title: str = "") -> Path:
    """The confusion matrix of :func:`segbench.eval.analysis.confusion_matrix`: row-normalised colours, counts
    written in the cells (rows: true class + background, columns: predicted class + background)."""
    names = list(confusion["classes"])
    counts = np.asarray(confusion["counts"])
    norm = np.asarray(confusion["normalised"], dtype=np.float64)
    n = len(names)
    side = max(3.5, 0.6 * n + 2.0)
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize="small",
                    color="white" if norm[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(n), names, fontsize="small")
    ax.set_xlabel("predicted (background: missed)")
    ax.set_ylabel("true (background: false positive)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row")
    ax.set_title(title or f"Confusion at mask IoU {confusion['iou_threshold']:g}", fontsize="medium")
    return _save(fig, path)


def plot_crops(
    crops: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike, *, columns: int = 4
) -> Path:
    """A grid of image crops, each with one mask outlined: ``(caption, crop uint8 (h, w, 3), mask bool (h, w))``."""
    n = max(len(crops), 1)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = _figure(2.6 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= len(crops):
            continue
        caption, crop, mask = crops[k]
        shown = crop.copy()
        shown[find_boundaries(mask, mode="inner")] = (255, 40, 40)
        ax.imshow(shown, interpolation="nearest")
        ax.set_title(caption, fontsize="x-small")
    return _save(fig, path)


def plot_ap_by_iou(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Class-agnostic segm AP at each IoU threshold 0.50 ... 0.95, one line per method: a method whose line
    falls fast finds the objects but not their edges."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    colours = instance_colours(len(rows))
    for k, r in enumerate(rows):
        by = r.get("AP_by_iou") or {}
        xs = [float(t) for t in by if by[t] is not None]
        ys = [by[t] for t in by if by[t] is not None]
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, color=colours[k], label=r["method"])
    ax.set_xlabel("mask IoU threshold")
    ax.set_ylabel("AP (class-agnostic)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("AP at each IoU threshold", fontsize="medium")
    return _save(fig, path)
