"""Training and checkpoint evaluation around the LightningModule and the data module.

Plain functions of ready objects (no config): the ``train`` and ``eval`` commands build the objects from
the config and call :func:`fit` / :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from segbench.eval.runner import evaluate_segmenter
from segbench.io import write_json

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), which make ``bf16-mixed`` training
    faster than float32; without them autocast emulates bfloat16 and is slower."""
    import torch

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the probe's backend
            continue
    return False


def cpu_precision() -> str:
    """``trainer.precision`` for CPU presets (the ``${cpu_precision:}`` resolver): ``bf16-mixed`` where the CPU
    has bfloat16 instructions, else ``32-true``."""
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def latest_run(output_dir: str | os.PathLike, name: str) -> Path | None:
    """The newest run folder of ``name`` that holds ``checkpoints/last.ckpt``."""
    base = Path(output_dir) / "train" / name
    runs = sorted(p.parent.parent for p in base.glob("*/checkpoints/last.ckpt"))
    return runs[-1] if runs else None


def fit(
    *,
    datamodule: pl.LightningDataModule,
    module: pl.LightningModule,
    trainer: pl.Trainer,
    run_dir: str | os.PathLike,
    ckpt_path: str | os.PathLike | None = None,
    evaluate_best: bool = True,
    eval_max_dets: int | None = None,
    eval_score_threshold: float | None = 0.5,
    started: float | None = None,
) -> dict:
    """Fit ``module`` on ``datamodule``; evaluate the best checkpoint on the val split; write
    ``<run_dir>/metrics.json``.

    Parameters
    ----------
    datamodule
        A :class:`~segbench.data.datamodule.CocoDataModule`, already ``setup("fit")``.
    module, trainer
        The LightningModule and the Trainer (its callbacks include a ``ModelCheckpoint``).
    run_dir
        The run folder.
    ckpt_path
        A checkpoint to resume from.
    evaluate_best
        Score the best (else the last) checkpoint on the whole val split at the end (rank 0 only) and
        store its calibrated per-class score thresholds in it (:func:`evaluate_checkpoint`).
    eval_max_dets, eval_score_threshold
        The evaluation's detection cap and the score threshold of F1 / PQ / foreground IoU.
    started
        ``time.perf_counter()`` when the command started (``train_wall_seconds`` counts from it).

    Returns
    -------
    dict
        ``run_dir``, ``global_step``, ``epochs``, ``train_wall_seconds``, ``history`` (validation metrics
        per epoch), ``skipped_batches``, ``best_checkpoint``, ``last_checkpoint``, ``best_val_segm_mAP``
        and ``val`` (the final evaluation).
    """
    t_start = time.perf_counter() if started is None else started
    run_dir = Path(run_dir)
    train_ds = datamodule.train_coco
    log.info(
        "training %s on %s: %d train / %d val images, %d classes %s; run folder %s",
        getattr(module, "net_kwargs", {}).get("backbone"),
        train_ds.ann_file.parent.parent,
        len(train_ds),
        len(datamodule.val_coco),
        train_ds.num_classes,
        train_ds.class_names,
        run_dir,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    result: dict = {
        "run_dir": str(run_dir),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_wall_seconds": time.perf_counter() - t_start,
        "history": module.history,
        "skipped_batches": module.skipped_batches,
    }
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best_cb = next((c for c in checkpoints if c.monitor), None)  # the best by val/segm_mAP
    last_cb = next((c for c in checkpoints if not c.monitor), None)  # last.ckpt, at every save point
    if best_cb is not None:
        result["best_checkpoint"] = best_cb.best_model_path or None
        result["best_val_segm_mAP"] = (
            float(best_cb.best_model_score) if best_cb.best_model_score is not None else None
        )
    if last_cb is not None:
        result["last_checkpoint"] = last_cb.best_model_path or None
    if evaluate_best and trainer.is_global_zero and not trainer.fast_dev_run:
        best = result.get("best_checkpoint") or result.get("last_checkpoint")
        if best:
            result["val"] = evaluate_checkpoint(
                best,
                datamodule.val_coco,
                out_dir=run_dir / "eval",
                max_dets=eval_max_dets,
                score_threshold=eval_score_threshold,
                store_thresholds=True,
            )
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result


def save_checkpoint(module: pl.LightningModule, path: str | os.PathLike) -> Path:
    """Write ``module`` as a checkpoint exactly as ``segbench train`` does (Lightning's writer, the
    module's ``on_save_checkpoint`` card, :class:`~segbench.callbacks.AtomicCheckpointIO`), without
    training: e.g. to evaluate or export a model built in code."""
    from segbench.callbacks import AtomicCheckpointIO

    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return Path(path)


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike,
    dataset,
    *,
    out_dir: str | os.PathLike,
    max_dets: int | None = None,
    score_threshold: float | None = 0.5,
    limit: int | None = None,
    progress: bool = True,
    store_thresholds: bool = False,
    label_errors: bool = False,
) -> dict:
    """Score a checkpoint on a :class:`CocoDataset` and analyse its errors.

    Writes to ``out_dir``: ``metrics.json`` (every score, plus ``analysis``: the confusion matrix and the
    error breakdown at ``score_threshold``, and ``score_thresholds``: per class, the threshold that maximises
    F1 at IoU 0.5 on this split), ``results.json`` (COCO results with the dataset's category ids),
    ``per_image.csv`` and, with ``label_errors``, ``label_errors.json`` + ``label_errors_patch.json``
    (:func:`segbench.eval.analysis.find_label_errors`). ``store_thresholds`` writes the calibrated
    thresholds into the checkpoint's card, where ``predict`` and ``export`` find them.
    """
    from segbench.eval.analysis import analyse, find_label_errors, per_image_table, thresholds_by_name
    from segbench.io import write_csv
    from segbench.models.checkpoint import check_classes, update_card
    from segbench.models.segmenter import MaskRCNNSegmenter

    seg, card = MaskRCNNSegmenter.from_checkpoint(ckpt_path)
    check_classes(card, dataset, source=ckpt_path, action="evaluate")
    metrics, ev = evaluate_segmenter(
        seg, dataset, max_dets=max_dets, score_threshold=score_threshold, limit=limit, progress=progress
    )
    gt = ev.gt_dataset()
    analysis = analyse(gt, ev.results, score_threshold=score_threshold)
    thresholds = thresholds_by_name(analysis.pop("calibrated"))
    metrics.update(
        checkpoint=str(ckpt_path),
        dataset=str(dataset.ann_file),
        analysis=analysis,
        score_thresholds=thresholds,
    )
    out = Path(out_dir)
    write_json(out / "results.json", ev.results)
    write_csv(out / "per_image.csv", per_image_table(gt["images"], ev.image_matches))
    if label_errors:
        found = find_label_errors(gt, ev.results, thresholds=thresholds)
        write_json(out / "label_errors_patch.json", found.pop("patch"))
        write_json(out / "label_errors.json", found)
        metrics["label_errors"] = found["counts"]
    write_json(out / "metrics.json", metrics)
    if store_thresholds:
        update_card(ckpt_path, score_thresholds=thresholds)
        log.info("calibrated score thresholds %s stored in %s", thresholds, ckpt_path)
    return metrics
