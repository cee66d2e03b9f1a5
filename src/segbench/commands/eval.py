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
    across the seams), overlap (pixels shared by neighbouring tiles; null: 1/8 of the tile), refine (edges:
    the model's masks snapped to the image's edges by the refinement that ``segbench compare refine=edges``
    fitted, ``refine_params=FILE``; refined tile by tile with ``tile=``).
    With ``trainer=ddp_cpu trainer.devices=N`` (N CPU processes) or ``trainer=ddp`` (one process per GPU) the
    images are split over the processes (:mod:`segbench.distributed`); the files written are the same.
    """
    from segbench.predict import torch_threads
    from segbench.training import evaluate_checkpoint

    tile, overlap = check_tiling(cfg.get("tile"), cfg.get("overlap"))
    refiner = _refiner(cfg.get("refine"), cfg.get("refine_params"))
    trainer = None
    if cfg.get("trainer") is not None:
        from segbench.distributed import trainer_options, use_if_distributed

        options = trainer_options(cfg.trainer, progress=bool(cfg.get("progress", True)))
        trainer = use_if_distributed(instantiate(cfg.trainer, **options, _convert_="all"))
        if trainer is not None and tile is not None:
            raise SegbenchError(
                "tile= runs in one process: drop trainer= (or tile=) to evaluate large images by tiles"
            )
        if trainer is not None and refiner is not None:
            raise SegbenchError("refine=edges runs in one process: drop trainer= (or refine=)")
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
    elif tile is not None or refiner is not None:
        with torch_threads(cfg.get("num_threads")):
            m = _evaluate_wrapped(
                cfg.ckpt_path,
                dataset,
                tile,
                overlap,
                refiner,
                progress=bool(cfg.get("progress", True)),
                **common,
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


def _refiner(refine, params):
    """The fitted :class:`~segbench.baselines.refine.EdgeRefiner` that ``refine`` / ``refine_params`` name,
    or None."""
    if refine in (None, "none"):
        return None
    if refine != "edges":
        raise SegbenchError(f"refine={refine!r} is not valid; choose edges or null")
    if not params:
        raise SegbenchError(
            "refine=edges needs refine_params=FILE: the refinement fitted by `segbench compare refine=edges` "
            "(its out/baselines/maskrcnn+refine.json)"
        )
    from segbench.baselines.refine import EdgeRefiner

    try:
        return EdgeRefiner.load(params)
    except (OSError, ValueError) as e:
        raise SegbenchError(f"refine_params={params}: {e}") from None


def _evaluate_wrapped(ckpt_path, dataset, tile, overlap, refiner, *, progress: bool, **common) -> dict:
    """:func:`segbench.training.evaluate_checkpoint` with the model's masks refined (``refiner``) and/or the
    model run by tiles (:func:`segbench.tiling.tiled`; refined tile by tile); ``metrics.json`` records them
    as ``refine`` and ``tiling``."""
    from segbench.baselines.refine import RefinedSegmenter
    from segbench.eval.runner import evaluate_segmenter
    from segbench.models.checkpoint import build_kwargs, check_classes
    from segbench.models.segmenter import MaskRCNNSegmenter
    from segbench.tiling import model_size, tiled
    from segbench.training import write_evaluation

    seg, card = MaskRCNNSegmenter.from_checkpoint(ckpt_path)
    check_classes(card, dataset, source=ckpt_path, action="evaluate")
    if refiner is not None:
        seg = RefinedSegmenter(seg, refiner, name="maskrcnn+refine")
    tiles = None
    if tile is not None:
        seg = tiles = tiled(seg, tile=tile, overlap=overlap, model_size=model_size(build_kwargs(card)))
    metrics, ev = evaluate_segmenter(
        seg,
        dataset,
        max_dets=common["max_dets"],
        score_threshold=common["score_threshold"],
        limit=common["limit"],
        progress=progress,
    )
    if tiles is not None:
        metrics["tiling"] = tiles.describe()
    if refiner is not None:
        metrics["refine"] = {"method": "edges", "enabled": bool(refiner.enabled), **refiner.get_params()}
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
