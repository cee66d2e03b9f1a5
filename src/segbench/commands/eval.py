"""``segbench eval ckpt_path=FILE [data.root=DIR] [split=val]``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.commands._common import open_data_split
from segbench.report.tables import format_analysis, format_metrics_table


def run(cfg: DictConfig) -> dict:
    """Evaluate ``ckpt_path`` on a split of ``data``: ``metrics.json`` + COCO ``results.json`` in ``out``.

    Keys: ckpt_path, data.root (or data.<split>_ann + data.image_root), split, out, max_dets (null: keep
    every detection), score_threshold (for F1 / PQ / foreground IoU), limit (the first N images),
    save_thresholds (write the calibrated per-class thresholds into the checkpoint), label_errors (write
    label_errors.json and a COCO patch of the suspected label errors).
    """
    from segbench.training import evaluate_checkpoint

    m = evaluate_checkpoint(
        cfg.ckpt_path,
        open_data_split(cfg.data, cfg.split),
        out_dir=cfg.out,
        max_dets=cfg.max_dets,
        score_threshold=cfg.score_threshold,
        limit=cfg.get("limit"),
        store_thresholds=bool(cfg.save_thresholds),
        label_errors=bool(cfg.label_errors),
    )
    print(format_metrics_table(m))
    print(format_analysis(m))
    where = (
        "stored in the checkpoint"
        if cfg.save_thresholds
        else "save_thresholds=true stores them in the checkpoint"
    )
    print(f"calibrated score thresholds (best F1 at IoU 0.5): {m['score_thresholds']} ({where})")
    print(f"wrote {Path(cfg.out) / 'metrics.json'}, results.json, per_image.csv")
    return m
