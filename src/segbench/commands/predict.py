"""``segbench predict input=PATH (ckpt_path=FILE | model=EXPORT | method=NAME [baseline_params=FILE])``."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from segbench.predict import format_profile, load_predictor, predict_images, with_refinement, with_tiling
from segbench.tiling import check_tiling
from segbench.types import SegbenchError


def run(cfg: DictConfig) -> int:
    """Predict images (a file, a folder or a glob) with a checkpoint, an export or a baseline.

    Keys: input, output, ckpt_path | exported (a .onnx / TorchScript file from `segbench export`) |
    method + baseline_params (a baseline), score_threshold (null: the per-class thresholds calibrated
    after training, 0.5 without them), mask_threshold (null: the model's),
    batch_size, num_threads, save_overlays, save_masks, device, progress, refine (edges: snap the masks to the
    image's edges), refine_params (the refinement that `segbench compare refine=edges` fitted), precision
    (fp32 | bf16), proposals (null | N | auto), profile (print the time of each stage), tile (null | N | auto:
    large images by overlapping tiles of N px, instances merged across the seams), overlap (pixels shared by
    neighbouring tiles; null: 1/8 of the tile).
    Writes predictions.json (COCO results), images.json, categories.json, summary.json, overlays/, masks/.
    With ``trainer=ddp_cpu trainer.devices=N`` (N CPU processes) or ``trainer=ddp`` (one process per GPU) the
    images are split over the processes (:mod:`segbench.distributed`); the files written are the same.
    """
    tile, overlap = check_tiling(cfg.get("tile"), cfg.get("overlap"))  # before anything is loaded
    trainer, device = None, cfg.get("device", "cpu")
    if cfg.get("trainer") is not None:  # its device (cuda:<local rank> for trainer=ddp), and >1 process: DDP
        from segbench.distributed import trainer_options, use_if_distributed

        options = trainer_options(cfg.trainer, progress=bool(cfg.get("progress", True)))
        trainer = instantiate(cfg.trainer, **options, _convert_="all")
        device = str(trainer.strategy.root_device)
        trainer = use_if_distributed(trainer)
    predictor = load_predictor(
        ckpt_path=cfg.get("ckpt_path"),
        exported=cfg.get("exported"),
        method=cfg.get("method"),
        baseline_params=cfg.get("baseline_params"),
        mask_threshold=cfg.get("mask_threshold"),
        device=device,
        score_threshold=cfg.score_threshold,
        precision=str(cfg.get("precision") or "fp32"),
        proposals=cfg.get("proposals"),
    )
    if cfg.get("refine") == "edges":
        if not cfg.get("refine_params"):
            raise SegbenchError(
                "refine=edges needs refine_params=FILE: the refinement fitted by `segbench compare refine=edges` "
                "(its out/baselines/maskrcnn+refine.json)"
            )
        predictor = with_refinement(predictor, cfg.refine_params)
    elif cfg.get("refine") not in (None, "none"):
        raise SegbenchError(f"refine={cfg.refine!r} is not valid; choose edges or null")
    predictor = with_tiling(predictor, tile=tile, overlap=overlap, batch_size=int(cfg.batch_size))
    if trainer is not None:
        from segbench.distributed import predict_images_distributed

        if cfg.get("profile"):
            raise SegbenchError("profile=true times one process: drop trainer= (or profile=)")
        s = predict_images_distributed(
            predictor,
            cfg.input,
            cfg.output,
            trainer=trainer,
            score_threshold=None if cfg.score_threshold is None else float(cfg.score_threshold),
            batch_size=int(cfg.batch_size),
            num_threads=cfg.get("num_threads"),
            save_overlays=bool(cfg.save_overlays),
            save_masks=bool(cfg.save_masks),
        )
        if s is None:  # a rank other than 0: rank 0 merged the shards and prints
            return 0
    else:
        s = predict_images(
            predictor,
            cfg.input,
            cfg.output,
            score_threshold=None if cfg.score_threshold is None else float(cfg.score_threshold),
            batch_size=int(cfg.batch_size),
            num_threads=cfg.get("num_threads"),
            save_overlays=bool(cfg.save_overlays),
            save_masks=bool(cfg.save_masks),
            progress=bool(cfg.get("progress", True)),
            profile=bool(cfg.get("profile", False)),
        )
    skipped = s["skipped"]
    line = f"processed {s['processed']} image(s), skipped {len(skipped)}"
    if skipped:
        line += (
            " (" + ", ".join(x["file"] for x in skipped[:10]) + (", ..." if len(skipped) > 10 else "") + ")"
        )
    thr = s["score_threshold"]
    if isinstance(thr, dict):
        used = f"the per-class thresholds calibrated after training {thr} (score_threshold=0.5 overrides)"
    else:
        used = f"score >= {thr}" + (
            " (the model has no calibrated thresholds)" if cfg.score_threshold is None else ""
        )
    print(f"{line}; {s['detections']} detection(s) with {used}")
    print(f"wrote {Path(cfg.output) / 'predictions.json'} (+ images.json, categories.json, overlays/)")
    if "profile" in s:
        print(f"time per stage ({s['source']}):")
        print(format_profile(s["profile"]))
    return 0
