"""``segbench eval ckpt_path=FILE [data.root=DIR] [split=val] [trainer=ddp_cpu trainer.devices=2]``."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from segbench.commands._common import open_data_split
from segbench.report.tables import format_analysis, format_metrics_table


def run(cfg: DictConfig) -> dict | int:
    """Evaluate ``ckpt_path`` on a split of ``data``: ``metrics.json`` + COCO ``results.json`` in ``out``.

    Keys: ckpt_path, data.root (or data.<split>_ann + data.image_root), split, out, max_dets (null: keep
    every detection), score_threshold (for F1 / PQ / foreground IoU), limit (the first N images),
    save_thresholds (write the calibrated per-class thresholds into the checkpoint), label_errors (write
    label_errors.json and a COCO patch of the suspected label errors), num_threads (torch's threads per
    process), progress.
    With ``trainer=ddp_cpu trainer.devices=N`` (N CPU processes) or ``trainer=ddp`` (one process per GPU) the
    images are split over the processes (:mod:`segbench.distributed`); the files written are the same.
    """
    from segbench.predict import torch_threads
    from segbench.training import evaluate_checkpoint

    trainer = None
    if cfg.get("trainer") is not None:
        from segbench.distributed import trainer_options, use_if_distributed

        options = trainer_options(cfg.trainer, progress=bool(cfg.get("progress", True)))
        trainer = use_if_distributed(instantiate(cfg.trainer, **options, _convert_="all"))
    dataset = open_data_split(cfg.data, cfg.split)
    common = {
        "out_dir": cfg.out,
        "max_dets": cfg.max_dets,
        "score_threshold": cfg.score_threshold,
        "limit": cfg.get("limit"),
        "store_thresholds": bool(cfg.save_thresholds),
        "label_errors": bool(cfg.label_errors),
    }
    if trainer is not None:
        from segbench.distributed import evaluate_checkpoint_distributed

        m = evaluate_checkpoint_distributed(
            cfg.ckpt_path, dataset, trainer=trainer, num_threads=cfg.get("num_threads"), **common
        )
        if m is None:  # a rank other than 0: rank 0 merged the shards and prints
            return 0
    else:
        with torch_threads(cfg.get("num_threads")):
            m = evaluate_checkpoint(
                cfg.ckpt_path, dataset, progress=bool(cfg.get("progress", True)), **common
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
