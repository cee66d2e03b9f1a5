"""``segbench eval ckpt_path=FILE [data.root=DIR] [split=val] [trainer=ddp_cpu trainer.devices=2]``."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from segbench.commands._common import open_data_split
from segbench.report.tables import format_analysis, format_metrics_table
from segbench.tiling import check_tiling
from segbench.types import SegbenchError


def run(cfg: DictConfig) -> dict | int:
    """Evaluate ``ckpt_path`` on a split of ``data``: ``metrics.json`` + COCO ``results.json`` in ``out``.

    Keys: ckpt_path, data.root (or data.<split>_ann + data.image_root), split, out, max_dets (null: keep
    every detection), score_threshold (for F1 / PQ / foreground IoU), limit (the first N images),
    save_thresholds (write the calibrated per-class thresholds into the checkpoint), label_errors (write
    label_errors.json and a COCO patch of the suspected label errors), num_threads (torch's threads per
    process), progress, tile (null | N | auto: each image by overlapping tiles of N px, instances merged
    across the seams), overlap (pixels shared by neighbouring tiles; null: 1/8 of the tile).
    With ``trainer=ddp_cpu trainer.devices=N`` (N CPU processes) or ``trainer=ddp`` (one process per GPU) the
    images are split over the processes (:mod:`segbench.distributed`); the files written are the same.
    """
    from segbench.predict import torch_threads
    from segbench.training import evaluate_checkpoint

    tile, overlap = check_tiling(cfg.get("tile"), cfg.get("overlap"))
    trainer = None
    if cfg.get("trainer") is not None:
        from segbench.distributed import trainer_options, use_if_distributed

        options = trainer_options(cfg.trainer, progress=bool(cfg.get("progress", True)))
        trainer = use_if_distributed(instantiate(cfg.trainer, **options, _convert_="all"))
        if trainer is not None and tile is not None:
            raise SegbenchError(
                "tile= runs in one process: drop trainer= (or tile=) to evaluate large images by tiles"
            )
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
    elif tile is not None:
        with torch_threads(cfg.get("num_threads")):
            m = _evaluate_tiled(
                cfg.ckpt_path, dataset, tile, overlap, progress=bool(cfg.get("progress", True)), **common
            )
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


def _evaluate_tiled(ckpt_path, dataset, tile, overlap, *, progress: bool, **common) -> dict:
    """:func:`segbench.training.evaluate_checkpoint` with the model run by tiles
    (:func:`segbench.tiling.tiled`); ``metrics.json`` records the tiling as ``tiling``."""
    from segbench.eval.runner import evaluate_segmenter
    from segbench.models.checkpoint import build_kwargs, check_classes
    from segbench.models.segmenter import MaskRCNNSegmenter
    from segbench.tiling import model_size, tiled
    from segbench.training import write_evaluation

    seg, card = MaskRCNNSegmenter.from_checkpoint(ckpt_path)
    check_classes(card, dataset, source=ckpt_path, action="evaluate")
    seg = tiled(seg, tile=tile, overlap=overlap, model_size=model_size(build_kwargs(card)))
    metrics, ev = evaluate_segmenter(
        seg,
        dataset,
        max_dets=common["max_dets"],
        score_threshold=common["score_threshold"],
        limit=common["limit"],
        progress=progress,
    )
    metrics["tiling"] = seg.describe()
    return write_evaluation(
        ckpt_path,
        dataset,
        metrics,
        ev,
        out_dir=common["out_dir"],
        score_threshold=common["score_threshold"],
        store_thresholds=common["store_thresholds"],
        label_errors=common["label_errors"],
    )
