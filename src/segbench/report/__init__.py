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
from segbench.io import atomic_write_text, write_csv, write_json
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

    sections = _analysis_sections(comparison, dataset, out, paths, files, overlays)

    ctx = {
        "sections": sections,
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


#: Rows of the per-image table shown in the report (the whole table is in per_image.csv).
PER_IMAGE_SHOWN = 10
#: Suspected label errors drawn as crops (all are in label_errors.json).
LABEL_ERROR_CROPS = 12


def _crop(image, rle: dict, bbox, margin: float = 0.5):
    """The box of one mask with ``margin`` of its size around it, and the mask cropped alike."""
    from pycocotools import mask as mask_utils

    h, w = image.shape[:2]
    x, y, bw, bh = bbox
    mx, my = max(4, margin * bw), max(4, margin * bh)
    x0, y0 = int(max(0, x - mx)), int(max(0, y - my))
    x1, y1 = int(min(w, x + bw + mx)), int(min(h, y + bh + my))
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"]}).astype(bool)
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def _analysis_sections(
    comparison, dataset, out: Path, paths: dict, files: list, overlays: list
) -> list[dict]:
    """The report's sections on where the errors are: the model's error categories and confusion, its
    calibrated thresholds, the per-image table and the suspected label errors. Also writes their files."""
    from segbench.report import plots

    sections: list[dict] = []
    rows = comparison.leaderboard
    thresholds = list(next((r["AP_by_iou"] for r in rows if r.get("AP_by_iou")), {}))
    if thresholds:
        paths["plot_ap_by_iou"] = plots.plot_ap_by_iou(rows, out / "plots" / "ap_by_iou.png")
        shown = [t for t in thresholds if t in ("0.50", "0.75", "0.85", "0.90", "0.95")]
        sections.append(
            {
                "title": "AP at each IoU threshold",
                "text": [
                    "Class-agnostic segm AP at IoU 0.50 ... 0.95 (the mean of these is the segm AP), and boundary "
                    "AP: a method whose AP falls fast with the threshold, or whose boundary AP is far below its "
                    "segm AP, finds the objects but not their edges."
                ],
                "table": {
                    "header": ["method", *[f"AP{t[2:]}" for t in shown], "boundary AP"],
                    "rows": [
                        [
                            r["method"],
                            *[_num(r["AP_by_iou"].get(t)) for t in shown],
                            _num(r.get("boundary_AP")),
                        ]
                        for r in rows
                    ],
                },
                "figures": [
                    {
                        "title": "AP at each IoU threshold",
                        "src": "plots/ap_by_iou.png",
                        "caption": "Read from the COCO evaluator's precision at each IoU threshold (class-agnostic).",
                    }
                ],
            }
        )
    a = comparison.analysis
    model = next((r for r in comparison.results.values() if r.kind == "model"), None)
    if a is not None and model is not None:
        paths["analysis"] = write_json(out / "analysis.json", a)
        files.append(("analysis.json (confusion, error categories, calibrated thresholds)", "analysis.json"))
        e = a["errors"]
        total = sum(e["counts"].values())
        rows = [[k, str(v), f"{e['fractions'][k]:.1%}"] for k, v in e["counts"].items()]
        paths["plot_confusion"] = plots.plot_confusion(
            a["confusion"], out / "plots" / "confusion.png", title=f"{model.name}: confusion at mask IoU 0.5"
        )
        sections.append(
            {
                "title": f"Where {model.name}'s errors are",
                "text": [
                    f"{e['true_positives']} true positives and {total} errors at mask IoU {e['iou_threshold']:g} "
                    f"(detections with score ≥ {model.score_threshold:g}), in TIDE's categories, counted with "
                    "segbench's matcher (COCO's greedy rule): classification = right mask, wrong class; "
                    f"localisation = right class, IoU {e['background_iou']:g}–{e['iou_threshold']:g}; both = "
                    "wrong class and poor overlap; duplicate = a second detection of a found object; background = "
                    "a detection of nothing; missed = an object no detection comes near.",
                ],
                "table": {"header": ["error", "count", "share"], "rows": rows},
                "figures": [
                    {
                        "title": "Confusion matrix",
                        "src": "plots/confusion.png",
                        "caption": "Rows: the true class (background: detections of nothing); columns: the predicted "
                        "class (background: missed objects); cells: counts, colour: share of the row.",
                    }
                ],
            }
        )
        cal = a["calibrated"]
        sections.append(
            {
                "title": "Calibrated score thresholds",
                "text": [
                    "Per class, the score threshold that maximises F1 at mask IoU 0.5 on this split. Training "
                    "stores the ones of its validation split in the checkpoint; `segbench predict` uses them "
                    "unless score_threshold= is given."
                ],
                "table": {
                    "header": ["class", "threshold", "F1", "precision", "recall", "objects", "detections"],
                    "rows": [
                        [
                            c,
                            _num(v["threshold"]),
                            _num(v["f1"]),
                            _num(v["precision"]),
                            _num(v["recall"]),
                            str(v["objects"]),
                            str(v["detections"]),
                        ]  # fmt: skip
                        for c, v in cal.items()
                    ],
                },
            }
        )

    # Per-image results: every method's row per image; the worst images of the ranking method shown.
    if comparison.per_image:
        flat = [{"method": m, **row} for m, rows in comparison.per_image.items() for row in rows]
        paths["per_image"] = write_csv(
            out / "per_image.csv",
            flat,
            columns=["method", "image_id", "file_name", "tp", "fp", "fn", "f1", "mean_iou"],
        )
        files.append(("per_image.csv (TP / FP / FN, F1, mean IoU per image and method)", "per_image.csv"))
        ranking = comparison.ranking_method or next(iter(comparison.per_image))
        drawn = {o["src"].split("_img")[-1].removesuffix(".png"): o["src"] for o in overlays}
        worst = sorted(comparison.per_image[ranking], key=lambda r: (r["f1"], -(r["fn"] + r["fp"])))[
            :PER_IMAGE_SHOWN
        ]
        methods = list(comparison.per_image)
        f1 = {m: {r["image_id"]: r["f1"] for r in rows} for m, rows in comparison.per_image.items()}
        table_rows = []
        for r in worst:
            link = drawn.get(str(r["image_id"]))
            table_rows.append(
                [f"{r['file_name']} ({r['image_id']})", f"{r['tp']}/{r['fp']}/{r['fn']}", _num(r["mean_iou"])]
                + [_num(f1[m].get(r["image_id"])) for m in methods]
                + [link or ""]
            )
        sections.append(
            {
                "title": f"Per-image results (the {len(worst)} worst by {ranking}'s F1)",
                "text": [f"Every image and method: per_image.csv. TP/FP/FN and mean IoU are {ranking}'s."],
                "table": {
                    "header": ["image", "TP/FP/FN", "mean IoU", *[f"F1 {m}" for m in methods], "overlay"],
                    "rows": table_rows,
                    "link_last": True,
                },
            }
        )

    le = comparison.label_errors
    if le is not None:
        paths["label_errors"] = write_json(
            out / "label_errors.json", {k: v for k, v in le.items() if k != "patch"}
        )
        paths["label_errors_patch"] = write_json(out / "label_errors_patch.json", le["patch"])
        files.append(("label_errors.json (suspected label errors, ranked)", "label_errors.json"))
        files.append(
            (
                "label_errors_patch.json (a COCO file of them, to review in the annotation tool)",
                "label_errors_patch.json",
            )
        )
        ranked = sorted(le["errors"], key=lambda x: (x["rank"], x["kind"]))[:LABEL_ERROR_CROPS]
        crops, cache = [], {}
        for x in ranked:
            i = _image_index(dataset, 0, x["image_id"])
            if i not in cache:
                cache = {i: dataset.load_image(i)}
            crop, mask = _crop(cache[i], x["segmentation"], x["bbox"])
            score = "" if x["score"] is None else f" {x['score']:.2f}"
            crops.append((f"{x['kind']} #{x['rank']}: {x['category']}{score}\n{x['file_name']}", crop, mask))
        figures = []
        if crops:
            paths["plot_label_errors"] = plots.plot_crops(crops, out / "plots" / "label_errors.png")
            figures.append(
                {
                    "title": "Suspected label errors",
                    "src": "plots/label_errors.png",
                    "caption": "The highest-ranked of each kind, outlined in red: missing_label = a confident model "
                    "detection that matches no label; not_found = a label that neither the model nor any baseline "
                    "finds; class_disagrees = the model covers the label with another class.",
                }
            )
        counts = ", ".join(f"{k} {v}" for k, v in le["counts"].items())
        sections.append(
            {
                "title": "Suspected label errors",
                "text": [
                    f"{counts}. Review them in your annotation tool: label_errors_patch.json is a COCO file whose "
                    "annotations are the suggestions (each with a segbench.suggestion note)."
                ],
                "figures": figures,
            }
        )
    return sections


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
