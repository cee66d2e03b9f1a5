"""``segbench score gt=GT.json pred=RESULTS.json``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.eval.runner import score_files
from segbench.io import write_json
from segbench.report.tables import format_metrics_table


def run(cfg: DictConfig) -> int:
    """Score a COCO results JSON (from segbench or any other tool) against a COCO ground-truth JSON.

    Keys: gt, pred, out (folder for metrics.json), iou_types, max_dets (null: keep all detections),
    class_agnostic, score_threshold (for F1/PQ/foreground IoU), backend.
    """
    m = score_files(
        cfg.gt,
        cfg.pred,
        iou_types=list(cfg.iou_types),
        max_dets=cfg.max_dets,
        class_agnostic=cfg.class_agnostic,
        score_threshold=cfg.score_threshold,
        backend=cfg.backend,
    )
    print(format_metrics_table(m, iou_types=list(cfg.iou_types)))
    print(f"wrote {write_json(Path(cfg.out) / 'metrics.json', m)}")
    return 0
