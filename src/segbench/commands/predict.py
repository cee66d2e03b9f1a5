"""``segbench predict input=PATH (ckpt_path=FILE | model=EXPORT | method=NAME [baseline_params=FILE])``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.predict import load_predictor, predict_images, with_refinement
from segbench.types import SegbenchError


def run(cfg: DictConfig) -> int:
    """Predict images (a file, a folder or a glob) with a checkpoint, an export or a baseline.

    Keys: input, output, ckpt_path | exported (a .onnx / TorchScript file from `segbench export`) |
    method + baseline_params (a baseline), score_threshold (null: the per-class thresholds calibrated
    after training, 0.5 without them), mask_threshold (null: the model's),
    batch_size, save_overlays, save_masks, device, progress, refine (edges: snap the masks to the image's
    edges), refine_params (the refinement that `segbench compare refine=edges` fitted).
    Writes predictions.json (COCO results), images.json, categories.json, summary.json, overlays/, masks/.
    """
    predictor = load_predictor(
        ckpt_path=cfg.get("ckpt_path"),
        exported=cfg.get("exported"),
        method=cfg.get("method"),
        baseline_params=cfg.get("baseline_params"),
        mask_threshold=cfg.get("mask_threshold"),
        device=cfg.get("device", "cpu"),
        score_threshold=cfg.score_threshold,
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
    s = predict_images(
        predictor,
        cfg.input,
        cfg.output,
        score_threshold=None if cfg.score_threshold is None else float(cfg.score_threshold),
        batch_size=int(cfg.batch_size),
        save_overlays=bool(cfg.save_overlays),
        save_masks=bool(cfg.save_masks),
        progress=bool(cfg.get("progress", True)),
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
    return 0
