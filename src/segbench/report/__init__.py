"""The comparison report: leaderboard files, figures, example overlays, ``report.html`` and ``report.md``.

:func:`write_report` lays out everything a :class:`~segbench.eval.compare.Comparison` holds in one folder::

    <out>/report.html, report.md            the report (open report.html from disk; no server needed)
    <out>/leaderboard.{md,csv,json}         one row per method, best class-agnostic segm AP first
    <out>/methods/<name>/results.json       COCO results of each method (original category ids)
    <out>/methods/<name>/metrics.json       every score of each method
    <out>/baselines/<name>.json             fitted baseline parameters (reuse: baseline_params_dir=<out>/baselines)
    <out>/plots/leaderboard.png, pr_iou50.png, pr_iou75.png
    <out>/overlays/NN_<rank>_img<id>.png    ground truth beside each method's masks
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from segbench.data.coco import CocoDataset
from segbench.eval.compare import Comparison
from segbench.io import atomic_write_text, write_json
from segbench.report.html import leaderboard_markdown, render_html, render_markdown
from segbench.report.tables import LEADERBOARD_COLUMNS, leaderboard_csv

log = logging.getLogger(__name__)

__all__ = ["save_method_outputs", "write_report"]


def _image_index(dataset: CocoDataset, index: int, image_id) -> int:
    if index < len(dataset) and dataset.images[index]["id"] == image_id:
        return index
    return next(i for i, im in enumerate(dataset.images) if im["id"] == image_id)


def save_method_outputs(comparison: Comparison, out: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Write ``methods/<name>/results.json`` (COCO results) and ``methods/<name>/metrics.json`` per method."""
    paths = {}
    for name, r in comparison.results.items():
        d = Path(out) / "methods" / name
        metrics = {**r.metrics, "method": name, "kind": r.kind, "score_threshold": r.score_threshold}
        paths[name] = {
            "results": write_json(d / "results.json", r.evaluator.results),
            "metrics": write_json(d / "metrics.json", metrics),
        }
    return paths


def write_report(
    comparison: Comparison,
    out: str | os.PathLike,
    *,
    dataset: CocoDataset,
    config_yaml: str = "",
    title: str = "segbench comparison",
) -> dict[str, Path]:
    """Write every file of the comparison report into ``out`` (see the module docstring).

    Parameters
    ----------
    comparison : Comparison
        From :func:`segbench.eval.compare.compare_methods`.
    out : path
        The report folder (created).
    dataset : CocoDataset
        The scored split (its images and ground truth are drawn in the overlays).
    config_yaml : str
        The resolved configuration, shown at the end of the report.

    Returns
    -------
    dict
        ``html``, ``markdown``, ``leaderboard_{md,csv,json}`` and every figure, by name.
    """
    from segbench.report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison.leaderboard
    paths: dict[str, Path] = {}
    method_files = save_method_outputs(comparison, out)
    files: list[tuple[str, str]] = [
        ("leaderboard.csv", "leaderboard.csv"),
        ("leaderboard.json", "leaderboard.json"),
        ("leaderboard.md", "leaderboard.md"),
    ]
    for name, p in method_files.items():
        files += [(f"{name}: {k}.json", p[k].relative_to(out).as_posix()) for k in ("metrics", "results")]
    baselines = {}
    for name, r in comparison.results.items():
        if r.params is not None:
            p = write_json(out / "baselines" / f"{name}.json", r.params)
            baselines[name] = {"params": r.params, "href": p.relative_to(out).as_posix()}

    # Leaderboard files.
    paths["leaderboard_json"] = write_json(
        out / "leaderboard.json",
        {
            "dataset": comparison.dataset,
            "split": comparison.split,
            "num_images": comparison.num_images,
            "columns": [{"key": k, "header": h, "description": d} for k, h, d in LEADERBOARD_COLUMNS],
            "rows": rows,
            "warnings": comparison.warnings,
            "bootstrap": comparison.bootstrap,
            "notes": comparison.notes,
        },
    )
    paths["leaderboard_csv"] = atomic_write_text(out / "leaderboard.csv", leaderboard_csv(rows))
    paths["leaderboard_md"] = atomic_write_text(
        out / "leaderboard.md", leaderboard_markdown(rows, LEADERBOARD_COLUMNS) + "\n"
    )

    # Figures.
    figures = []
    paths["plot_leaderboard"] = plots.plot_leaderboard(rows, out / "plots" / "leaderboard.png")
    figures.append(
        {
            "title": "Leaderboard",
            "src": "plots/leaderboard.png",
            "caption": "Class-agnostic segm AP and AP50, F1 and PQ at IoU 0.5, foreground IoU, per method.",
        }
    )
    by_row = {r["method"]: r for r in rows}
    for iou, key in ((0.5, "AP50"), (0.75, "AP75")):
        tag = f"pr_iou{round(iou * 100)}"
        curves = {r["method"]: comparison.pr_curves[r["method"]][iou] for r in rows}
        paths[f"plot_{tag}"] = plots.plot_pr_curves(
            curves,
            out / "plots" / f"{tag}.png",
            title=f"Precision-recall at mask IoU {iou:.2f} (class-agnostic)",
            ap={m: by_row[m].get(key) for m in curves},
        )
        figures.append(
            {
                "title": f"Precision-recall, IoU {iou:.2f}",
                "src": f"plots/{tag}.png",
                "caption": f"Interpolated precision at recall 0, 0.01, ..., 1 from the COCO evaluator (its mean "
                f"is the {key} in the legend).",
            }
        )

    # Overlays.
    model = next((r for r in comparison.results.values() if r.kind == "model"), None)
    drawn = "Each panel draws one method's masks in colour with outlines" + (
        f" (the model's detections with score ≥ {model.score_threshold:g}, every detection of a baseline)."
        if model is not None and model.score_threshold is not None
        else " (every detection)."
    )
    overlays = []
    for k, pick in enumerate(comparison.chosen_images):
        i = _image_index(dataset, pick["index"], pick["image_id"])
        image, gt = dataset.load_image(i), dataset.load_instances(i)
        panels = []
        for r in sorted(rows, key=lambda row: row["kind"] != "model"):  # the model first, then by AP
            res = comparison.results[r["method"]]
            pred = res.predictions(pick["index"])
            m = res.evaluator.image_matches[pick["index"]]
            thr = "" if res.score_threshold is None else f", score ≥ {res.score_threshold:g}"
            panels.append((f"{r['method']} ({len(pred)}{thr}; F1 {m.f1:.2f})", pred))
        label = pick["label"].replace(" ", "_")
        rel = f"overlays/{k + 1:02d}_{label}_img{pick['image_id']}.png"
        desc = (
            f"{pick['label']} image by {comparison.ranking_method}'s F1@0.5 "
            f"(rank {pick['rank']} of {pick['of']}): {pick['file_name']}"
        )
        paths[f"overlay_{k + 1}"] = plots.plot_overlay(image, gt, panels, out / rel, title=desc)
        overlays.append(
            {
                "title": f"{pick['label'].capitalize()}: {pick['file_name']} (image id {pick['image_id']})",
                "src": rel,
                "caption": desc + f"; F1 {pick['f1']:.3f}, PQ {pick['pq']:.3f}. " + drawn,
            }
        )

    ctx = {
        "title": title,
        "created": datetime.now().isoformat(timespec="seconds"),
        "dataset": comparison.dataset,
        "split": comparison.split,
        "num_images": comparison.num_images,
        "columns": LEADERBOARD_COLUMNS,
        "rows": rows,
        "score_threshold": None if model is None else model.score_threshold,
        "warnings": comparison.warnings,
        "notes": comparison.notes,
        "bootstrap": comparison.bootstrap,
        "per_class": {r["method"]: r["per_class_AP"] for r in rows if r.get("per_class_AP")},
        "plots": figures,
        "overlays": overlays,
        "baselines": baselines,
        "files": files,
        "config": config_yaml,
    }
    paths["markdown"] = atomic_write_text(out / "report.md", render_markdown(ctx))
    paths["html"] = atomic_write_text(out / "report.html", render_html(ctx))
    log.info("wrote the report to %s", paths["html"])
    return paths
