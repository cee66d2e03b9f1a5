"""``segbench export ckpt_path=FILE [formats=[state_dict,torchscript,onnx,openvino,openvino_int8,bf16]] [out=DIR]``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.export import (
    CARD_FILE,
    MIN_OPSET,
    REPORT_FILE,
    Tolerances,
    export_checkpoint,
    format_report_table,
)
from segbench.types import SegbenchError

TOLERANCE_KEYS = ("box", "score", "mask", "ap")


def run(cfg: DictConfig) -> int:
    """Export a checkpoint to state_dict / TorchScript / ONNX / OpenVINO (float32, INT8) and check each file
    against PyTorch (parity on check images, segm AP on val images); ``bf16`` checks the checkpoint run in
    bfloat16.

    Keys: ckpt_path, out, formats, opset (>= 17), tolerances.{box,score,mask,ap}, check_size, check_images
    (extra image files), timing_runs, keep_failed, accuracy_data, accuracy_images, calibration_images,
    calibration_data, int8_scope, score_floor (null | auto | a score). Exit status 1 when a format failed or is not installed (its file is not
    left behind); the others are still written.
    """
    tol = dict(cfg.get("tolerances") or {})
    unknown = sorted(set(tol) - set(TOLERANCE_KEYS))
    if unknown:
        raise SegbenchError(f"unknown tolerance(s) {unknown}; the tolerances are {', '.join(TOLERANCE_KEYS)}")
    report = export_checkpoint(
        cfg.ckpt_path,
        cfg.out,
        formats=list(cfg.formats) if not isinstance(cfg.formats, str) else cfg.formats,
        tolerances=Tolerances(**{k: float(v) for k, v in tol.items()}),
        opset=int(cfg.get("opset", MIN_OPSET)),
        check_size=cfg.get("check_size"),
        check_images=list(cfg.get("check_images") or []),
        timing_runs=int(cfg.get("timing_runs", 1)),
        keep_failed=bool(cfg.get("keep_failed", False)),
        accuracy_data=cfg.get("accuracy_data"),
        accuracy_images=cfg.get("accuracy_images", 100),
        calibration_images=cfg.get("calibration_images", 300),
        calibration_data=cfg.get("calibration_data"),
        int8_scope=str(cfg.get("int8_scope", "all")),
        score_floor=cfg.get("score_floor"),
    )
    print(format_report_table(report))
    print(f"wrote {Path(cfg.out) / CARD_FILE} and {Path(cfg.out) / REPORT_FILE}")
    return 0 if report["ok"] else 1
