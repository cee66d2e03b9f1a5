"""``segbench eval ckpt_path=FILE [data.root=DIR] [split=val]``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.commands._common import open_data_split
from segbench.report.tables import format_metrics_table


def run(cfg: DictConfig) -> dict:
    """Evaluate ``ckpt_path`` on a split of ``data``: ``metrics.json`` + COCO ``results.json`` in ``out``.

    Keys: ckpt_path, data.root (or data.<split>_ann + data.image_root), split, out, max_dets (null: keep
    every detection), score_threshold (for F1 / PQ / foreground IoU), limit (the first N images).
    """
    from segbench.training import evaluate_checkpoint

    m = evaluate_checkpoint(
        cfg.ckpt_path,
        open_data_split(cfg.data, cfg.split),
        out_dir=cfg.out,
        max_dets=cfg.max_dets,
        score_threshold=cfg.score_threshold,
        limit=cfg.get("limit"),
    )
    print(format_metrics_table(m))
    print(f"wrote {Path(cfg.out) / 'metrics.json'} and {Path(cfg.out) / 'results.json'}")
    return m
