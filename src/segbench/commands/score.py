"""``segbench score gt=GT.json pred=RESULTS.json [pred_b=OTHER.json] [backend=all] [label_errors=true]``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.io import write_json
from segbench.report.tables import format_analysis, format_backends, format_bootstrap, format_metrics_table


def run(cfg: DictConfig) -> int:
    """Score a COCO results JSON (from segbench or any other tool) against a COCO ground-truth JSON.

    Keys: gt, pred, pred_b (a second results file: the paired bootstrap interval of pred - pred_b, per
    class too, and the smallest difference these images can detect), out (folder for metrics.json),
    iou_types, max_dets (null: keep all detections), class_agnostic, score_threshold (for F1/PQ/foreground
    IoU and the error analysis), backend (faster_coco_eval, pycocotools, or all: every backend and
    torchmetrics side by side), bootstrap, bootstrap_seed, label_errors (label_errors.json + a COCO patch).
    """
    from segbench.data.coco import CocoDataset
    from segbench.eval.analysis import analyse, find_label_errors, thresholds_by_name
    from segbench.eval.compare import bootstrap_difference, results_method
    from segbench.eval.runner import load_results, score_every_backend, score_files

    out = Path(cfg.out)
    backend = "faster_coco_eval" if cfg.backend == "all" else cfg.backend
    m = score_files(
        cfg.gt,
        cfg.pred,
        iou_types=list(cfg.iou_types),
        max_dets=cfg.max_dets,
        class_agnostic=cfg.class_agnostic,
        score_threshold=cfg.score_threshold,
        backend=backend,
    )
    print(format_metrics_table(m, iou_types=list(cfg.iou_types)))
    gt = CocoDataset(cfg.gt, image_root=Path(cfg.gt).parent, keep_empty_classes=True)
    a = results_method(
        Path(cfg.pred).stem,
        gt,
        load_results(cfg.pred, gt),
        max_dets=cfg.max_dets,
        score_threshold=cfg.score_threshold,
    )
    if a.evaluator.results and "segmentation" in a.evaluator.results[0]:
        ev_gt = a.evaluator.gt_dataset()
        m["analysis"] = analyse(ev_gt, a.evaluator.results, score_threshold=cfg.score_threshold)
        m["score_thresholds"] = thresholds_by_name(m["analysis"].pop("calibrated"))
        print(format_analysis(m))
        print(f"calibrated score thresholds (best F1 at IoU 0.5): {m['score_thresholds']}")
        if cfg.label_errors:
            found = find_label_errors(ev_gt, a.evaluator.results, thresholds=m["score_thresholds"])
            write_json(out / "label_errors_patch.json", found.pop("patch"))
            print(f"wrote {write_json(out / 'label_errors.json', found)} ({found['counts']})")
            m["label_errors"] = found["counts"]
    if cfg.get("pred_b"):
        b = results_method(
            Path(cfg.pred_b).stem,
            gt,
            load_results(cfg.pred_b, gt),
            max_dets=cfg.max_dets,
            score_threshold=cfg.score_threshold,
        )
        m["comparison"] = bootstrap_difference(
            a,
            b,
            n_resamples=int(cfg.bootstrap),
            seed=int(cfg.bootstrap_seed),
            max_dets=cfg.max_dets,
            per_class=True,
        )
        print(format_bootstrap(m["comparison"]))
    if cfg.backend == "all":
        m["backends"] = score_every_backend(cfg.gt, cfg.pred)
        print(format_backends(m["backends"]))
    print(f"wrote {write_json(out / 'metrics.json', m)}")
    return 0
